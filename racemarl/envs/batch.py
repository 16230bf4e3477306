"""B copies of a discrete task stepped together, one row per team, for lockstep rollouts.

SMAX maps use `SmaxBatch` (one `jax.vmap`-ed call per step for all rows, several times faster than
stepping `SmaxEnv`s one by one); any other discrete task (e.g. `smac/*`) is a list of its
environments behind the same interface (`ListBatch`). Both return `SmaxBatchStep` records.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from racemarl.envs import MissingDependencyError, make_env, parse_task
from racemarl.envs.base import EnvSpec, MultiAgentEnv
from racemarl.envs.smax import SmaxBatchStep


class EnvBatch(Protocol):
    spec: EnvSpec
    batch_size: int
    active: np.ndarray  # [batch_size] bool: the rows running an episode

    def reset(self, seeds=None, indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def step(self, actions) -> SmaxBatchStep: ...

    def close(self) -> None: ...


class ListBatch:
    """Discrete `MultiAgentEnv`s with equal observation sizes behind the `SmaxBatch` interface."""

    def __init__(self, envs: list[MultiAgentEnv]):
        self.envs = envs
        self.spec = envs[0].spec
        if not self.spec.discrete:
            raise ValueError(f"{self.spec.task}: ListBatch is for discrete tasks")
        self.batch_size = len(envs)
        n, o, a = self.spec.n_agents, max(self.spec.obs_dims), max(self.spec.act_dims)
        self._obs = np.zeros((self.batch_size, n, o), np.float32)
        self._state = np.zeros((self.batch_size, self.spec.state_dim), np.float32)
        self._avail = np.zeros((self.batch_size, n, a), np.float32)
        self._t = np.zeros(self.batch_size, np.int32)
        self.active = np.zeros(self.batch_size, bool)
        self.reports_wins = False  # whether the envs tell battles won (info["battle_won"], SMAC); PettingZoo's do not

    def _store(self, b: int, obs, state, avail) -> None:
        for i, o in enumerate(obs):
            self._obs[b, i, : len(o)] = o
        self._state[b] = state
        for i, m in enumerate(avail):
            self._avail[b, i, : len(m)] = m

    def reset(self, seeds=None, indices=None):
        idx = range(self.batch_size) if indices is None else [int(i) for i in indices]
        seeds = [None] * len(idx) if seeds is None else list(seeds)
        for b, s in zip(idx, seeds):
            obs, state, avail = self.envs[b].reset(seed=s)
            self._store(b, obs, state, avail)
            self._t[b] = 0
            self.active[b] = True
        return self._obs.copy(), self._state.copy(), self._avail.copy()

    def step(self, actions) -> SmaxBatchStep:
        acts = np.asarray(actions)
        b_size = self.batch_size
        reward = np.zeros(b_size, np.float32)
        terminated, truncated, won = (np.zeros(b_size, bool) for _ in range(3))
        running = self.active.copy()
        for b in np.flatnonzero(running).tolist():
            res = self.envs[b].step([np.array([a]) for a in acts[b]])
            self._store(b, res.obs, res.state, res.avail_actions)
            reward[b] = res.reward
            terminated[b], truncated[b] = res.terminated, res.truncated
            if "battle_won" in res.info:
                won[b] = bool(res.info["battle_won"])
                self.reports_wins = True
            self._t[b] += 1
        self.active &= ~(terminated | truncated)
        return SmaxBatchStep(
            obs=self._obs.copy(),
            state=self._state.copy(),
            avail_actions=self._avail.copy(),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            battle_won=won,
            episode_step=self._t.copy(),
            stepped=running,
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_env_batch(task: str, batch_size: int, max_episode_steps: int | None = None, **make_kwargs) -> EnvBatch:
    """`batch_size` copies of a discrete task (SMAX: one vmapped batch; others: a list of envs built with
    `make_env(task, max_episode_steps=..., **make_kwargs)`)."""
    family, scenario, _ = parse_task(task)
    if family == "smax":
        make_env(
            task, max_episode_steps=max_episode_steps, **make_kwargs
        ).close()  # dependency check with the usual message
        try:
            from racemarl.envs.smax import SmaxBatch
        except ImportError as e:  # pragma: no cover - make_env above raised first
            raise MissingDependencyError(f"SMAX tasks need jaxmarl ({e}): pip install 'racemarl[smax]'") from e
        return SmaxBatch(scenario, batch_size, max_episode_steps=max_episode_steps)
    return ListBatch([make_env(task, max_episode_steps=max_episode_steps, **make_kwargs) for _ in range(batch_size)])
