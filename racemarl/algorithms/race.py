"""The RACE learner: MATD3 plus the PeVFA, V_zeta and the encoder's VFM + beta * VMM loss.

Per update, on one batch of the shared buffer:
- PeVFA Q_theta(s, u, W_j) regresses r + gamma * min Q_theta'(s', pi_j(s'), W_j) for K teams j
  drawn from the population plus the MARL team (heads enter detached: no gradient into W_j).
- V_zeta(s) regresses F(s) = r + c * max(Q_psi'(s', pi_marl(s')), max_j Q_theta'(s', pi_j(s'), W_j)),
  c = `race.value_target_factor` (default gamma).
- At each delayed actor update the encoders minimise
  L_VFM + beta * L_VMM = -Q_psi(s, pi_marl(s)) - Q_theta(s, pi_j(s), W_j) - beta * E[w(s) I(z_i; s)],
  where the first term is also the MARL heads' loss, W_j is detached, and the MI critic T_omega
  ascends the same bound. Critics are only read by these terms, never updated by them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from racemarl.algorithms.base import Learner
from racemarl.algorithms.matd3 import MATD3, section
from racemarl.config import Config, RaceConfig, resolve_vmm_beta
from racemarl.data.buffer import Batch
from racemarl.envs.base import EnvSpec
from racemarl.nets.critics import PeVFA, StateValue
from racemarl.nets.mi import SeparableCritic, jsd_mi_per_sample, value_weights


class RaceParts(Learner):
    """What both RACE learners (continuous on MATD3, discrete on FACMAC) add to their base learner's
    bookkeeping: the PeVFA's target, the extra critics and the MI critic's optimiser, and L_VMM
    reported without its beta. Needs `pevfa(_targ)`, `value`, `mi_critic`, their optimisers and
    `rcfg`; `last_mi` is set by `extra_encoder_losses`. Placed before the base learner in a RACE learner's
    bases (`RaceLearner(RaceParts, MATD3)`), so its methods wrap the base learner's."""

    rcfg: RaceConfig
    spec: EnvSpec
    last_mi: torch.Tensor
    pevfa: nn.Module
    pevfa_targ: nn.Module
    value: nn.Module
    opt_pevfa: torch.optim.Optimizer
    opt_value: torch.optim.Optimizer
    opt_mi: torch.optim.Optimizer

    @property
    def vmm_beta(self) -> float:
        """VMM's weight on this learner's task (`race.vmm_beta`, with `auto` resolved by the action space)."""
        return resolve_vmm_beta(self.rcfg.vmm_beta, self.spec.discrete)

    def update(
        self, batch, population: torch.Tensor | None = None, pop_encoders: dict | None = None, marl_batch=None
    ) -> dict[str, torch.Tensor]:
        losses = super().update(batch, population, pop_encoders, marl_batch)
        if "vmm" in losses:  # report L_VMM itself, not beta * L_VMM (divided in double precision, as reported before)
            losses["vmm"] = losses["vmm"].double() / self.vmm_beta
            losses["mi"] = self.last_mi
        return losses

    def target_pairs(self) -> list:
        return [*super().target_pairs(), (self.pevfa_targ, self.pevfa)]

    def critic_modules(self) -> list:
        return [self.critic, self.pevfa, self.value]

    def critic_optimizers(self) -> list:
        return [self.opt_critic, self.opt_pevfa, self.opt_value]

    def encoder_optimizers(self) -> list:
        return [self.opt_actor, self.opt_encoder, self.opt_mi]


