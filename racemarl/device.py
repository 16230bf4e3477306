"""Where the learner trains: `--device auto|cpu|cuda|cuda:N`, and moving data to and from it.

The learner, its targets, optimisers and the replay buffer live on the training device; the environments,
the rollout workers and evaluation act with a CPU copy of the weights. Checkpoints hold CPU tensors only, so
a run trained on one device resumes or is evaluated on another.
"""

from __future__ import annotations

import re
from typing import Any

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device that is not a valid name or not available on this machine."""


def valid_device_name(name: str) -> bool:
    return isinstance(name, str) and DEVICE_PATTERN.fullmatch(name) is not None


def resolve_device(name: str) -> torch.device:
    """`auto` = the current CUDA device when CUDA is available, else the CPU; `cpu`; `cuda` / `cuda:N` (an error
    when CUDA or that device is not available)."""
    if not valid_device_name(name):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"device {name}: this machine has {count} CUDA device(s) (cuda:0-{count - 1})")
    return device


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto `device` without making the host wait: pinned staging, asynchronous copy (the caching
    host allocator keeps the pinned block until the copy has run). On the CPU: the tensor itself."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def cpu_tree(obj: Any) -> Any:
    """Every tensor of a nested dict / list / tuple on the CPU (CPU tensors are returned as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_tree(v) for v in obj)
    return obj


def clone_tree(obj: Any) -> Any:
    """A copy of a nested dict / list / tuple with every tensor cloned on its own device (no host transfer)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(v) for v in obj)
    return obj
