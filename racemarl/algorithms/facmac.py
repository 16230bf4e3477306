"""FACMAC: per-agent critics mixed by a monotonic QMIX mixer, policy gradient through the mixed critic.

Two learners share the mixed critic (`racemarl.nets.mixer.MixedCritic`):

* `FACMAC` (discrete tasks: SMAX, SMAC) trains on batches of whole episodes. Actors are the RACE
  parts for discrete tasks: a recurrent encoder (`RecurrentEncoders`) whose hidden state z_i the
  linear heads `[N, A, h+1]` read as logits; unavailable actions are masked everywhere (acting,
  targets, Gumbel-softmax). Critic targets are TD(lambda) over each episode, with the target
  policy's greedy actions; the MARL heads and the encoder ascend Q_tot(s, o, u) with
  u = Gumbel-softmax straight-through samples of the masked logits, plus a small penalty on the
  logits. Targets are copied every `target_update_interval` updates (hard) or Polyak-averaged (soft).
* `FacmacContinuous` (MA-MuJoCo) is MATD3's update with the twin centralised critic replaced by one
  mixed critic on (o_i, u_i) and no target policy smoothing (FACMAC is DDPG-style); the actor delay
  stays `learner.policy_delay`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from racemarl.algorithms.base import Learner, loss_sum
from racemarl.algorithms.matd3 import MATD3, frozen, soft_update
from racemarl.config import Config
from racemarl.data.episode_buffer import EpisodeBatch
from racemarl.envs.base import EnvSpec
from racemarl.nets.mixer import MixedCritic
from racemarl.nets.policy import init_heads
from racemarl.nets.recurrent import RecurrentEncoders

MASKED_LOGIT = -1e10


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(avail <= 0, MASKED_LOGIT)


def team_logits(z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Logits of linear heads on representations.

    z `[..., N, h]` with one team's heads `[N, A, h+1]` -> `[..., N, A]`;
    with K teams' heads `[K, N, A, h+1]` (all on the same z) -> `[K, ..., N, A]`.

    The same math as `nets.policy.heads_forward`, in the recurrent layout (agents after batch and time, not
    first); kept apart because one function would need transposes and other kernels (baddbmm vs einsum),
    whose float rounding would change the seeded results of both families.
    """
    w, b = heads[..., :-1], heads[..., -1]
    if heads.dim() == 3:
        return torch.einsum("...nh,nah->...na", z, w) + b
    k = heads.shape[0]
    out = torch.einsum("...nh,knah->k...na", z, w)
    return out + b.view(k, *([1] * (z.dim() - 2)), *b.shape[1:])


