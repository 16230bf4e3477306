"""The training loop: one generation = the teams play, the learner updates, the population evolves, the teams
are evaluated, a checkpoint is written. What differs between continuous and discrete tasks is the task family's
(`acting/families.py`); the run's checkpoints, resume and logs are `RunState`'s (`records/run_state.py`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from racemarl.acting.families import learner_class as _learner_class  # noqa: F401 - re-exported
from racemarl.acting.families import make_family
from racemarl.acting.rollout import GenerationPlan, SlotResult
from racemarl.acting.workers import RolloutError
from racemarl.algorithms.evolution import evolve, follow_sources, inject, mutate_encoders
from racemarl.config import Config, resolve_vmm_beta, save_yaml
from racemarl.device import DeviceError, resolve_device
from racemarl.nets.policy import init_heads
from racemarl.precision import resolve_precision
from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import MetricsLogger
from racemarl.records.run_state import (  # noqa: F401 - RunError, TrainingInterrupted, Progress: re-exported
    LAST_GOOD,
    LATEST,
    Interrupts,
    Progress,
    RunError,
    RunState,
    TrainingInterrupted,
)


class Trainer(RunState):
    """One run. The learner, its optimisers and the replay buffer live on `cfg.device`; everything that acts (the
    rollouts, evaluation, the fitness bootstrap) uses `self.actor`, a CPU copy of the learner refreshed after each
    generation's updates (on the CPU it is the learner itself, so a CPU run is exactly what it was before
    `--device` existed)."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._check_paths(resume)  # before any work: nothing is built or written for a bad folder; claims it
        self._resume = resume
        try:
            self._build(resume)
        except BaseException:
            self._fail_cleanup()
            raise

    def _build(self, resume: bool) -> None:
        cfg = self.cfg
        self._stop: Interrupts | None = None
        self._last_save, self._saved_key = time.monotonic(), None
        try:
            self.device = resolve_device(cfg.device)
        except DeviceError as e:
            raise RunError(str(e)) from e
        cfg.precision = resolve_precision(cfg.precision, self.device)  # type: ignore[assignment]  # fp32 or bf16  # config.yaml records what `auto` chose
        torch.set_num_threads(cfg.torch_threads)
        torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls and tanh several-fold
        ckpt.seed_everything(cfg.seed)
        # Training episodes draw from one stream per (seed, generation, slot): see `slot_stream`.
        self.evo_rng = np.random.default_rng([cfg.seed, 1])  # evolution
        self.torch_gen = torch.Generator().manual_seed(cfg.seed)  # init, target smoothing, team draws
        # Slots of a generation: the MARL team's episode, then each population team's episodes.
        self.n_slots = int(cfg.uses_marl) + (
            cfg.race.pop_size * cfg.race.episodes_per_team if cfg.uses_population else 0
        )
        self._check_memory()  # before anything large is built: a run that cannot fit is refused
        try:  # the task family: its envs, rollouts, buffer, evaluation and update schedule (`acting.families`)
            self.family = make_family(cfg, self.n_slots)
        except ValueError as e:
            raise RunError(str(e)) from None
        except RolloutError as e:
            raise RunError(str(e)) from e
        self.spec = self.family.spec
        cfg.race.vmm_beta = resolve_vmm_beta(cfg.race.vmm_beta, self.spec.discrete)  # config.yaml records the number
        self.learner = self.family.learner_class()(self.spec, cfg, self.torch_gen)
        self.actor = self.learner  # the CPU copy that acts (see the class docstring)
        if self._uses_acting_copy():
            self._to_device()
        self.row_mask = self.family.row_mask(self.actor)
        self.population = None  # [P, N, A, d+1] evolved heads
        self._report = None  # the last generation's evolution report (which slots are protected elites)
        self.pop_encoders = None  # {name: [P, N, ...]} each team's own encoders (unshared ablation only)
        self.best_heads, self.best_encoders = self.actor.marl_heads.detach().clone(), None
        if cfg.uses_population:
            n_rows, width = self.row_mask.shape
            self.population = init_heads(
                cfg.race.pop_size, n_rows, width, self.family.embed_dim(), self.row_mask, self.torch_gen
            )
            if cfg.team_encoders:
                self.pop_encoders = self.learner.fresh_encoder_params(cfg.race.pop_size)
            self.best_heads = self.population[0].clone()
        try:  # reserved whole (pages are committed as rows fill): the system may refuse a huge capacity outright
            self.buffer = self.family.make_buffer(self.learner, self.device)
        except (RuntimeError, MemoryError) as e:
            if not isinstance(e, MemoryError) and "alloc" not in str(e).lower():
                raise
            size = "discrete.buffer_episodes" if self.spec.discrete else "learner.buffer_size"
            raise RunError(
                f"the replay buffer cannot be reserved: the system refused its memory ({size} too large for this "
                f"machine); lower {size}"
            ) from None
        # discrete.marl_data=own: the MARL critic and actor term learn from a second batch, of the MARL team's episodes
        # (only RACE's buffer holds other teams' episodes)
        self.marl_own_data = cfg.uses_marl and cfg.uses_population and cfg.discrete.marl_data == "own"
        self.progress = Progress(next_eval=0)
        if resume:
            self._load(self.run_dir / "checkpoints" / LATEST)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / "config.yaml")
        # TensorBoard: drop only the points written after the checkpoint (a killed session's tail)
        self.logger = MetricsLogger(
            self.run_dir,
            self.progress.rows,
            purge_step=self.progress.env_steps + 1 if resume else None,
            tracking=cfg.logging,
        )
        self._clock_start, self._clock_base = time.perf_counter(), self.progress.wall_time

    @property
    def workers(self):
        """The rollout workers (continuous tasks; None on discrete tasks)."""
        return self.family.workers

    @property
    def eval_envs(self):
        return self.family.eval_envs

    @eval_envs.setter
    def eval_envs(self, envs) -> None:
        self.family.eval_envs = envs

    def _uses_acting_copy(self) -> bool:
        """Whether the learner trains away from the CPU (then it needs a CPU copy to act with)."""
        return self.device.type != "cpu"

    def _to_device(self) -> None:
        """Move the learner to `self.device` and keep a CPU copy of it to act with. The copy is built without
        touching the global random generators; the learner's own draws (target smoothing, team draws, Gumbel noise)
        come from a generator on the device, seeded with the run's seed."""
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            self.actor = self.family.learner_class()(self.spec, cfg, torch.Generator())
        self.actor.requires_grad_(False)
        self.actor.load_state_dict(self.learner.state_dict())
        self.learner.to(self.device)
        self.learner.generator = torch.Generator(self.device).manual_seed(cfg.seed)

    def sync_actor(self) -> None:
        """Refresh the CPU acting copy from the learner (one device-to-host copy; nothing on the CPU)."""
        if self.actor is not self.learner:
            self.actor.load_state_dict(self.learner.state_dict())

    # ------------------------------------------------------------------ one generation
    def play_generation(self) -> tuple[np.ndarray, int]:
        """Every team plays (as its task family plays them); returns the population's fitness and the env steps."""
        try:
            played = self.family.play(self)
        except RolloutError as e:
            raise RunError(str(e)) from e
        fitness = self._record_returns(played.returns, played.won)
        if self.in_warmup():
            fitness = np.array([])  # the population sat out: nothing to evolve
        elif self.short_fitness():
            assert played.results is not None  # the continuous family's, the only one with short rollouts
            fitness = self.bootstrapped_fitness(played.results[int(self.cfg.uses_marl) :])
        return fitness, played.steps

    def short_fitness(self) -> bool:
        """Whether this generation scores the population by short rollouts + the PeVFA (`race.fitness_mc_prob`,
        one draw per generation from its own stream; RACE only, never during warm-up)."""
        return not self.in_warmup() and self.draws_short_fitness(self.progress.generation)

    def draws_short_fitness(self, generation: int) -> bool:
        """The draw behind `short_fitness` for one generation (outside warm-up), also read when logging a played
        generation's fitness: short-rollout fitness has another scale than full episodes."""
        cfg = self.cfg
        if not cfg.uses_representation_losses or not self.family.short_rollouts or cfg.race.fitness_mc_prob >= 1:
            return False
        return bool(np.random.default_rng([cfg.seed, 3, generation]).random() >= cfg.race.fitness_mc_prob)

    def bootstrapped_fitness(self, results: list[SlotResult]) -> np.ndarray:
        """Fitness of short rollouts (see the continuous family's `bootstrapped_fitness`)."""
        return self.family.bootstrapped_fitness(self, results)

    def in_warmup(self) -> bool:
        """Whether this generation is warm-up: the MARL team alone plays (uniformly random actions) until it
        has collected `learner.start_steps` env steps; the population neither plays nor evolves."""
        cfg = self.cfg
        return (
            self.family.has_warmup
            and cfg.uses_marl
            and cfg.uses_population
            and not cfg.race.play_during_warmup
            and self.progress.env_steps < cfg.learner.start_steps
        )

    def generation_plan(self) -> GenerationPlan:
        """This generation's orders for every slot (continuous tasks): its team, exploration and random stream."""
        return self.family.generation_plan(self)

    def _record_returns(self, returns: np.ndarray, won: np.ndarray | None = None) -> np.ndarray:
        """Keep the training returns (the MARL team's, else the population's mean); return the fitness."""
        cfg, p = self.cfg, self.progress
        fitness = np.array([])
        first = int(cfg.uses_marl)
        if cfg.uses_population:
            fitness = returns[first:].reshape(cfg.race.pop_size, -1).mean(1)
        if cfg.uses_marl:
            p.train_returns.append(float(returns[0]))
            if won is not None:
                p.train_wins.append(float(won[0]))
        else:
            p.train_returns.append(float(fitness.mean()))
            if won is not None:
                p.train_wins.append(float(won.mean()))
        return fitness

    def n_updates_due(self, new_steps: int) -> tuple[int, int]:
        """(updates to do now, batch size): continuous tasks do `updates_per_step` updates per env step
        after `start_steps`; discrete tasks `updates_per_episode` per episode once the buffer holds a batch of episodes."""
        p, batch_size = self.progress, self.family.batch_size()
        credit = self.family.new_update_credit(p, self.buffer, new_steps)
        if credit is None:
            return 0, batch_size
        p.update_credit += credit
        n = int(p.update_credit)
        p.update_credit -= n
        return n, batch_size

    def learn(self, new_steps: int) -> None:
        """This generation's updates, back to back on the device with no host read in between. The losses are
        summed on the device (read at the next evaluation). The non-finite guard is read once, after the last
        update: if any update met a NaN or inf (it was skipped on the device, see `Learner`), the learner,
        its optimisers and targets and the learner's and the buffer's random generators are put back as they were
        before this generation's updates, that state is saved to `checkpoints/last_good.pt` and the run stops."""
        cfg = self.cfg
        if not cfg.uses_marl:
            return
        n, batch_size = self.n_updates_due(new_steps)
        self.run_updates(n, batch_size)

    def run_updates(self, n: int, batch_size: int) -> None:
        """`n` learner updates, back to back on the device with no host read in between (see `Learner`). The losses
        are summed on the device (read at the next evaluation). Between two updates a stop signal or the wall-clock
        interval writes a checkpoint that records the updates still to do (`Progress.pending_updates`).

        The non-finite guard is read once, after the last update, and before any checkpoint written between two
        updates: if an update met a NaN or inf (it was skipped on the device), the learner, its optimisers and
        targets, the learner's and the buffer's random generators and the update counters are put back as they
        were before these updates, that state is saved to `checkpoints/last_good.pt` and the run stops."""
        p = self.progress
        if n == 0:
            p.pending_updates = 0
            return
        fallback = self._learner_snapshot(n)
        population = None if self.population is None else self.population.to(self.device)
        pop_encoders = (
            None if self.pop_encoders is None else {k: v.to(self.device) for k, v in self.pop_encoders.items()}
        )
        sums, counts = p.loss_sums, p.loss_counts
        for i in range(n):
            p.pending_updates = n - i
            if self._checkpoint_due():
                self._raise_if_non_finite(fallback)  # a checkpoint holds only checked updates
            self.maybe_checkpoint()
            batch = self.buffer.sample(batch_size)
            marl_batch = self.buffer.sample(batch_size, marl_only=True) if self.marl_own_data else None
            losses = self.learner.update(batch, population, pop_encoders, marl_batch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.double()  # float64 on the device: the sums Python floats gave
                counts[k] = counts.get(k, 0) + 1
            p.updates += 1
        self._raise_if_non_finite(fallback)  # the one host read of these updates
        p.pending_updates = 0
        self.sync_actor()

    def select_champion(self, fitness: np.ndarray) -> None:
        """The generation's best team (by this generation's fitness) becomes the evaluated champion; with
        `race.champion_eval=scored` together with a copy of the encoders it played with (saved in checkpoints,
        so `racemarl eval --team best` replays it as it was scored)."""
        if not self.cfg.uses_population or not len(fitness):
            return
        best = int(np.argmax(fitness))
        assert self.population is not None  # a population run always has one
        self.best_heads = self.population[best].clone()
        if self.pop_encoders is not None:
            self.best_encoders = {k: v[best : best + 1].clone() for k, v in self.pop_encoders.items()}
        elif self.cfg.race.champion_eval == "scored":  # keeps the encoders it was scored with (continuous tasks)
            self.best_encoders = self.family.champion_encoders(self.actor)

    def evolve_population(self, fitness: np.ndarray) -> None:
        cfg, p = self.cfg, self.progress
        if not cfg.uses_population or not len(fitness):
            return
        p.last_fitness = [float(f) for f in fitness]
        assert self.population is not None  # a population run always has one
        self.population, self._report = evolve(self.population, fitness, self.row_mask, cfg.race, self.evo_rng)
        if self.pop_encoders is not None:  # each agent's own encoder travels with its head
            self.pop_encoders = {k: follow_sources(v, self._report.sources) for k, v in self.pop_encoders.items()}
            if cfg.algo == "merl":  # MERL evolves whole networks: an agent's mutation also perturbs its encoder
                mutate_encoders(self.pop_encoders, self._report.mutated, self.spec.obs_dims, cfg.race, self.evo_rng)

    def inject_marl(self, fitness: np.ndarray) -> None:
        """Copy the MARL team (after this generation's updates) over the worst-scored team of this generation
        that is not a protected elite, every `race.injection_interval` generations."""
        cfg, p = self.cfg, self.progress
        if not cfg.uses_population or not len(fitness):
            return
        p.last_injected = None
        interval = cfg.race.injection_interval
        if cfg.uses_marl and interval > 0 and p.generation % interval == 0:
            assert self.population is not None  # a population run always has one
            slot = p.last_injected = inject(self.population, self.actor.marl_heads, fitness, self._report)
            if self.pop_encoders is not None:
                for k, v in self.actor.encoder_params().items():
                    self.pop_encoders[k][slot] = v[0]

    # ------------------------------------------------------------------ evaluation and logging
    def evaluate_team(self, heads: torch.Tensor, encoders: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Greedy returns (and, on discrete tasks, battle_won flags) of one team over `eval_episodes`
        episodes with fixed seeds per evaluation."""
        return self.family.evaluate_team(self, heads, encoders)

    def evaluate_marl(self, row: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The MARL team's greedy episodes, and its critic's bias on them in `row` (`q_bias_marl`)."""
        return self.family.evaluate_marl(self, row)

    def evaluate_champion(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The champion's evaluation episodes, played now (with the encoders of this moment)."""
        if not self.cfg.uses_population:
            return None
        return self.evaluate_team(self.best_heads, self.best_encoders)

    def evaluate(self, interval_start: tuple[float, int], champion: tuple | None = None) -> dict:
        """One metrics row: the MARL team's greedy episodes now and the champion's (`champion`, when it was
        played before the generation's updates, see `race.champion_eval`; else played now)."""
        cfg, p = self.cfg, self.progress
        row: dict = {"env_steps": p.env_steps, "generation": p.generation, "updates": p.updates}
        results: dict[str, Any] = {}  # team -> (returns, wins)
        if cfg.uses_marl:
            results["marl"] = self.evaluate_marl(row)
        if cfg.uses_population:
            results["best_team"] = champion if champion is not None else self.evaluate_champion()
        for name, (returns, wins) in results.items():
            row[f"eval_return_{name}"] = float(returns.mean())
            if wins is not None:
                row[f"eval_win_rate_{name}"] = float(wins.mean())
        # headline: the better of the two teams (by win rate on discrete tasks, then by return)
        best_returns, best_wins = max(
            results.values(), key=lambda r: (r[1].mean() if r[1] is not None else 0.0, r[0].mean())
        )
        row["eval_return"] = float(best_returns.mean())
        row["eval_return_std"] = float(best_returns.std())
        if best_wins is not None:
            row["eval_win_rate"] = float(best_wins.mean())
            row["train_win_rate"] = float(np.mean(p.train_wins)) if p.train_wins else math.nan
        row["train_return"] = float(np.mean(p.train_returns)) if p.train_returns else math.nan
        if p.last_fitness:
            f = np.array(p.last_fitness)
            row.update(
                fitness_max=float(f.max()),
                fitness_mean=float(f.mean()),
                fitness_min=float(f.min()),
                fitness_short=float(self.draws_short_fitness(p.generation - 1)),
            )
            row["injected_slot"] = p.last_injected
        names = {
            "critic": "loss_critic",
            "actor": "loss_actor",
            "pevfa": "loss_pevfa",
            "value": "loss_value",
            "vfm": "loss_vfm",
            "vmm": "loss_vmm",
            "mi": "mi_estimate",
        }
        loss_sums = self._loss_values(p.loss_sums)  # the device-side sums, read once per evaluation
        for k, col in names.items():
            if p.loss_counts.get(k):
                row[col] = loss_sums[k] / p.loss_counts[k]
        row.update(self.encoder_gradients())
        row["wall_time"] = self.elapsed()
        row["sps"] = (p.env_steps - interval_start[1]) / max(row["wall_time"] - interval_start[0], 1e-9)
        if p.env_steps >= p.next_eval:  # an extra evaluation at the end of a budget leaves the interval's means running
            p.train_returns, p.train_wins, p.loss_sums, p.loss_counts = [], [], {}, {}
        p.evals += 1
        self.logger.log_row(row)
        return row

    def encoder_gradients(self) -> dict[str, float]:
        """`grad_enc_<term>`: the gradient norm each term of the encoder loss puts on the shared encoders (the MARL
        actor term; RACE's VFM and beta * VMM), each alone, on one batch of the replay buffer, measured at every
        evaluation once learning has begun (`Learner.encoder_grad_norms`). The batch is drawn with the buffer's
        generator, which is then put back: a run measured this way learns exactly what it would without."""
        cfg, p = self.cfg, self.progress
        if not cfg.uses_marl or p.updates == 0:
            return {}
        state = self.buffer.generator.get_state()
        try:
            batch = self.buffer.sample(self.family.batch_size())
        finally:
            self.buffer.generator.set_state(state)
        population = None if self.population is None else self.population.to(self.device)
        pop_encoders = (
            None if self.pop_encoders is None else {k: v.to(self.device) for k, v in self.pop_encoders.items()}
        )
        norms = self.learner.encoder_grad_norms(batch, population, pop_encoders)
        return {f"grad_enc_{k}": v for k, v in norms.items()}

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg, p = self.cfg, self.progress
        session_steps = p.env_steps
        interval_start = (self.elapsed(), p.env_steps)
        bar = _progress_bar(cfg, p.env_steps)
        last_row = p.rows[-1] if p.rows else None
        self._stop = Interrupts()
        try:
            with self._stop:
                while p.env_steps < cfg.total_steps or p.pending_fitness is not None:
                    if p.pending_fitness is None:
                        fitness, steps = self.play_generation()
                        p.env_steps += steps
                        p.generation += 1
                        self.select_champion(fitness)
                        eval_due = p.env_steps >= p.next_eval or p.env_steps >= cfg.total_steps
                        champion = None
                        if eval_due and cfg.race.champion_eval == "scored":
                            champion = self.evaluate_champion()  # with the encoders it was scored with
                        if cfg.race.evolve_before_learning:
                            self.evolve_population(fitness)
                        self._set_pending(fitness, champion)  # what the rest of the generation needs, for checkpoints
                        self.learn(steps)
                    else:  # resumed from a checkpoint written inside this generation's updates
                        fitness, champion, steps = self._restore_pending()
                        self.run_updates(p.pending_updates, self._batch_size())
                    p.pending_fitness, p.pending_champion, p.pending_report = None, None, None
                    copy_slot = p.last_injected if len(fitness) else None  # played last generation's MARL copy
                    eval_due = p.env_steps >= p.next_eval or p.env_steps >= cfg.total_steps
                    if not cfg.race.evolve_before_learning:
                        self.evolve_population(fitness)
                    self.inject_marl(fitness)
                    self.log_generation(fitness, copy_slot)
                    bar.update(min(steps, bar.total - bar.n))  # the last generation may overshoot the budget
                    if eval_due:
                        row = self.evaluate(interval_start, champion)
                        interval_start = (row["wall_time"], p.env_steps)
                        last_row = row
                        p.next_eval = (p.env_steps // cfg.eval_interval + 1) * cfg.eval_interval
                        self.save()
                    self.maybe_checkpoint()
                    session_time = self.elapsed() - self._clock_base
                    bar.set_postfix(
                        sps=f"{(p.env_steps - session_steps) / max(session_time, 1e-9):.0f}", **_eval_postfix(last_row)
                    )
            summary = self.summary()  # written while the run's folder is still this process's
        except (TrainingInterrupted, KeyboardInterrupt):
            raise  # a checkpoint was written, or the user stopped it at once: the folder is as it was
        except Exception:
            bar.close()
            self._fail_cleanup()
            raise
        finally:
            bar.close()
            self.close()
        return summary

    def _batch_size(self) -> int:
        return self.family.batch_size()

    def close(self) -> None:
        """Stop the rollout workers, close the envs and the logger (idempotent)."""
        try:
            if hasattr(self, "family"):
                self.family.close()
        finally:
            try:
                if hasattr(self, "logger"):
                    self.logger.close()
            finally:
                self._release_folder()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ checkpoints


def _eval_postfix(row: dict | None) -> dict:
    """The progress bar's last evaluation: the return, and the win rate on discrete tasks."""
    if row is None:
        return {"eval": "-"}
    out = {"eval": f"{row['eval_return']:.2f}" if abs(row["eval_return"]) < 100 else f"{row['eval_return']:.1f}"}
    if row.get("eval_win_rate") is not None and not math.isnan(row["eval_win_rate"]):
        out["win"] = f"{row['eval_win_rate']:.2f}"
    return out


def _progress_bar(cfg: Config, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.total_steps,
        initial=initial,
        unit="step",
        disable=not cfg.progress,
        desc=f"{cfg.algo} {cfg.env.task}",
        dynamic_ncols=True,
        smoothing=0.05,
    )


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    with Trainer(cfg, run_dir, resume=resume) as trainer:
        return trainer.train()
