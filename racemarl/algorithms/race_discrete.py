"""RACE on discrete tasks: FACMAC plus the PeVFA, V_zeta and the encoder's VFM + beta * VMM loss.

The same parts as the continuous learner (`racemarl.algorithms.race`), on episode batches and the recurrent
encoder, with every loss averaged over real (unpadded) steps:
- PeVFA Q_theta(s, o, u, W_j): FACMAC's per-agent critic and mixer, both conditioned on the policy
  embedding of team j's heads (agents' embeddings summed, as in the official code; heads detached).
  It regresses TD(lambda) targets built with team j's greedy next actions (read with the online encoder, as the
  official code; `discrete.pevfa_target_encoder`), for K teams drawn from the population plus the MARL team.
- V_zeta(s) regresses F(s_t) = the larger of the MARL critic's and the PeVFA's TD(lambda) targets (official code;
  `discrete.value_target=one_step`: r_t + c (1 - term_t) max(Q_psi'(s_{t+1}, pi_marl), max_j Q_theta'(s_{t+1}, pi_j, W_j))).
- Encoder: L_VFM = -Q_psi(s, pi_marl) - Q_theta(s, pi_j, W_j) with Gumbel-softmax straight-through
  actions (the first term is the MARL heads' loss; W_j detached), plus
  beta * L_VMM = -beta E[w(s) I_JSD(z_i; s)] on up to `MI_SAMPLES` real steps drawn from the batch
  (negatives are other drawn steps, never another agent of the same step).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from racemarl.algorithms.facmac import (
    FACMAC,
    gumbel_straight_through,
    masked_logits,
    masked_mean,
    td_lambda_targets,
    team_logits,
)
from racemarl.algorithms.race import RaceParts
from racemarl.config import Config
from racemarl.data.episode_buffer import EpisodeBatch
from racemarl.envs.base import EnvSpec
from racemarl.nets.critics import PolicyEmbedding, StateValue
from racemarl.nets.mi import SeparableCritic, jsd_mi_per_sample, value_weights
from racemarl.nets.mixer import MixedCritic

MI_SAMPLES = 256  # real steps per update in the MI bound (its cost is quadratic in this number)


class DiscretePeVFA(torch.nn.Module):
    """Q_theta(s, o, u, W_j) = MixedCritic(o, u, s, e(W_j)), e = summed per-agent policy embedding."""

    def __init__(
        self, n_agents: int, obs_dim: int, n_actions: int, state_dim: int, cfg: Config, row_mask: torch.Tensor
    ):
        super().__init__()
        dc = cfg.discrete
        self.embedding = PolicyEmbedding(n_agents, dc.rnn_hidden + 1, row_mask, cfg.net.policy_embed_dim, combine="sum")
        self.critic = MixedCritic(
            n_agents,
            obs_dim,
            n_actions,
            state_dim,
            dc.critic_hidden,
            dc.mixer_embed,
            dc.hypernet_hidden,
            extra_dim=self.embedding.out_dim,
        )

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, state: torch.Tensor, heads: torch.Tensor
    ) -> torch.Tensor:
        """K teams: obs `[B, T, N, O]`, actions `[K, B, T, N, A]`, state `[B, T, S]`, heads `[K, N, A, h+1]` -> `[K, B, T]`."""
        e = self.embedding(heads.detach())  # [K, E]
        k = e.shape[0]
        lead = actions.shape[1:-2]
        e = e.view(k, *([1] * len(lead)), -1).expand(k, *lead, e.shape[-1])
        return self.critic(obs.expand(k, *obs.shape), actions, state.expand(k, *state.shape), e)


class RaceDiscreteLearner(RaceParts, FACMAC):
    def __init__(self, spec: EnvSpec, cfg: Config, generator: torch.Generator):
        super().__init__(spec, cfg, generator)
        rc, dc = cfg.race, cfg.discrete
        self.rcfg = rc
        self.pevfa = DiscretePeVFA(spec.n_agents, self.obs_dim, self.n_actions, spec.state_dim, cfg, self.row_mask)
        self.pevfa_targ = copy.deepcopy(self.pevfa).requires_grad_(False)
        self.value = StateValue(spec.state_dim, hidden=(32, 32))
        self.mi_critic = SeparableCritic(spec.state_dim, dc.rnn_hidden, spec.n_agents, rc.mi_hidden)
        self.opt_pevfa = torch.optim.Adam(self.pevfa.parameters(), lr=dc.lr_critic, fused=True)
        self.opt_value = torch.optim.Adam(self.value.parameters(), lr=dc.lr_critic, fused=True)
        self.opt_mi = torch.optim.Adam(self.mi_critic.parameters(), lr=dc.lr_critic, fused=True)
        self._teams: torch.Tensor | None = None

    def draw_teams(self, population: torch.Tensor | None) -> torch.Tensor:
        """K teams drawn uniformly from population + MARL team, heads `[K, N, A, h+1]` (detached)."""
        marl = self.marl_heads.detach()[None]
        pool = marl if population is None or len(population) == 0 else torch.cat([population, marl])
        idx = torch.randint(
            0, len(pool), (self.rcfg.pevfa_teams_per_update,), generator=self.generator, device=pool.device
        )
        return pool[idx].detach()

    def extra_critic_losses(
        self, batch: EpisodeBatch, z_targ: torch.Tensor, q_next: torch.Tensor, population: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        dc = self.dcfg
        teams = self._teams = self.draw_teams(population)
        t_max = batch.reward.shape[1]
        mask = batch.mask
        with torch.no_grad():
            z_next = self.unroll(batch) if dc.pevfa_target_encoder == "online" else z_targ
            greedy = masked_logits(team_logits(z_next, teams), batch.avail).argmax(-1)  # [K, B, T+1, N]
            qt_next = self.pevfa_targ(batch.obs, F.one_hot(greedy, self.n_actions).float(), batch.state, teams)
            y = td_lambda_targets(batch.reward, batch.terminated, mask, qt_next, dc.gamma, dc.td_lambda)  # [K, B, T]
            if dc.value_target == "td_lambda":  # the larger of the MARL critic's and the PeVFA's TD(lambda) targets
                y_marl = td_lambda_targets(batch.reward, batch.terminated, mask, q_next, dc.gamma, dc.td_lambda)
                f_target = torch.maximum(y_marl, y.max(0).values)
            else:
                factor = dc.gamma if self.rcfg.value_target_factor is None else self.rcfg.value_target_factor
                best_next = torch.maximum(q_next, qt_next.max(0).values)[:, 1:]
                f_target = batch.reward + factor * (1 - batch.terminated) * best_next
        actions = F.one_hot(batch.actions, self.n_actions).float()
        qt = self.pevfa(batch.obs[:, :t_max], actions.expand(len(teams), *actions.shape), batch.state[:, :t_max], teams)
        return {
            "pevfa": masked_mean((qt - y).pow(2), mask),
            "value": masked_mean((self.state_values(batch.state[:, :t_max]) - f_target).pow(2), mask),
        }

    def state_values(self, state: torch.Tensor) -> torch.Tensor:
        """V_zeta on states of any leading shape `[..., S]` -> `[...]`."""
        return self.value(state.reshape(-1, state.shape[-1])).view(state.shape[:-1])

    def extra_encoder_losses(
        self, batch: EpisodeBatch, z: torch.Tensor, population: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        t_max = batch.reward.shape[1]
        mask = batch.mask
        z = z[:, :t_max]
        state = batch.state[:, :t_max]
        if self.rcfg.vfm_pevfa:
            teams = self._teams if self._teams is not None else self.draw_teams(population)
            logits = masked_logits(team_logits(z, teams), batch.avail[:, :t_max])  # heads detached: encoder only
            pi = gumbel_straight_through(logits, self.generator)
            out["vfm"] = -masked_mean(self.pevfa(batch.obs[:, :t_max], pi, state, teams), mask)
        if self.vmm_beta > 0:
            # the real steps' flat indices: from the buffer's sampling (host-side lengths, no device read), else here
            real = batch.real if batch.real is not None else mask.flatten().nonzero().squeeze(1)
            pick = real[torch.randperm(len(real), generator=self.generator, device=real.device)[:MI_SAMPLES]]
            s = state.reshape(-1, state.shape[-1])[pick]  # [M, S]
            z_m = z.reshape(-1, *z.shape[2:])[pick].transpose(0, 1)  # [N, M, h]
            mi = jsd_mi_per_sample(self.mi_critic(s, z_m))  # [N, M]
            with torch.no_grad():
                w = value_weights(self.value(s))
            self.last_mi = mi.detach().mean()
            vmm = (w * mi).mean()  # per real step
            if self.dcfg.vmm_time_reduction == "sum":  # summed over each episode's steps, as the official code
                vmm = vmm * mask.sum() / mask.shape[0]  # mean real steps per episode of the batch
            out["vmm"] = -self.vmm_beta * vmm
        return out
