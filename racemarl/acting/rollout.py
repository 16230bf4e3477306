"""Lockstep rollouts: T environments, each driven by one team's heads, one batched forward pass per step.

`run_episodes` plays greedy evaluation episodes (one random stream for all envs); training generations are
played slot by slot with one stream per slot (`EnvRunner`, `play_slots`), so that they can be split
over rollout workers (`racemarl.acting.workers`) without changing a single number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from racemarl.data.buffer import ReplayBuffer
from racemarl.envs.base import EnvSpec, MultiAgentEnv
from racemarl.nets.policy import ActionLayout, AgentEncoders, pad_obs


@dataclass
class EpisodeStats:
    returns: np.ndarray  # [T] undiscounted return of each env's episode
    lengths: np.ndarray  # [T]
    episodes: list[dict[str, np.ndarray]] | None = (
        None  # with `record`: each env's obs, state, action, reward, terminated
    )


Policy = Callable[[torch.Tensor, np.ndarray], torch.Tensor]


def run_episodes(
    envs: Sequence[MultiAgentEnv], policy: Policy, rng: np.random.Generator, record: bool = False
) -> EpisodeStats:
    """Evaluation: play one greedy episode in every env, all envs stepping in lockstep; `rng` draws the
    env seeds.

    `policy(obs [k, N, max_obs], env_indices [k]) -> padded actions [k, N, A]` acts for the k envs
    still running, in one batched call (each env is driven by its own team). Nothing is stored in a
    buffer; `record` keeps each episode's steps (padded obs, state, flat joint action, reward, terminated).
    """
    spec = envs[0].spec
    n_env, max_obs = len(envs), max(spec.obs_dims)
    low = [np.asarray(lo, np.float32) for lo in spec.act_low]
    high = [np.asarray(hi, np.float32) for hi in spec.act_high]
    obs = np.zeros((n_env, spec.n_agents, max_obs), np.float32)
    first_state = []
    for t, env in enumerate(envs):
        o, s0, _ = env.reset(seed=int(rng.integers(2**31)))
        pad_obs(o, max_obs, obs[t])
        first_state.append(np.array(s0, np.float32))
    returns = np.zeros(n_env)
    lengths = np.zeros(n_env, np.int64)
    active = np.ones(n_env, bool)
    steps: list[dict[str, list]] = [
        {k: [] for k in ("obs", "state", "action", "reward", "terminated")} for _ in range(n_env if record else 0)
    ]
    state = first_state
    while active.any():
        idx = np.flatnonzero(active)
        actions = policy(torch.from_numpy(obs[idx]), idx).numpy()
        for j, t in enumerate(idx.tolist()):
            act = [np.clip(actions[j, i, :a], low[i], high[i]) for i, a in enumerate(spec.act_dims)]
            res = envs[t].step(act)
            if record:
                rec = steps[t]
                rec["obs"].append(obs[t].copy())
                rec["state"].append(state[t])
                rec["action"].append(np.concatenate(act).astype(np.float32))
                rec["reward"].append(res.reward)
                rec["terminated"].append(float(res.terminated))
                state[t] = np.array(res.state, np.float32)
            returns[t] += res.reward
            lengths[t] += 1
            if res.terminated or res.truncated:
                active[t] = False
            else:
                pad_obs(res.obs, max_obs, obs[t])
    episodes = [{k: np.asarray(v, np.float32) for k, v in rec.items()} for rec in steps] if record else None
    return EpisodeStats(returns=returns, lengths=lengths, episodes=episodes)


def critic_bias(episodes: list[dict[str, np.ndarray]], q_values: list[np.ndarray], gamma: float) -> dict[str, float]:
    """How a critic's value of the played actions compares with what followed: per step t, Q(s_t, a_t) and the
    discounted Monte Carlo return G_t = sum_k gamma^k r_{t+k} of the rest of the episode.

    Only steps whose G_t is (almost) the full return count: every step of an episode that terminated, and in
    an episode cut by the time limit the steps with at least H = log(0.01) / log(gamma) steps left (the
    unseen tail then weighs under 1% of the return). Returns {"q": mean Q, "mc": mean G, "bias": mean Q - G}
    over those steps (NaN if there are none)."""
    horizon = int(np.ceil(np.log(0.01) / np.log(gamma))) if 0 < gamma < 1 else 0
    qs, gs = [], []
    for ep, q in zip(episodes, q_values):
        r = ep["reward"].astype(np.float64)
        g = np.zeros_like(r)
        acc = 0.0
        for t in range(len(r) - 1, -1, -1):
            acc = r[t] + gamma * acc
            g[t] = acc
        n = len(r) if len(r) and ep["terminated"][-1] > 0 else max(len(r) - horizon, 0)
        qs.append(np.asarray(q[:n], np.float64))
        gs.append(g[:n])
    q_all, g_all = np.concatenate(qs) if qs else np.array([]), np.concatenate(gs) if gs else np.array([])
    if not len(q_all):
        return {"q": float("nan"), "mc": float("nan"), "bias": float("nan")}
    return {"q": float(q_all.mean()), "mc": float(g_all.mean()), "bias": float((q_all - g_all).mean())}


# ---------------------------------------------------------------- training generations, slot by slot
#
# A generation's training episodes are numbered by slot t = 0..T-1 (the MARL team first, then each
# population team's episodes). Each slot has its own random stream, seeded by (seed, generation, slot),
# and the policy is always evaluated on a batch of all T slots, with every slot at its own row. So what
# an episode does depends only on its slot's orders, never on which other slots run beside it, and the
# slots can be split over any number of workers with bit-identical results.


def slot_stream(seed: int, generation: int, slot: int) -> tuple[int, ...]:
    """Entropy of the random stream of one training episode: its env seed, exploration noise and random actions."""
    return (seed, 0, generation, slot)


@dataclass
class GenerationPlan:
    """One generation's orders for a set of slots (row r drives slot `slots[r]`)."""

    slots: tuple[int, ...]
    heads: torch.Tensor | np.ndarray  # [k, N, A, d+1] the team that plays each slot
    encoders: dict  # the shared encoders' state_dict (unused when `team_encoders` is given)
    team_encoders: dict | None  # unshared-encoder ablation: each slot's own encoder parameters {name: [k, N, ...]}
    noise_std: np.ndarray  # [k] Gaussian exploration noise, in units of the action half-range
    random_actions: np.ndarray  # [k] bool: uniformly random actions (warm-up)
    streams: list[tuple[int, ...]]  # [k] entropy of each slot's random stream
    step_limit: np.ndarray | None = None  # [k] int: 0 = the slot sits this generation out (warm-up), n > 0 = its
    # episode is cut after n steps (fitness by a short rollout), < 0 = no limit; None = no limit for any slot

    def part(self, slots: tuple[int, ...]) -> GenerationPlan:
        """The orders of some of the slots, as numpy arrays (cheap to pickle, no shared memory)."""
        rows = [self.slots.index(s) for s in slots]

        def take(x):
            return np.ascontiguousarray(np.asarray(x)[rows])

        def arrays(d):
            return {k: np.array(v, copy=True) for k, v in d.items()}

        return GenerationPlan(
            slots=tuple(slots),
            heads=take(self.heads),
            encoders=arrays(self.encoders),
            team_encoders=None if self.team_encoders is None else {k: take(v) for k, v in self.team_encoders.items()},
            noise_std=take(self.noise_std),
            random_actions=take(self.random_actions),
            streams=[self.streams[r] for r in rows],
            step_limit=None if self.step_limit is None else take(self.step_limit),
        )

    def limit(self, r: int) -> int:
        """Row r's step limit (-1 = none)."""
        return -1 if self.step_limit is None else int(self.step_limit[r])