class RaceLearner(RaceParts, MATD3):
    def __init__(self, spec: EnvSpec, cfg: Config, generator: torch.Generator):
        super().__init__(spec, cfg, generator)
        rc, net = cfg.race, cfg.net
        self.rcfg = rc
        self.pevfa = PeVFA(
            spec.state_dim,
            self.layout.joint_dim,
            net.critic_hidden,
            spec.n_agents,
            net.embed_dim + 1,
            self.layout.row_mask,
            net.policy_embed_dim,
            net.critic_layer_norm,
            twin_embeddings=rc.pevfa_twin_embeddings,
        )
        self.pevfa_targ = copy.deepcopy(self.pevfa).requires_grad_(False)
        self.value = StateValue(spec.state_dim)
        self.mi_critic = SeparableCritic(spec.state_dim, net.embed_dim, spec.n_agents, rc.mi_hidden)
        lc = cfg.learner
        self.opt_pevfa = torch.optim.Adam(self.pevfa.parameters(), lr=lc.lr_critic, fused=True)
        self.opt_value = torch.optim.Adam(self.value.parameters(), lr=lc.lr_critic, fused=True)
        self.opt_mi = torch.optim.Adam(self.mi_critic.parameters(), lr=lc.lr_critic, fused=True)
        self._teams: torch.Tensor | None = None  # heads of the teams drawn for this update

    def draw_teams(self, population: torch.Tensor | None) -> tuple[torch.Tensor, dict | None]:
        """K teams drawn uniformly from population + MARL team: heads `[K, N, A, d+1]` (detached) and,
        with unshared encoders, each drawn team's encoder parameters `{name: [K, N, ...]}`."""
        marl = self.marl_heads.detach()[None]
        pool = marl if population is None or len(population) == 0 else torch.cat([population, marl])
        idx = torch.randint(
            0, len(pool), (self.rcfg.pevfa_teams_per_update,), generator=self.generator, device=pool.device
        )
        if self.pop_encoders is None:
            return pool[idx].detach(), None
        marl_enc = self.encoder_params()
        encoders = {k: torch.cat([v, marl_enc[k]])[idx] for k, v in self.pop_encoders.items()}
        return pool[idx].detach(), encoders

    def extra_critic_losses(
        self, batch: Batch, z_next: torch.Tensor, q_next: torch.Tensor, population: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        teams, encoders = self.draw_teams(population)
        self._teams = teams
        k = teams.shape[0]
        gamma = self.lcfg.gamma
        not_done = 1.0 - batch.terminated
        state_k = batch.state.expand(k, *batch.state.shape)
        with torch.no_grad(), section("pevfa_target"):
            q_next_marl = q_next
            if encoders is not None:  # unshared ablation: each team reads its own encoders
                z_next = self.encode_teams(batch.next_obs.expand(k, *batch.next_obs.shape), encoders)
            elif self.rcfg.pevfa_target_encoder == "online":
                z_next = self.encoders(batch.next_obs)
            act = self.smoothed_policy if self.rcfg.pevfa_target_smoothing else self.policy
            a_next = act(z_next, teams)  # [K, B, U]
            qt_next = self.pevfa_targ(batch.next_state.expand_as(state_k), a_next, teams).min(0).values  # [K, B]
            y = batch.reward + gamma * not_done * qt_next
            factor = gamma if self.rcfg.value_target_factor is None else self.rcfg.value_target_factor
            best_next = torch.maximum(q_next_marl, qt_next.max(0).values)
            f_target = batch.reward + factor * not_done * best_next
        with section("pevfa_loss"):
            qt = self.pevfa(state_k, batch.action.expand(k, *batch.action.shape), teams)  # [2, K, B]
            pevfa_loss = (qt - y).pow(2).mean((1, 2)).sum()
        with section("value_loss"):
            value_loss = (self.value(batch.state) - f_target).pow(2).mean()
        return {"pevfa": pevfa_loss, "value": value_loss}

    @torch.no_grad()
    def pevfa_value(
        self,
        obs: torch.Tensor,
        state: torch.Tensor,
        heads: torch.Tensor,
        encoders: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """min of the PeVFA twins at each team's own greedy action: team k at obs `[K, N, max_obs]`, state
        `[K, S]`, heads `[K, N, A, d+1]` (encoders: the unshared ablation's `{name: [K, N, ...]}`) -> `[K]`."""
        a = self.act(obs, heads, encoders)  # [K, N, A] padded, squashed
        joint = self.layout.flatten(a[:, :, None, :])  # [K, 1, U]
        return self.pevfa(state[:, None], joint, heads).min(0).values[:, 0]

    def extra_encoder_losses(
        self, batch: Batch, z: torch.Tensor, population: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.rcfg.vfm_pevfa:
            with section("vfm_loss"):
                if self.pop_encoders is None:
                    teams = self._teams if self._teams is not None else self.draw_teams(population)[0]
                else:  # unshared ablation: only the MARL team's encoders are trained by gradients
                    teams = self.marl_heads.detach()[None]
                k = teams.shape[0]
                a = self.policy(z, teams)  # heads detached: gradient reaches the encoders only
                # Q_1 of the PeVFA only (first_only: the second twin is not computed)
                out["vfm"] = -self.pevfa(batch.state.expand(k, *batch.state.shape), a, teams, first_only=True).mean()
        if self.vmm_beta > 0:
            with section("vmm_loss"):
                mi = jsd_mi_per_sample(self.mi_critic(batch.state, z))  # [N, B]
                with torch.no_grad():
                    w = value_weights(self.value(batch.state))
                self.last_mi = mi.detach().mean()
                out["vmm"] = -self.vmm_beta * (w * mi).mean()
        return out
