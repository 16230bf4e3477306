"""What every learner shares: applying a loss to a set of optimizers, and its checkpoint state."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn
from torch.profiler import record_function

from racemarl.precision import autocast, full_precision, resolve_precision


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the parameters were not stepped with it."""


def loss_sum(parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The total of the loss terms: Python's `sum` over them in their order (the total the updates always used)."""
    total = sum(parts.values())
    assert isinstance(total, torch.Tensor), "no loss terms"
    return total


def section(name: str) -> contextlib.AbstractContextManager:
    """A `record_function` label while a torch profiler runs, else nothing (a label costs ~30 us per use)."""
    return record_function(name) if torch._C._autograd._profiler_enabled() else contextlib.nullcontext()


class Learner(nn.Module):
    """Base of MATD3, FACMAC and the RACE learners: `n_updates`, loss application, checkpoint state, and the
    non-finite guard.

    Every `torch.optim.Optimizer` attribute is part of the checkpoint, under its attribute name.

    `update()` never waits for the device: it reads no tensor value on the host (no `.item()`, `.cpu()`,
    `.tolist()`, `float()`/`bool()` of a tensor, no data-dependent shapes). It returns its losses as 0-dim
    tensors on the learner's device, and the non-finite guard works on the device too:

    - an update whose batch or loss holds a NaN or inf changes nothing: its optimiser steps are skipped by
      fused Adam's `found_inf` (parameters, moments and step counts untouched) and the target networks do
      not move (their Polyak / copy weight is zero for that update). Only `n_updates` and the random
      generators advance. A non-finite actor loss after a finite critic loss skips the actor step and the
      targets; the critic step of that update was already applied (as before this guard moved to the device);
    - the first such update's number and whether a batch held the NaN are recorded on the device;
      `non_finite()` reads that record (the one host read, done by the trainer once per generation) and
      `raise_if_non_finite()` raises `NonFiniteLossError` with it.
    """

    n_updates: int = 0
    _NO_BAD = 2**62  # "no non-finite update yet" in the device record

    # What every learner sets in its __init__ (declared for the type checker: nn.Module types unknown attributes
    # as `Tensor | Module`).
    generator: torch.Generator
    marl_heads: torch.Tensor
    pop_encoders: dict | None
    encoders: nn.Module
    critic: nn.Module
    opt_critic: torch.optim.Optimizer
    opt_actor: torch.optim.Optimizer
    opt_encoder: torch.optim.Optimizer
    _guard_record: dict[str, torch.Tensor] | None

    def update(
        self, batch, population: torch.Tensor | None = None, pop_encoders: dict | None = None, marl_batch=None
    ) -> dict[str, torch.Tensor]:
        """One gradient update on `batch` (the MARL critic and actor term on `marl_batch` instead when given:
        `discrete.marl_data=own`); the losses as 0-dim tensors on the device (each learner's own)."""
        raise NotImplementedError

    def target_pairs(self) -> list:
        """(target, online) pairs the target update moves (each learner's own)."""
        raise NotImplementedError

    def encoder_params(self) -> dict[str, torch.Tensor]:
        """The encoders' weights as tensors (the continuous learners'; teams with their own encoders)."""
        raise NotImplementedError

    def fresh_encoder_params(self, n_teams: int) -> dict[str, torch.Tensor]:
        """Newly initialised encoder weights for `n_teams` teams (the continuous learners')."""
        raise NotImplementedError

    # ---------------------------------------------------------------- arithmetic (racemarl.precision)
    @property
    def precision(self) -> str:
        """`fp32` or `bf16`: the config's `precision` resolved on the device the learner lives on."""
        device = self.marl_heads.device
        cached = getattr(self, "_precision", None)
        if cached is None or cached[0] != device:
            self._precision = cached = (device, resolve_precision(getattr(self.cfg, "precision", "fp32"), device))
        return cached[1]

    def amp(self) -> contextlib.AbstractContextManager:
        """The context of an update's forward passes: bfloat16 autocast with `precision` bf16, else nothing.
        `apply_loss` turns it off again for the backward pass and the optimiser steps."""
        return autocast(self.precision, self.marl_heads.device)

    # ---------------------------------------------------------------- hooks (RACE adds losses and networks)
    def extra_critic_losses(
        self, batch, z_next: torch.Tensor, q_next: torch.Tensor, population: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
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

    def apply_loss(
        self,
        loss: torch.Tensor,
        optimizers: list[torch.optim.Optimizer],
        parts: dict[str, torch.Tensor],
        grad_clip: float = 0.0,
        label: str = "step",
        ok: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Backpropagate `loss` (the sum of `parts`) and step `optimizers`, each with its gradients clipped
        to norm `grad_clip` (0 = no clipping). Without a host read: when `loss` is not finite, or `ok` (what
        the update found so far, a 0-dim bool tensor) is false, the steps are skipped on the device (fused
        Adam's `found_inf`). Returns `ok` and-ed with this loss's finiteness."""
        del parts  # the non-finite parts are reported by the trainer from its loss sums
        finite = torch.isfinite(loss)
        ok = finite if ok is None else ok & finite
        self._record(ok)
        skip = (~ok).float()
        with full_precision(loss.device.type), section(f"{label}_backward"):  # backward: the forward's dtypes
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
        with full_precision(loss.device.type), section(f"{label}_optim"):
            if grad_clip > 0:
                for opt in optimizers:
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
            for opt in optimizers:
                opt.found_inf = skip  # type: ignore[attr-defined]  # fused Adam skips the whole step (and undoes its step count) where it is 1
                opt.step()
        if torch.is_autocast_enabled(loss.device.type):
            torch.clear_autocast_cache()  # the stepped weights' bfloat16 copies are stale: cast them anew where read
        return ok

    # ---------------------------------------------------------------- what each encoder-loss term does
    def encoder_losses(self, batch, population: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The named terms of the encoder loss on `batch` (the learner's own: MATD3, FACMAC)."""
        raise NotImplementedError

    def encoder_grad_norms(
        self, batch, population: torch.Tensor | None = None, pop_encoders: dict | None = None
    ) -> dict[str, float]:
        """The norm of the gradient each term of the encoder loss (`encoder_losses`: the MARL actor term, RACE's VFM
        and beta * VMM) puts on the shared encoders' parameters, each term alone, on `batch`, at the learner's
        precision. Changes nothing: no parameter, optimiser state or `.grad` is touched, and the learner's random
        generator is put back as it was (the team draw and any noise of these terms come from it), so a run
        measured this way learns exactly what it would have learned without."""
        params = list(self.encoders.parameters())
        state = self.generator.get_state()
        teams = getattr(self, "_teams", None)
        self._teams = None  # RACE: draw the VFM team here (from the generator), not the last update's
        if pop_encoders is not None:  # the unshared-encoder ablation's teams (set by every update too)
            self.pop_encoders = pop_encoders
        try:
            with self.amp():
                losses = self.encoder_losses(batch, population)
            out = {}
            with full_precision(params[0].device.type):
                for name, loss in losses.items():
                    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                    norms = [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
                    out[name] = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
            return {k: float(v) for k, v in zip(out, torch.stack(list(out.values())).tolist())}
        finally:
            self.generator.set_state(state)
            self._teams = teams

    # ---------------------------------------------------------------- the non-finite guard (device side)
    def _guard(self) -> dict[str, torch.Tensor]:
        """The device record: the first non-finite update's number (`_NO_BAD` if none) and whether a batch held it."""
        device = self.marl_heads.device
        rec = getattr(self, "_guard_record", None)
        if rec is None or rec["first"].device != device:
            rec = {
                "first": torch.full((), self._NO_BAD, dtype=torch.int64, device=device),
                "batch": torch.zeros((), dtype=torch.bool, device=device),
            }
            self._guard_record = rec
        return rec

    def _record(self, ok: torch.Tensor, batch: bool = False) -> None:
        """Note on the device that update `n_updates + 1` met a non-finite value where `ok` is false."""
        rec = self._guard()
        rec["first"] = torch.minimum(rec["first"], torch.where(ok, self._NO_BAD, self.n_updates + 1))
        if batch:
            rec["batch"] = rec["batch"] | ~ok

    def batch_ok(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """0-dim bool: every value of the (floating) batch tensors is finite (recorded for `non_finite`). A sum is
        NaN or inf as soon as one of its terms is (or when it overflows, which only absurd data would do)."""
        ok = torch.isfinite(torch.stack([t.sum() for t in tensors]).sum())
        self._record(ok, batch=True)
        return ok

    def non_finite(self) -> str | None:
        """Read the device record (one host transfer) and clear it: None when every update since the last call was
        finite, else a description of the first one that was not."""
        rec = self._guard()
        first, batch = torch.stack([rec["first"], rec["batch"].long()]).tolist()
        self._guard_record = None
        if first == self._NO_BAD:
            return None
        what = "non-finite values in the sampled batch" if batch else "non-finite loss"
        return f"{what} at update {first}"

    def raise_if_non_finite(self) -> None:
        msg = self.non_finite()
        if msg is not None:
            raise NonFiniteLossError(msg)

    def target_weight(self, weight: float, ok: torch.Tensor) -> torch.Tensor:
        """The Polyak / copy weight of the target update as a 0-dim tensor: `weight`, or 0 where `ok` is false."""
        return ok.to(torch.float32) * weight

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
