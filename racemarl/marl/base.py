"""What every learner shares: applying a loss to a set of optimizers, and its checkpoint state."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.profiler import record_function


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the parameters were not stepped with it."""


def section(name: str) -> contextlib.AbstractContextManager:
    """A `record_function` label while a torch profiler runs, else nothing (a label costs ~30 us per use)."""
    return record_function(name) if torch._C._autograd._profiler_enabled() else contextlib.nullcontext()


class Learner(nn.Module):
    """Base of MATD3, FACMAC and the RACE learners: `n_updates`, loss application, checkpoint state.

    Every `torch.optim.Optimizer` attribute is part of the checkpoint, under its attribute name.
    """

    n_updates: int = 0

    def apply_loss(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], parts: dict[str, torch.Tensor],
                   grad_clip: float = 0.0, label: str = "step") -> None:
        """Backpropagate `loss` (the sum of `parts`) and step `optimizers`, each with its gradients clipped
        to norm `grad_clip` (0 = no clipping). A non-finite loss raises before anything is touched."""
        if not torch.isfinite(loss):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss ({', '.join(bad)}) at update {self.n_updates + 1}")
        with section(f"{label}_backward"):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
        with section(f"{label}_optim"):
            if grad_clip > 0:
                for opt in optimizers:
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
            for opt in optimizers:
                opt.step()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def full_state(self) -> dict:
        return {
            "model": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "n_updates": self.n_updates,
        }

    def load_full_state(self, sd: dict) -> None:
        self.load_state_dict(sd["model"])
        for k, o in self.optimizers().items():
            o.load_state_dict(sd["optimizers"][k])
        self.n_updates = int(sd["n_updates"])
