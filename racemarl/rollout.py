"""Lockstep rollouts: T environments, each driven by one team's heads, one batched forward pass per step."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from racemarl.buffer import ReplayBuffer
from racemarl.envs.base import MultiAgentEnv
from racemarl.nets.policy import pad_obs


@dataclass
class EpisodeStats:
    returns: np.ndarray  # [T] undiscounted return of each env's episode
    lengths: np.ndarray  # [T]


Policy = Callable[[torch.Tensor, np.ndarray], torch.Tensor]


def run_episodes(
    envs: list[MultiAgentEnv],
    policy: Policy,
    rng: np.random.Generator,
    *,
    noise_std: np.ndarray | None = None,
    random_actions: np.ndarray | None = None,
    buffer: ReplayBuffer | None = None,
) -> EpisodeStats:
    """Play one episode in every env, all envs stepping in lockstep.

    `policy(obs [k, N, max_obs], env_indices [k]) -> padded actions [k, N, A]` acts for the k envs
    still running, in one batched call (each env is driven by its own team).
    `noise_std[t]` adds Gaussian exploration noise (in units of the action half-range) and
    `random_actions[t]` replaces env t's actions by uniform ones. Every transition goes to `buffer`.
    """
    spec = envs[0].spec
    n_env, n_agents = len(envs), spec.n_agents
    max_obs = max(spec.obs_dims)
    low = [np.asarray(lo, np.float32) for lo in spec.act_low]
    high = [np.asarray(hi, np.float32) for hi in spec.act_high]
    noise_std = np.zeros(n_env) if noise_std is None else noise_std
    random_actions = np.zeros(n_env, bool) if random_actions is None else random_actions

    obs = np.zeros((n_env, n_agents, max_obs), np.float32)
    state = np.zeros((n_env, spec.state_dim), np.float32)
    for t, env in enumerate(envs):
        o, s, _ = env.reset(seed=int(rng.integers(2**31)))
        pad_obs(o, max_obs, obs[t])
        state[t] = s
    returns = np.zeros(n_env)
    lengths = np.zeros(n_env, np.int64)
    active = np.ones(n_env, bool)

    while active.any():
        idx = np.flatnonzero(active)
        actions = policy(torch.from_numpy(obs[idx]), idx).numpy()
        rows: dict[str, list] = {k: [] for k in ReplayBuffer.FIELDS}
        for j, t in enumerate(idx):
            per_agent = []
            for i in range(n_agents):
                a_dim = spec.act_dims[i]
                if random_actions[t]:
                    a = rng.uniform(low[i], high[i]).astype(np.float32)
                else:
                    a = actions[j, i, :a_dim]
                    if noise_std[t] > 0:
                        half = (high[i] - low[i]) / 2
                        a = a + rng.normal(size=a_dim).astype(np.float32) * noise_std[t] * half
                    a = np.clip(a, low[i], high[i])
                per_agent.append(a)
            res = envs[t].step(per_agent)
            next_obs = pad_obs(res.obs, max_obs)
            if buffer is not None:
                rows["obs"].append(obs[t].copy())
                rows["state"].append(state[t].copy())
                rows["action"].append(np.concatenate(per_agent))
                rows["reward"].append(res.reward)
                rows["next_obs"].append(next_obs)
                rows["next_state"].append(res.state)
                rows["terminated"].append(float(res.terminated))
            returns[t] += res.reward
            lengths[t] += 1
            if res.terminated or res.truncated:
                active[t] = False
            else:
                obs[t] = next_obs
                state[t] = res.state
        if buffer is not None:
            buffer.add(**{k: np.asarray(v, np.float32) for k, v in rows.items()})
    return EpisodeStats(returns=returns, lengths=lengths)