@dataclass
class SlotResult:
    """One slot's episode: its transitions in time order (numpy float32, leading dim = steps), return, length.
    `cut`: the episode was stopped by the plan's step limit (neither terminated nor truncated by the task);
    its last transition's next_obs / next_state is where it stopped. A slot that sat out has length 0."""

    slot: int
    transitions: dict[str, np.ndarray]
    episode_return: float
    length: int
    cut: bool = False


class SlotActor(torch.nn.Module):
    """The acting part of every team (encoders + linear heads) for the T slots of a generation.

    It always computes actions for all T slots at once, each at its own row: slots that are not played
    here, or whose episode has ended, are computed too (on stale or zero inputs) and ignored. Matrix
    kernels may round differently for different batch sizes; with one fixed shape the actions of a
    slot do not depend on which slots are played beside it.
    """

    # The encoder layers `forward` evaluates itself (functionally, without module calls: a step's batch is tiny
    # and per-call overhead matters); any other encoder structure is run through the module.
    LEAN_PARAMS = frozenset(
        {"l1.weight", "l1.bias", "n1.weight", "n1.bias", "l2.weight", "l2.bias", "n2.weight", "n2.bias"}
    )

    def __init__(self, spec: EnvSpec, encoder_hidden: int, embed_dim: int, n_slots: int):
        super().__init__()
        self.n_slots = n_slots
        self.encoders = AgentEncoders(spec.obs_dims, encoder_hidden, embed_dim)
        self.layout = ActionLayout(spec)
        n, a = spec.n_agents, self.layout.max_act
        self.weight = torch.zeros(n, n_slots, a, embed_dim)  # heads, agent-major
        self.bias = torch.zeros(n, n_slots, a)
        self.lean = {name for name, _ in self.encoders.named_parameters()} == self.LEAN_PARAMS
        self.params: dict[str, torch.Tensor] = {}  # the shared encoders' parameters {name: [N, ...]}
        self.team_params: dict[str, torch.Tensor] | None = None  # unshared ablation: {name: [T * N, ...]}
        # identity affines: F.layer_norm is faster on the CPU with one than without
        self.ones_h, self.zeros_h = torch.ones(encoder_hidden), torch.zeros(encoder_hidden)
        self.ones_d, self.zeros_d = torch.ones(embed_dim), torch.zeros(embed_dim)

    @torch.no_grad()
    def load(self, plan: GenerationPlan) -> None:
        rows = torch.as_tensor(plan.slots, dtype=torch.long)
        heads = torch.as_tensor(plan.heads, dtype=torch.float32).transpose(0, 1)  # [N, k, A, d+1]
        self.weight.zero_()
        self.bias.zero_()
        self.weight[:, rows] = heads[..., :-1]
        self.bias[:, rows] = heads[..., -1]
        if plan.team_encoders is None:
            self.encoders.load_state_dict({k: torch.as_tensor(v) for k, v in plan.encoders.items()})
            self.params = {name: p.detach().clone() for name, p in self.encoders.named_parameters()}
            self.team_params = None
            return
        n = self.layout.n_agents
        params = {}
        for name, v in plan.team_encoders.items():
            v = torch.as_tensor(v, dtype=torch.float32)
            full = v.new_zeros(self.n_slots, *v.shape[1:])
            full[rows] = v
            params[name] = full.reshape(self.n_slots * n, *v.shape[2:])
        self.team_params = params

    def encode(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Grouped encoders with parameters `p` `{name: [G, ...]}` on inputs `[G, B, max_obs]` -> `[G, B, d]`."""
        if not self.lean:
            return torch.func.functional_call(self.encoders, p, (x,))
        n1, n2 = self.encoders.n1, self.encoders.n2
        h = torch.baddbmm(p["l1.bias"], x, p["l1.weight"])
        h = F.layer_norm(h, h.shape[-1:], self.ones_h, self.zeros_h, eps=n1.eps)
        h = torch.tanh(torch.addcmul(p["n1.bias"], h, p["n1.weight"]))
        z = torch.baddbmm(p["l2.bias"], h, p["l2.weight"])
        z = F.layer_norm(z, z.shape[-1:], self.ones_d, self.zeros_d, eps=n2.eps)
        return torch.tanh(torch.addcmul(p["n2.bias"], z, p["n2.weight"]))

    @torch.inference_mode()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs `[T, N, max_obs]` -> padded actions `[T, N, A]`."""
        t, n, _ = obs.shape
        if self.team_params is None:
            z = self.encode(obs.transpose(0, 1), self.params)  # [N, T, d]
        else:
            z = self.encode(obs.reshape(t * n, 1, -1), self.team_params).view(t, n, -1).transpose(0, 1)
        pre = torch.matmul(self.weight, z[..., None]).squeeze(-1) + self.bias  # [N, T, A]
        return torch.addcmul(self.layout.offset, torch.tanh(pre), self.layout.scale).transpose(0, 1)


@dataclass
class RunnerSetup:
    """What a rollout worker needs to build its environments and actors (picklable)."""

    task: str
    env_kwargs: dict
    encoder_hidden: int
    embed_dim: int
    n_slots: int  # slots of a whole generation (the width of every policy batch)
    slots: tuple[int, ...]  # the slots this worker plays


class EnvRunner:
    """The environments of a fixed set of slots, kept for the whole run, and their actor."""

    def __init__(self, setup: RunnerSetup):
        from racemarl.envs import make_env

        self.setup = setup
        self.envs = [make_env(setup.task, **setup.env_kwargs) for _ in setup.slots]
        self.actor = SlotActor(self.envs[0].spec, setup.encoder_hidden, setup.embed_dim, setup.n_slots)

    def run(self, plan: GenerationPlan) -> list[SlotResult]:
        if tuple(plan.slots) != tuple(self.setup.slots):
            raise ValueError(f"orders for slots {plan.slots} sent to the runner of slots {self.setup.slots}")
        self.actor.load(plan)
        return play_slots(self.envs, self.actor, plan)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def play_slots(envs: list[MultiAgentEnv], actor: SlotActor, plan: GenerationPlan) -> list[SlotResult]:
    """One episode in each env (env r plays slot `plan.slots[r]`), all stepping in lockstep, one policy call
    per step. Every random number of slot t comes from its own stream `plan.streams[r]`."""
    spec = envs[0].spec
    n_agents, max_obs = spec.n_agents, max(spec.obs_dims)
    low = np.concatenate([np.asarray(x, np.float32).ravel() for x in spec.act_low])
    high = np.concatenate([np.asarray(x, np.float32).ravel() for x in spec.act_high])
    half = (high - low) / 2
    ends = np.cumsum(spec.act_dims)
    agent_cols = [slice(int(e) - a, int(e)) for e, a in zip(ends, spec.act_dims)]
    flat_index = actor.layout.flat_index.numpy()
    rngs = [np.random.default_rng(list(s)) for s in plan.streams]
    k = len(envs)

    obs = np.zeros((actor.n_slots, n_agents, max_obs), np.float32)
    obs_t = torch.from_numpy(obs)  # the actor's input, shares memory with obs
    state: list[np.ndarray] = []
    limits = np.array([plan.limit(r) for r in range(k)], np.int64)
    active = limits != 0  # a slot with limit 0 sits out: no reset, no step, no transition
    for r, env in enumerate(envs):
        if not active[r]:
            state.append(np.zeros(spec.state_dim, np.float32))
            continue
        o, s, _ = env.reset(seed=int(rngs[r].integers(2**31)))
        pad_obs(o, max_obs, obs[plan.slots[r]])
        state.append(np.array(s, np.float32))
    records: list[dict[str, list]] = [{f: [] for f in ReplayBuffer.FIELDS} for _ in range(k)]
    returns = np.zeros(k)
    lengths = np.zeros(k, np.int64)
    cut = np.zeros(k, bool)

    while active.any():
        joint = actor(obs_t).numpy().reshape(actor.n_slots, -1)[:, flat_index]  # [T, U] joint actions
        for r in np.flatnonzero(active).tolist():
            t, rng = plan.slots[r], rngs[r]
            if plan.random_actions[r]:
                a = rng.uniform(low, high).astype(np.float32)
            else:
                a = joint[t]
                if plan.noise_std[r] > 0:
                    a = a + rng.normal(size=a.shape[0]).astype(np.float32) * np.float32(plan.noise_std[r]) * half
                a = np.minimum(np.maximum(a, low), high)
            res = envs[r].step([a[c] for c in agent_cols])
            next_obs = pad_obs(res.obs, max_obs)
            next_state = np.array(res.state, np.float32)  # a copy: adapters may reuse their arrays
            rec = records[r]
            rec["obs"].append(obs[t].copy())
            rec["state"].append(state[r])
            rec["action"].append(a)
            rec["reward"].append(res.reward)
            rec["next_obs"].append(next_obs)
            rec["next_state"].append(next_state)
            rec["terminated"].append(float(res.terminated))
            returns[r] += res.reward
            lengths[r] += 1
            if res.terminated or res.truncated:
                active[r] = False
            elif lengths[r] == limits[r]:
                active[r], cut[r] = False, True
            else:
                obs[t] = next_obs
                state[r] = next_state
    return [
        SlotResult(
            slot=int(plan.slots[r]),
            transitions={f: _stack(v, f, spec, max_obs) for f, v in records[r].items()},
            episode_return=float(returns[r]),
            length=int(lengths[r]),
            cut=bool(cut[r]),
        )
        for r in range(k)
    ]


def _stack(values: list, name: str, spec: EnvSpec, max_obs: int) -> np.ndarray:
    """One field of a slot's transitions as a float32 array (the right empty shape for a slot that sat out)."""
    if values:
        return np.asarray(values, np.float32)
    width = {
        "obs": (spec.n_agents, max_obs),
        "next_obs": (spec.n_agents, max_obs),
        "state": (spec.state_dim,),
        "next_state": (spec.state_dim,),
        "action": (sum(spec.act_dims),),
    }.get(name, ())
    return np.zeros((0, *width), np.float32)


def transitions_in_order(results: list[SlotResult]) -> dict[str, np.ndarray]:
    """All transitions of a generation in the replay buffer's order: slot by slot, each episode in time order."""
    ordered = sorted(results, key=lambda r: r.slot)
    return {f: np.concatenate([r.transitions[f] for r in ordered]) for f in ReplayBuffer.FIELDS}
