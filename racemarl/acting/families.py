"""The two task families, one object each: everything the training loop does differently on continuous tasks
(MaMuJoCo, PettingZoo/MPE: rollout workers, a transition buffer, Gaussian exploration) and on discrete tasks
(SMAX, SMAC: one batch of envs stepped in lockstep, a whole-episode buffer, epsilon-greedy exploration).

`Trainer` holds one (`make_family`) and calls it without asking which one it has. A family's methods that act
read the run (`run`: the trainer) for its config, progress, acting copy, population and buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from racemarl.acting.rollout import (
    GenerationPlan,
    SlotResult,
    critic_bias,
    run_episodes,
    slot_stream,
    transitions_in_order,
)
from racemarl.acting.rollout_discrete import run_discrete_episodes
from racemarl.acting.workers import env_kwargs, make_workers
from racemarl.algorithms.facmac import FACMAC, FacmacContinuous
from racemarl.algorithms.matd3 import MATD3
from racemarl.algorithms.race import RaceLearner
from racemarl.algorithms.race_discrete import RaceDiscreteLearner
from racemarl.config import Config
from racemarl.data.buffer import ReplayBuffer
from racemarl.data.episode_buffer import EpisodeBuffer
from racemarl.envs import is_discrete_task, make_env
from racemarl.envs.batch import make_env_batch


@dataclass
class Played:
    """What one generation's episodes gave: every slot's return (and battle_won on discrete tasks), the env steps,
    and on continuous tasks each slot's result (for the fitness of short rollouts)."""

    returns: np.ndarray
    won: np.ndarray | None
    steps: int
    results: list[SlotResult] | None = None


def learner_class(cfg: Config, discrete: bool) -> type:
    if discrete:
        return RaceDiscreteLearner if cfg.uses_representation_losses else FACMAC
    if cfg.algo == "facmac":
        return FacmacContinuous
    return RaceLearner if cfg.uses_representation_losses else MATD3


def slot_teams(cfg: Config, actor, population: torch.Tensor | None, pop_encoders: dict | None):
    """The heads of a generation's slots `[S, N, A, d+1]`: the MARL team's first, then each population team's
    `race.episodes_per_team` times; with the slots' own encoders `{name: [S, ...]}` when teams have their own
    (the unshared ablation), else None."""
    repeat = cfg.race.episodes_per_team
    heads = [actor.marl_heads.detach()[None]] if cfg.uses_marl else []
    if cfg.uses_population:
        assert population is not None  # a population run always has one
        heads.append(population.repeat_interleave(repeat, 0))
    encoders = None
    if pop_encoders is not None:
        parts = [actor.encoder_params()] if cfg.uses_marl else []
        parts.append({k: v.repeat_interleave(repeat, 0) for k, v in pop_encoders.items()})
        encoders = {k: torch.cat([e[k] for e in parts]) for k in parts[0]}
    return torch.cat(heads), encoders


def _check_finite_transitions(rows: dict[str, np.ndarray], task: str | None) -> None:
    """NaN or inf from any environment (a simulator blowing up, not only a user's env) stops the run before it
    reaches the replay buffer, naming what held it (one vectorised check per generation)."""
    from racemarl.envs.base import EnvFailure

    for key in ("reward", "obs", "state", "next_obs", "next_state"):
        values = rows.get(key)
        if values is not None and values.size and not np.isfinite(values).all():
            raise EnvFailure(
                f"{task or 'the environment'}: a non-finite {key.replace('_', ' ')} (NaN or inf) in this "
                "generation's episodes; rewards, observations and states must be finite numbers"
            )


def make_family(cfg: Config, n_slots: int) -> ContinuousFamily | DiscreteFamily:
    """The family of `cfg.env.task`; ValueError (one line) for a config its family does not support."""
    cls = DiscreteFamily if is_discrete_task(cfg.env.task, **env_kwargs(cfg)) else ContinuousFamily
    problem = cls.config_problem(cfg)
    if problem:
        raise ValueError(problem)
    return cls(cfg, n_slots)