def gumbel_straight_through(logits: torch.Tensor, generator: torch.Generator, tau: float = 1.0) -> torch.Tensor:
    """One-hot samples of softmax(logits + Gumbel noise) in the forward pass, softmax gradient backward."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def td_lambda_targets(
    reward: torch.Tensor, terminated: torch.Tensor, mask: torch.Tensor, q_next: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """TD(lambda) returns over episodes, computed backwards.

    reward, terminated, mask `[..., T]`; q_next `[..., T+1]` the target values of every stored step
    (index L is the state where an episode of length L ended). For real steps t < L:
    G_t = r_t + gamma (1 - term_t) ((1 - lam) Q_{t+1} + lam G_{t+1}), with G_L = Q_L, so the last
    step bootstraps from Q_L unless the episode terminated. Returns `[..., T]`.
    """
    t_max = reward.shape[-1]
    g_next = q_next[..., t_max]
    out = []
    for t in reversed(range(t_max)):
        g = reward[..., t] + gamma * (1 - terminated[..., t]) * ((1 - lam) * q_next[..., t + 1] + lam * g_next)
        g_next = torch.where(mask[..., t] > 0, g, q_next[..., t])
        out.append(g_next)
    return torch.stack(out[::-1], dim=-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.expand_as(x).sum().clamp(min=1)


def hard_update(
    target: nn.Module | torch.Tensor, source: nn.Module | torch.Tensor, ok: torch.Tensor | None = None
) -> None:
    """Copy `source` into `target`; where `ok` (a 0-dim bool tensor) is false, keep `target` (decided on the device)."""
    with torch.no_grad():
        if isinstance(target, torch.Tensor):
            assert isinstance(source, torch.Tensor)
            pairs: Iterable[tuple[torch.Tensor, torch.Tensor]] = [(target, source)]
        else:
            assert isinstance(source, nn.Module)
            pairs = zip(target.parameters(), source.parameters())
        for t, s in pairs:
            t.copy_(s if ok is None else torch.where(ok, s, t))


class FACMAC(Learner):
    """FACMAC for discrete actions on episode batches (see the module docstring)."""

    # buffers (register_buffer), typed for the type checker
    row_mask: torch.Tensor
    marl_heads_targ: torch.Tensor

    def __init__(self, spec: EnvSpec, cfg: Config, generator: torch.Generator):
        super().__init__()
        if not spec.discrete:
            raise ValueError("FACMAC (discrete) needs a discrete task; use FacmacContinuous")
        self.spec, self.cfg, self.dcfg = spec, cfg, cfg.discrete
        self.generator = generator  # Gumbel noise
        dc = self.dcfg
        n, self.obs_dim, self.n_actions = spec.n_agents, max(spec.obs_dims), max(spec.act_dims)
        self.max_obs = self.obs_dim
        self.encoders: RecurrentEncoders = RecurrentEncoders(
            n, self.obs_dim, self.n_actions, dc.rnn_hidden, dc.shared_rnn
        )
        self.encoders_targ = copy.deepcopy(self.encoders).requires_grad_(False)
        row_mask = torch.zeros(n, self.n_actions, dtype=torch.bool)
        for i, a in enumerate(spec.act_dims):
            row_mask[i, :a] = True
        self.register_buffer("row_mask", row_mask)  # [N, A]: real actions (maps with fewer actions per agent)
        heads = init_heads(1, n, self.n_actions, dc.rnn_hidden, row_mask, generator)[0]
        self.marl_heads = nn.Parameter(heads)  # [N, A, h+1]
        self.register_buffer("marl_heads_targ", heads.clone())
        self.critic = MixedCritic(
            n, self.obs_dim, self.n_actions, spec.state_dim, dc.critic_hidden, dc.mixer_embed, dc.hypernet_hidden
        )
        self.critic_targ = copy.deepcopy(self.critic).requires_grad_(False)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=dc.lr_critic, fused=True)
        self.opt_actor = torch.optim.Adam([self.marl_heads], lr=dc.lr_actor, fused=True)
        self.opt_encoder = torch.optim.Adam(self.encoders.parameters(), lr=dc.lr_actor, fused=True)
        self.n_updates = 0

    @property
    def embed_dim(self) -> int:
        return self.dcfg.rnn_hidden

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act_step(
        self,
        obs: torch.Tensor,
        last_actions: torch.Tensor,
        hidden: torch.Tensor,
        heads: torch.Tensor,
        avail: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of B envs, env b driven by team heads[b]: obs `[B, N, O]`, last actions one-hot
        `[B, N, A]`, hidden `[B, N, h]`, heads `[B, N, A, h+1]`, avail `[B, N, A]` ->
        (masked logits `[B, N, A]`, new hidden)."""
        h = self.encoders.step(obs, last_actions, hidden)
        logits = torch.einsum("bnh,bnah->bna", h, heads[..., :-1]) + heads[..., -1]
        return masked_logits(logits, avail), h

    # ------------------------------------------------------------------ learning
    def unroll(self, batch: EpisodeBatch, target: bool = False) -> torch.Tensor:
        """Encoder hidden states of every stored step `[B, T+1, N, h]` (inputs: obs and the previous action)."""
        onehot = F.one_hot(batch.actions, self.n_actions).float()
        last = torch.cat([torch.zeros_like(onehot[:, :1]), onehot], dim=1)
        return (self.encoders_targ if target else self.encoders)(batch.obs, last)

    def update(
        self,
        batch: EpisodeBatch,
        population: torch.Tensor | None = None,
        pop_encoders: dict | None = None,
        marl_batch: EpisodeBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """One update on a batch of episodes; no host synchronisation (see `Learner`): losses returned as
        detached 0-dim tensors, a non-finite batch or loss skips the steps and targets on the device.
        `marl_batch` (`discrete.marl_data=own`): the batch the MARL critic and the actor term learn from instead
        of `batch` (which RACE's PeVFA, V_zeta, VFM and VMM keep)."""
        del pop_encoders  # unshared encoders are a continuous-task ablation only
        with self.amp():
            return self._update(batch, population, batch if marl_batch is None else marl_batch)

    def marl_targets(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Target encoders' hidden states `[B, T+1, N, h]` and the target critic's Q_tot of the MARL team's target
        greedy actions `[B, T+1]` on `batch` (no gradient)."""
        with torch.no_grad():
            z_targ = self.unroll(batch, target=True)
            greedy = masked_logits(team_logits(z_targ, self.marl_heads_targ), batch.avail).argmax(-1)
            return z_targ, self.critic_targ(batch.obs, F.one_hot(greedy, self.n_actions).float(), batch.state)

    def _update(
        self, batch: EpisodeBatch, population: torch.Tensor | None, marl_batch: EpisodeBatch
    ) -> dict[str, torch.Tensor]:
        dc, mb = self.dcfg, marl_batch
        batches = [batch] if mb is batch else [batch, mb]
        ok = self.batch_ok([t for b in batches for t in b.tensors() if t.is_floating_point()])
        t_max = mb.reward.shape[1]
        actions = F.one_hot(mb.actions, self.n_actions).float()
        z_targ, q_next = self.marl_targets(mb)
        with torch.no_grad():
            y = td_lambda_targets(mb.reward, mb.terminated, mb.mask, q_next, dc.gamma, dc.td_lambda)
        q = self.critic(mb.obs[:, :t_max], actions, mb.state[:, :t_max])
        losses: dict[str, torch.Tensor] = {"critic": masked_mean((q - y).pow(2), mb.mask)}
        if mb is not batch:
            z_targ, q_next = self.marl_targets(batch)
        losses.update(self.extra_critic_losses(batch, z_targ, q_next, population))
        ok = self._step(loss_sum(losses), self.critic_optimizers(), losses, ok)

        with frozen(self.critic_modules()):
            enc_losses = self.encoder_losses(batch, population, mb)
            ok = self._step(loss_sum(enc_losses), self.encoder_optimizers(), enc_losses, ok)
        losses.update(enc_losses)
        self.n_updates += 1
        self.update_targets(ok)
        return {k: v.detach() for k, v in losses.items()}

    def encoder_losses(
        self, batch: EpisodeBatch, population: torch.Tensor | None, marl_batch: EpisodeBatch | None = None
    ) -> dict[str, torch.Tensor]:
        """The terms of the MARL heads' and the encoder's loss: the actor term (-Q_tot of Gumbel-softmax
        straight-through actions, plus the logit penalty; on `marl_batch` when given) and the hook's extra terms
        on `batch` (RACE: VFM, beta * VMM). The critics are read, not trained (the caller freezes them)."""
        mb = batch if marl_batch is None else marl_batch
        t_max = mb.reward.shape[1]
        obs, state, avail, mask = mb.obs[:, :t_max], mb.state[:, :t_max], mb.avail[:, :t_max], mb.mask
        z_m = self.unroll(mb)
        logits = team_logits(z_m[:, :t_max], self.marl_heads)
        pi = gumbel_straight_through(masked_logits(logits, avail), self.generator)
        q_pi = self.critic(obs, pi, state)
        reg = masked_mean((logits * avail).pow(2).mean(-1), mask[..., None])
        z = z_m if mb is batch else self.unroll(batch)
        return {
            "actor": -masked_mean(q_pi, mask) + self.dcfg.logit_reg * reg,
            **self.extra_encoder_losses(batch, z, population),
        }

    def _step(
        self,
        loss: torch.Tensor,
        optimizers: list[torch.optim.Optimizer],
        parts: dict[str, torch.Tensor],
        ok: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.apply_loss(loss, optimizers, parts, self.dcfg.grad_clip, ok=ok)

    def target_pairs(self) -> list[tuple]:
        return [
            (self.critic_targ, self.critic),
            (self.encoders_targ, self.encoders),
            (self.marl_heads_targ, self.marl_heads.detach()),
        ]

    def update_targets(self, ok: torch.Tensor | None = None) -> None:
        """Soft (Polyak) or periodic hard target updates; no move where `ok` (0-dim bool: the update was finite)
        is false."""
        dc = self.dcfg
        if dc.target_update == "soft":
            weight = dc.tau if ok is None else self.target_weight(dc.tau, ok)
            for targ, src in self.target_pairs():
                soft_update(targ, src, weight)
        elif self.n_updates % dc.target_update_interval == 0:
            for targ, src in self.target_pairs():
                hard_update(targ, src, ok)


class FacmacContinuous(MATD3):
    """FACMAC on continuous tasks: MATD3's loop with a mixed critic and no target policy smoothing."""

    def __init__(self, spec: EnvSpec, cfg: Config, generator: torch.Generator):
        super().__init__(spec, cfg, generator)
        dc = cfg.discrete
        self.critic = MixedCritic(
            spec.n_agents,
            self.max_obs,
            self.layout.max_act,
            spec.state_dim,
            cfg.net.critic_hidden,
            dc.mixer_embed,
            dc.hypernet_hidden,
        )
        self.critic_targ = copy.deepcopy(self.critic).requires_grad_(False)  # type: ignore[assignment]  # not a twin
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=cfg.learner.lr_critic, fused=True)

    def critic_values(
        self, critic: nn.Module, obs: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """One mixed value `[1, B]`: obs `[N, B, O]`, state `[B, S]`, flat joint action `[B, U]`."""
        per_agent = self.layout.unflatten(action).transpose(0, 1)  # [B, N, A]
        return critic(obs.transpose(0, 1), per_agent, state)[None]

    def smoothed_policy(self, z: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        return self.policy(z, heads)
