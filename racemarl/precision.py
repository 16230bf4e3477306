"""The learner's arithmetic: `precision: auto|fp32|bf16`, resolved against the training device.

`bf16` runs the learner's forward passes under `torch.autocast(device, torch.bfloat16)` (the same mechanism on
the CPU and on CUDA): the matrix products read bfloat16 copies of the weights and write bfloat16 activations,
and their backward products run in bfloat16 too. What stays in float32, and where the cast happens:

- the master weights, their gradients and the Adam moments (autocast casts a float32 weight to bfloat16 where
  a product reads it; its gradient comes back through that cast as float32), and the optimiser step, the
  gradient clipping and the Polyak target updates (`Learner.apply_loss` and `update_targets` run with autocast
  off);
- the last layer of every value network whose output enters a loss or a target (the MARL critic, the PeVFA,
  V_zeta, FACMAC's per-agent critic and mixer): `GroupedLinear(full_precision=True)` and `full_precision_linear`
  compute it in float32 from the bfloat16 hidden layer, so Q values near 400 keep float32's resolution (bfloat16
  has 8 bits of mantissa: a step of 2 at 400);
- the MI critic's pair scores T(s, z) (`SeparableCritic`): a float32 product of its two feature maps, so the
  softplus terms and the bound's reductions are float32;
- the TD targets, the losses and their reductions, and the non-finite checks: they are computed from the
  float32 outputs above, with float32 rewards and masks;
- acting (rollouts, evaluation, the fitness bootstrap) runs without autocast: float32, as before.

`auto` picks bf16 where the hardware has native bfloat16 matrix products (a CPU with AVX512-BF16 or AMX-BF16,
an ARM CPU with the BF16 extension, a CUDA device of compute capability 8.0 or later) and fp32 elsewhere. The
trainer records the resolved value in the run's config.yaml; configs saved before this setting existed load as
fp32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


class PrecisionError(ValueError):
    """A precision that is not one of `PRECISIONS`."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (x86 AVX512-BF16 / AMX-BF16, ARM BF16), read from
    /proc/cpuinfo's flags; False where that file does not exist (the CPU is then not known to have them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16(device: torch.device) -> bool:
    """Whether `device` has native bfloat16 matrix products."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """`fp32` or `bf16` for `name` on `device` (`auto`: bf16 where `native_bf16`, else fp32)."""
    if name not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward passes' context: bfloat16 autocast on `device` for `bf16`, nothing for `fp32`."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off inside the block when it is on (float32 work inside a bf16 forward pass)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
