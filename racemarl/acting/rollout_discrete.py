"""Lockstep rollouts on discrete tasks: B rows of an `EnvBatch`, row b driven by team heads[b].

Each step is one batched call: the recurrent encoder advances every row's hidden state (input: the
observation, the row's previous actions and the agent ids) and each row's own linear heads give
masked logits. Actions are
- greedy (`greedy[b]`): the argmax of the masked logits (evaluation);
- sampled otherwise from (1 - eps_b) * softmax(logits) + eps_b * uniform(available actions):
  eps_b = 0 for population teams (plain softmax sampling), the annealed epsilon for the MARL team.
Unavailable actions have probability exactly 0 and are never chosen. Every row draws its env seed
and its action samples from its own generator, so a row's episode does not depend on the others.
Whole episodes go to the `EpisodeBuffer` in row order once the batch is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from racemarl.data.episode_buffer import EpisodeBuffer
from racemarl.envs.batch import EnvBatch


@dataclass
class DiscreteEpisodeStats:
    returns: np.ndarray  # [B] undiscounted return of each row's episode
    lengths: np.ndarray  # [B]
    won: np.ndarray  # [B] bool: battle won


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per agent from rows of probabilities `[N, A]` (zero-probability actions never drawn)."""
    cum = np.cumsum(probs, axis=-1)
    u = (1.0 - rng.random(probs.shape[0])) * cum[:, -1]  # in (0, total]
    return (cum < u[:, None]).sum(-1)


def run_discrete_episodes(
    envs: EnvBatch,
    learner,
    heads: torch.Tensor,
    rngs: list[np.random.Generator],
    *,
    epsilon: np.ndarray | None = None,
    greedy: np.ndarray | None = None,
    buffer: EpisodeBuffer | None = None,
    marl_row: int | None = None,
) -> DiscreteEpisodeStats:
    """Play one episode in every row of `envs` (rows = teams; heads `[B, N, A, h+1]`); with a `buffer`, store them
    there in row order, row `marl_row` tagged as the MARL team's episode.

    `learner` provides `encoders` (`RecurrentEncoders`) and `act_step`; `rngs[b]` seeds row b's env
    and draws its actions.
    """
    spec = envs.spec
    b_size, n, n_act = envs.batch_size, spec.n_agents, max(spec.act_dims)
    epsilon = np.zeros(b_size) if epsilon is None else np.asarray(epsilon, float)
    greedy = np.zeros(b_size, bool) if greedy is None else np.asarray(greedy, bool)
    obs, state, avail = envs.reset([int(r.integers(2**31)) for r in rngs])
    hidden = learner.encoders.initial_state(b_size)
    last = torch.zeros(b_size, n, n_act)
    record: dict[str, list[list]] = {
        k: [[] for _ in range(b_size)] for k in ("obs", "state", "avail", "actions", "reward", "terminated")
    }
    for b in range(b_size):
        record["obs"][b].append(obs[b])
        record["state"][b].append(state[b])
        record["avail"][b].append(avail[b])
    returns = np.zeros(b_size)
    lengths = np.zeros(b_size, np.int64)
    won = np.zeros(b_size, bool)
    active = np.ones(b_size, bool)
    while active.any():
        logits, hidden = learner.act_step(torch.from_numpy(obs), last, hidden, heads, torch.from_numpy(avail))
        probs = torch.softmax(logits, -1).numpy().astype(np.float64)
        actions = logits.argmax(-1).numpy()
        for b in np.flatnonzero(active & ~greedy).tolist():
            a = avail[b].astype(np.float64)
            mixed = (1 - epsilon[b]) * probs[b] * a + epsilon[b] * a / a.sum(-1, keepdims=True)
            actions[b] = sample_actions(mixed, rngs[b])
        res = envs.step(actions)
        for b in np.flatnonzero(res.stepped).tolist():
            record["actions"][b].append(actions[b].copy())
            record["reward"][b].append(res.reward[b])
            record["terminated"][b].append(float(res.terminated[b]))
            record["obs"][b].append(res.obs[b])
            record["state"][b].append(res.state[b])
            record["avail"][b].append(res.avail_actions[b])
            returns[b] += res.reward[b]
            lengths[b] += 1
            won[b] |= bool(res.battle_won[b])
        active &= ~(res.terminated | res.truncated)
        obs, state, avail = res.obs, res.state, res.avail_actions
        last = F.one_hot(torch.from_numpy(actions.astype(np.int64)), n_act).float()
    if buffer is not None:
        for b in range(b_size):
            buffer.add({k: np.stack(v[b]) for k, v in record.items()}, marl=b == marl_row)
    return DiscreteEpisodeStats(returns=returns, lengths=lengths, won=won)
