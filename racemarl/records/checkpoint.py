"""Atomic, safe-to-load checkpoints.

Saved with `torch.save` to a temporary file in the same directory, flushed to disk, then renamed
over the old file: a kill during a save leaves the previous checkpoint intact. Loaded with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects, so everything stored is
tensors, numbers, strings and containers of them.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from racemarl.records.runs import CheckpointError  # noqa: F401 - raised by `load`, re-exported


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """The checkpoint's state; CheckpointError (one line) for anything unreadable or unsafe."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch's legacy reader fails in many ways
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch zip archive: corrupt or foreign)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function, which loading would import and call
            raise CheckpointError(
                f"{path} holds objects other than tensors, numbers and strings; it was not "
                f"written by racemarl and is refused, since loading it could run code"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated)") from None
    except Exception as e:  # whatever the reader raises on a damaged file, the user gets one line
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated: {type(e).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a racemarl checkpoint (it holds a {type(state).__name__})")
    return state


def clean_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files an interrupted `save_atomic` left in `folder`; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers


def numpy_rng_state(rng: np.random.Generator) -> dict:
    return dict(rng.bit_generator.state)


def set_numpy_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def global_rng_state() -> dict:
    """States of the process-wide generators (python, numpy legacy, torch)."""
    py = random.getstate()
    np_legacy = np.random.get_state(legacy=True)
    assert isinstance(np_legacy, tuple)  # the legacy form: (name, keys, pos, has_gauss, cached_gaussian)
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_legacy[0], torch.from_numpy(np_legacy[1].astype(np.int64)), *np_legacy[2:]],
        "torch": torch.get_rng_state(),
    }


def set_global_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npl = state["numpy"]
    np.random.set_state((npl[0], npl[1].numpy().astype(np.uint32), *npl[2:]))
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