class ContinuousFamily:
    """Continuous tasks: the training episodes are played by the rollout workers (`acting.workers`, started by
    the first generation), one episode per slot, and stored as transitions; evaluation plays a list of envs."""

    discrete = False
    has_warmup = True  # the MARL team alone plays (random actions) until `learner.start_steps`
    short_rollouts = True  # the population may be scored by short rollouts + the PeVFA (`race.fitness_mc_prob`)

    def __init__(self, cfg: Config, n_slots: int):
        self.cfg, self.n_slots = cfg, n_slots
        self.workers = None
        self.eval_envs = [make_env(cfg.env.task, **env_kwargs(cfg)) for _ in range(cfg.eval_episodes)]
        self.spec = self.eval_envs[0].spec
        self.workers = make_workers(cfg, n_slots)  # RolloutError when they cannot start

    @staticmethod
    def config_problem(cfg: Config) -> str | None:
        if cfg.discrete.marl_data != "shared":
            return (
                f"discrete.marl_data={cfg.discrete.marl_data} is for discrete tasks only ({cfg.env.task} is continuous)"
            )
        return None

    def learner_class(self) -> type:
        return learner_class(self.cfg, False)

    def row_mask(self, actor) -> torch.Tensor:
        return actor.layout.row_mask

    def embed_dim(self) -> int:
        return self.cfg.net.embed_dim

    def make_buffer(self, learner, device: torch.device) -> ReplayBuffer:
        cfg, spec = self.cfg, self.spec
        return ReplayBuffer(
            cfg.learner.buffer_size,
            spec.n_agents,
            learner.max_obs,
            spec.state_dim,
            learner.layout.joint_dim,
            seed=cfg.seed,
            device=device,
        )

    # ---------------------------------------------------------------- playing and learning
    def play(self, run) -> Played:
        plan = self.generation_plan(run)
        assert self.workers is not None  # built with the family (closed only at the end of the run)
        results = self.workers.play(plan)
        self.store(run.buffer, results, self.cfg.env.task)
        return Played(np.array([r.episode_return for r in results]), None, sum(r.length for r in results), results)

    def generation_plan(self, run) -> GenerationPlan:
        """This generation's orders for every slot: its team, exploration and random stream."""
        cfg, p, n = self.cfg, run.progress, self.n_slots
        heads, team_encoders = slot_teams(cfg, run.actor, run.population, run.pop_encoders)
        first = int(cfg.uses_marl)
        noise, random_act = np.zeros(n, np.float64), np.zeros(n, bool)
        if cfg.uses_marl:
            noise[0], random_act[0] = cfg.learner.expl_noise, p.env_steps < cfg.learner.start_steps
        limit = np.full(n, -1, np.int64)
        if run.in_warmup():
            limit[first:] = 0  # population slots sit out
        elif run.short_fitness():
            limit[first:] = cfg.race.fitness_steps
        return GenerationPlan(
            slots=tuple(range(n)),
            heads=heads,
            encoders=run.actor.encoders.state_dict() if team_encoders is None else {},
            team_encoders=team_encoders,
            noise_std=noise,
            random_actions=random_act,
            streams=[slot_stream(cfg.seed, p.generation, t) for t in range(n)],
            step_limit=limit,
        )

    @staticmethod
    def store(buffer: ReplayBuffer, results: list[SlotResult], task: str | None = None) -> None:
        """A generation's transitions into the replay buffer, in the same order whoever played them."""
        rows = transitions_in_order(results)
        _check_finite_transitions(rows, task)
        n, step = len(rows["reward"]), buffer.capacity
        for start in range(0, n, step):
            buffer.add(**{k: v[start : start + step] for k, v in rows.items()})

    def bootstrapped_fitness(self, run, results: list[SlotResult]) -> np.ndarray:
        """Fitness of short rollouts: sum_t gamma^t r_t, plus gamma^H min Q_theta(s_H, pi_j(s_H), W_j) where the
        episode was cut at H steps (an episode that terminated earlier has no bootstrap)."""
        cfg = self.cfg
        gamma = cfg.learner.gamma
        scores = np.array([float(np.sum(r.transitions["reward"] * gamma ** np.arange(r.length))) for r in results])
        cut = [i for i, r in enumerate(results) if r.cut]
        if cut:
            repeat = cfg.race.episodes_per_team
            teams = torch.tensor([i // repeat for i in cut])
            obs = torch.from_numpy(np.stack([results[i].transitions["next_obs"][-1] for i in cut]))
            state = torch.from_numpy(np.stack([results[i].transitions["next_state"][-1] for i in cut]))
            enc = None if run.pop_encoders is None else {k: v[teams] for k, v in run.pop_encoders.items()}
            values = run.actor.pevfa_value(obs, state, run.population[teams], enc).numpy()
            for j, i in enumerate(cut):
                scores[i] += gamma ** results[i].length * float(values[j])
        return scores.reshape(cfg.race.pop_size, -1).mean(1)

    def new_update_credit(self, progress, buffer, new_steps: int) -> float | None:
        """`updates_per_step` per env step after `start_steps`; None while no update is due yet."""
        cfg = self.cfg
        if progress.env_steps < cfg.learner.start_steps or len(buffer) < cfg.learner.batch_size:
            return None
        return new_steps * cfg.learner.updates_per_step

    def batch_size(self) -> int:
        return self.cfg.learner.batch_size

    # ---------------------------------------------------------------- evaluation
    def champion_encoders(self, actor) -> dict | None:
        """The encoders a champion scored this generation played with (`race.champion_eval=scored`)."""
        return actor.encoder_params()

    def team_policy(self, actor, heads: torch.Tensor, encoders: dict | None = None):
        """The batched policy of a stack of teams for `run_episodes` (env t is driven by team t)."""

        def policy(obs: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            team_enc = None if encoders is None else {k: v[idx] for k, v in encoders.items()}
            return actor.act(obs, heads[idx], team_enc)

        return policy

    def eval_episodes(self, run, heads: torch.Tensor, encoders: dict | None = None, record: bool = False):
        rng = np.random.default_rng(
            [self.cfg.seed, 2, run.progress.env_steps]
        )  # same episodes at a step, however reached
        n = len(self.eval_envs)
        tiled_enc = None if encoders is None else {k: v.expand(n, *v.shape[1:]) for k, v in encoders.items()}
        return run_episodes(
            self.eval_envs,
            self.team_policy(run.actor, heads[None].expand(n, *heads.shape), tiled_enc),
            rng,
            record=record,
        )

    def evaluate_team(self, run, heads: torch.Tensor, encoders: dict | None = None) -> tuple[np.ndarray, None]:
        return self.eval_episodes(run, heads, encoders).returns, None

    def evaluate_marl(self, run, row: dict) -> tuple[np.ndarray, None]:
        """The MARL team's greedy episodes and its critic's bias on them (`q_bias_marl` = mean Q_1(s_t, pi(s_t))
        - discounted Monte Carlo return, see `rollout.critic_bias`)."""
        actor = run.actor
        stats = self.eval_episodes(run, actor.marl_heads.detach(), record=True)
        q_values = []
        with torch.no_grad():
            for ep in stats.episodes:
                obs = torch.from_numpy(ep["obs"]).transpose(0, 1)  # [N, T, max_obs]
                q_values.append(
                    actor.actor_values(
                        actor.critic, obs, torch.from_numpy(ep["state"]), torch.from_numpy(ep["action"])
                    ).numpy()
                )
        bias = critic_bias(stats.episodes, q_values, self.cfg.learner.gamma)
        row.update(q_marl=bias["q"], mc_return_marl=bias["mc"], q_bias_marl=bias["bias"])
        return stats.returns, None

    def close(self) -> None:
        """Stop the rollout workers and close the evaluation envs (idempotent)."""
        try:
            if self.workers is not None:
                self.workers.close()
        finally:
            for env in self.eval_envs:
                env.close()
            self.eval_envs = []


class DiscreteFamily:
    """Discrete tasks: every slot is a row of one batch of envs (SMAX: one vmapped call per step), played in the
    driver process and stored as whole episodes; evaluation plays another batch."""

    discrete = True
    has_warmup = False
    short_rollouts = False
    workers = None

    def __init__(self, cfg: Config, n_slots: int):
        self.cfg, self.n_slots = cfg, n_slots
        self.envs = make_env_batch(cfg.env.task, n_slots, **env_kwargs(cfg))
        self.eval_envs = make_env_batch(cfg.env.task, cfg.eval_episodes, **env_kwargs(cfg))
        self.spec = self.envs.spec

    def generation_plan(self, run) -> GenerationPlan:
        """Not on discrete tasks: all slots play as rows of one batch of envs, with no per-slot plan."""
        raise NotImplementedError("discrete tasks play every slot in one batch of envs")

    def bootstrapped_fitness(self, run, results: list[SlotResult]) -> np.ndarray:
        """Not on discrete tasks (`short_rollouts` is false): teams are scored by full episodes."""
        raise NotImplementedError("discrete tasks score teams by full episodes")

    @staticmethod
    def config_problem(cfg: Config) -> str | None:
        """Why this config cannot run on a discrete task, or None."""
        if cfg.algo == "matd3":
            return (
                f"{cfg.env.task} is a discrete task: MATD3 is for continuous tasks; use --algo facmac "
                "(or race, whose discrete learner is built on FACMAC)"
            )
        if cfg.rollout.backend != "inline":
            return (
                f"rollout.backend={cfg.rollout.backend}: on discrete tasks all teams already step together in "
                "one batched environment in the driver process; use the inline backend"
            )
        if cfg.algo == "merl":
            return (
                f"{cfg.env.task} is a discrete task: MERL is implemented for continuous tasks (its MATD3 "
                "version, as in the RACE paper's MA-MuJoCo figures)"
            )
        if cfg.uses_population and not cfg.race.shared_encoder:
            return "race.shared_encoder=false (each team its own encoders) is implemented for continuous tasks only"
        return None

    def learner_class(self) -> type:
        return learner_class(self.cfg, True)

    def row_mask(self, actor) -> torch.Tensor:
        return actor.row_mask

    def embed_dim(self) -> int:
        return self.cfg.discrete.rnn_hidden

    def make_buffer(self, learner, device: torch.device) -> EpisodeBuffer:
        dc, spec = self.cfg.discrete, self.spec
        return EpisodeBuffer(
            dc.buffer_episodes,
            spec.episode_limit,
            spec.n_agents,
            learner.obs_dim,
            spec.state_dim,
            learner.n_actions,
            seed=self.cfg.seed,
            device=device,
        )

    # ---------------------------------------------------------------- playing and learning
    def play(self, run) -> Played:
        """The MARL team explores with the epsilon-mixture, population teams sample from their softmax policies;
        each row's episode uses its own stream (`slot_stream`)."""
        cfg, p = self.cfg, run.progress
        heads, _ = slot_teams(cfg, run.actor, run.population, None)
        eps = np.zeros(self.n_slots)
        if cfg.uses_marl:
            eps[0] = self.epsilon(p.env_steps)
        rngs = [np.random.default_rng(slot_stream(cfg.seed, p.generation, row)) for row in range(self.n_slots)]
        marl_row = 0 if cfg.uses_marl else None
        stats = run_discrete_episodes(
            self.envs, run.actor, heads, rngs, epsilon=eps, buffer=run.buffer, marl_row=marl_row
        )
        return Played(stats.returns, self._wins(self.envs, stats.won), int(stats.lengths.sum()))

    def epsilon(self, env_steps: int) -> float:
        """The MARL team's exploration, annealed linearly over env steps."""
        dc = self.cfg.discrete
        frac = min(1.0, env_steps / dc.epsilon_anneal_steps)
        return dc.epsilon_start + frac * (dc.epsilon_finish - dc.epsilon_start)

    def new_update_credit(self, progress, buffer, new_steps: int) -> float | None:
        """`updates_per_episode` per episode (one per slot) once the buffer holds a batch of episodes."""
        dc = self.cfg.discrete
        if len(buffer) < dc.batch_episodes:
            return None
        return self.n_slots * dc.updates_per_episode

    def batch_size(self) -> int:
        return self.cfg.discrete.batch_episodes

    @staticmethod
    def _wins(envs, won: np.ndarray) -> np.ndarray | None:
        """Battles won, on tasks that have them (SMAX, SMAC); None on tasks with no notion of winning (PettingZoo)."""
        return won.astype(float) if getattr(envs, "reports_wins", True) else None

    # ---------------------------------------------------------------- evaluation
    def champion_encoders(self, actor) -> None:
        return None  # the recurrent encoders are shared; the champion is evaluated with the current ones

    def _eval_rngs(self, run) -> list[np.random.Generator]:
        n = self.eval_envs.batch_size
        return [np.random.default_rng([self.cfg.seed, 2, run.progress.env_steps, row]) for row in range(n)]

    def evaluate_team(
        self, run, heads: torch.Tensor, encoders: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Greedy returns and battle_won flags of one team, with fixed seeds per evaluation."""
        n = self.eval_envs.batch_size
        stats = run_discrete_episodes(
            self.eval_envs,
            run.actor,
            heads[None].expand(n, *heads.shape),
            self._eval_rngs(run),
            greedy=np.ones(n, bool),
        )
        return stats.returns, self._wins(self.eval_envs, stats.won)

    def evaluate_marl(self, run, row: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The MARL team's greedy episodes (as `evaluate_team`) and its mixed critic's bias
        Q_tot(s_t, u_t) - discounted return on them."""
        n, spec, learner = self.eval_envs.batch_size, self.spec, run.actor
        heads = learner.marl_heads.detach()
        episodes = EpisodeBuffer(
            n, spec.episode_limit, spec.n_agents, learner.obs_dim, spec.state_dim, learner.n_actions
        )
        stats = run_discrete_episodes(
            self.eval_envs,
            learner,
            heads[None].expand(n, *heads.shape),
            self._eval_rngs(run),
            greedy=np.ones(n, bool),
            buffer=episodes,
        )
        batch = episodes.batch(torch.arange(n))
        t = batch.reward.shape[1]
        with torch.no_grad():
            q = learner.critic(
                batch.obs[:, :t], F.one_hot(batch.actions, learner.n_actions).float(), batch.state[:, :t]
            )
        lengths = batch.mask.sum(1).long().tolist()
        eps = [
            {"reward": batch.reward[b, :n_b].numpy(), "terminated": batch.terminated[b, :n_b].numpy()}
            for b, n_b in enumerate(lengths)
        ]
        bias = critic_bias(eps, [q[b, :n_b].numpy() for b, n_b in enumerate(lengths)], self.cfg.discrete.gamma)
        row.update(q_marl=bias["q"], mc_return_marl=bias["mc"], q_bias_marl=bias["bias"])
        return stats.returns, self._wins(self.eval_envs, stats.won)

    def close(self) -> None:
        self.envs.close()
        self.eval_envs.close()
