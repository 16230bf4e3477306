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

    # ---------------------------------------------------------------- hooks (RACE adds losses and networks)
    def extra_critic_losses(self, batch, z_next: torch.Tensor, q_next: torch.Tensor,
                            population: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """More value functions trained with the critic at every update (RACE: PeVFA and V_zeta)."""
        return {}

    def extra_encoder_losses(self, batch, z: torch.Tensor, population: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """More terms of the encoder loss at every actor update (RACE: VFM through the PeVFA, VMM)."""
        return {}

    def critic_modules(self) -> list[nn.Module]:
        """Modules the actor and encoder losses only read (frozen while those losses backpropagate)."""
        return [self.critic]

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_critic]

    def encoder_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_actor, self.opt_encoder]

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
