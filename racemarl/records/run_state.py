"""What a run keeps between sessions: its counters (`Progress`), its checkpoints (written, checked, loaded), the
fallback to the last good state when an update meets a NaN, the generation logs and summary, and the handling
of SIGINT/SIGTERM. `RunState` is the half of `train.Trainer` that writes and reads its records; the loop itself
is in `racemarl/train.py`."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from racemarl.config import ConfigError, from_dict, to_dict
from racemarl.device import clone_tree, cpu_tree
from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import write_summary

if TYPE_CHECKING:
    from racemarl.algorithms.base import Learner
    from racemarl.config import Config
    from racemarl.records.metrics import MetricsLogger

LATEST = "latest.pt"
LAST_GOOD = "last_good.pt"
log = logging.getLogger("racemarl.train")  # the name the loop's warnings always had


class RunError(RuntimeError):
    """A run could not start or continue (bad run directory, resume mismatch, diverged losses)."""


class TrainingInterrupted(RunError):
    """SIGINT or SIGTERM stopped the run after a checkpoint was written; `resume` continues it exactly."""

    def __init__(self, message: str, signal_name: str, run_dir: Path):
        super().__init__(message)
        self.signal_name, self.run_dir = signal_name, run_dir


@dataclass
class Progress:
    """Counters of a run; saved in every checkpoint."""

    env_steps: int = 0
    generation: int = 0
    updates: int = 0
    evals: int = 0
    next_eval: int = 0
    wall_time: float = 0.0
    update_credit: float = 0.0  # fractional updates carried over between generations
    train_returns: list[float] = field(default_factory=list)  # MARL (or population) returns since last eval
    train_wins: list[float] = field(default_factory=list)  # discrete tasks: the same episodes' battle_won
    last_fitness: list[float] = field(default_factory=list)
    last_injected: int | None = None
    loss_sums: dict[str, Any] = field(default_factory=dict)  # during a run: float64 tensors on the device
    loss_counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    # A checkpoint written inside a generation's updates (interruption, wall-clock checkpoint): the
    # generation's fitness and the updates still to do; resuming does them, then evolves. None otherwise.
    pending_fitness: list[float] | None = None
    pending_updates: int = 0
    pending_champion: dict | None = None  # the champion's evaluation played before the updates
    pending_report: dict | None = None  # the evolution report, when evolution came before the updates


class Interrupts:
    """While training: SIGINT/SIGTERM set a flag that the loop checks between updates and generations
    (it then writes a checkpoint and stops); a second signal stops at once (KeyboardInterrupt). The
    handlers are installed even where SIGINT was ignored (a run started with `nohup ... &`): a SIGINT
    sent to it on purpose, e.g. forwarded by `racemarl sweep`, then stops it with a checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(
            f"\nracemarl: {self.signal}: finishing the current update, then writing a checkpoint "
            f"(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def report_state(report) -> dict:
    """An evolution report as checkpoint-safe values: arrays as tensors, tuples as lists, plain ints."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(report):
        v = getattr(report, f.name)
        if isinstance(v, np.ndarray):
            out[f.name] = torch.from_numpy(v.copy())
        elif isinstance(v, (list, tuple)):
            out[f.name] = [[int(y) for y in x] if isinstance(x, (list, tuple)) else int(x) for x in v]
        else:
            out[f.name] = None if v is None else int(v)
    return out


def report_from_state(state: dict):
    from racemarl.algorithms.evolution import GenerationReport

    values: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            values[k] = v.numpy()
        elif isinstance(v, list):
            values[k] = [tuple(x) if isinstance(x, list) else x for x in v]
        else:
            values[k] = v
    return GenerationReport(**values)


class RunState:
    """Checkpoints, resume, the non-finite fallback, and the logs of a run; mixed into `train.Trainer`, whose
    attributes (cfg, run_dir, progress, learner, buffer, population, generators, logger) it reads and writes."""

    # What the host class sets (in `Trainer.__init__`) and this half reads and writes.
    cfg: Config
    run_dir: Path
    device: torch.device
    progress: Progress
    learner: Learner
    buffer: Any
    logger: MetricsLogger
    torch_gen: torch.Generator
    evo_rng: np.random.Generator
    population: torch.Tensor | None
    pop_encoders: dict[str, torch.Tensor] | None
    best_heads: torch.Tensor
    best_encoders: dict[str, torch.Tensor] | None
    _report: Any
    _stop: Interrupts | None
    _resume: bool
    _lock: Any

    def close(self) -> None:
        """Stop what the run started (the trainer's own)."""
        raise NotImplementedError

    _last_save: float
    _saved_key: Any
    _clock_start: float
    _clock_base: float

    def sync_actor(self) -> None:
        """Refresh the acting copy of the learner (the host class's)."""
        raise NotImplementedError

    def draws_short_fitness(self, generation: int) -> bool:
        """Whether `generation` scores its teams by short rollouts (the host class's)."""
        raise NotImplementedError

    def _checkpoint_due(self) -> bool:
        """Whether `maybe_checkpoint` would write a checkpoint now (host-side clocks and flags only)."""
        minutes = self.cfg.checkpoint_minutes
        stop = self._stop.signal if self._stop is not None else None
        due = stop is not None or (minutes > 0 and time.monotonic() - self._last_save >= 60.0 * minutes)
        return due and self._saved_key != self._state_key()

    def maybe_checkpoint(self) -> None:
        """Write a checkpoint when the wall-clock interval has passed or a stop signal came; after a
        signal, stop the run (`TrainingInterrupted`)."""
        stop = self._stop.signal if self._stop is not None else None
        if self._checkpoint_due():
            self.save()
        if stop is not None:
            path = self.run_dir / "checkpoints" / LATEST
            raise TrainingInterrupted(
                f"stopped by {stop} at {self.progress.env_steps} env steps; checkpoint written to {path}; "
                f"continue with `racemarl train --resume {self.run_dir}`",
                stop,
                self.run_dir,
            )

    def save(self) -> None:
        self.logger.flush()  # the events up to the checkpoint are on disk before it (a resume keeps them)
        ckpt.save_atomic(self._state(), self.run_dir / "checkpoints" / LATEST)
        self._last_save, self._saved_key = time.monotonic(), self._state_key()

    def _state(self) -> dict:
        p = self.progress
        learner_state = self.learner.full_state()
        if self.learner.generator is not self.torch_gen:  # a generator on the training device
            learner_state["generator"] = {"device": self.device.type, "state": self.learner.generator.get_state()}
        return cpu_tree(
            {  # CPU tensors only: a checkpoint resumes and evaluates on any device
                "config": to_dict(self.cfg),
                "progress": {**vars(p), "wall_time": self.elapsed(), "loss_sums": self._loss_values(p.loss_sums)},
                "learner": learner_state,
                "population": self.population,
                "best_heads": self.best_heads,
                "pop_encoders": self.pop_encoders,
                "best_encoders": self.best_encoders,
                "buffer": self.buffer.state_dict(),
                "rng": {  # the rollouts' streams follow from (seed, generation, slot): nothing to save
                    "evolution": ckpt.numpy_rng_state(self.evo_rng),
                    "torch_gen": self.torch_gen.get_state(),
                    "global": ckpt.global_rng_state(),
                },
            }
        )

    def _state_key(self) -> tuple:
        p = self.progress
        return p.env_steps, p.updates, p.evals, p.pending_fitness is None

    def _check_paths(self, resume: bool) -> None:
        """The run folder, before anything is built or written: a new run needs a new, empty or
        never-checkpointed folder of this run; a resume needs a run with a checkpoint. Then the folder is claimed
        for this process (`FolderLock` on RUN/.train.lock, held until `close`): a second process training the same
        run is refused, naming the first."""
        from racemarl.envs.byo import absolute_task
        from racemarl.records.runs import RunDirError, check_new_run_dir, check_output_dir

        self._lock, self._created_dir = None, False
        self.cfg.env.task = absolute_task(self.cfg.env.task)  # a user's env file, found again from any folder
        try:
            if not resume:
                check_new_run_dir(self.run_dir, self.cfg.validate())
            else:
                check_output_dir(self.run_dir, "--resume")
        except (RunDirError, ckpt.CheckpointError) as e:
            raise RunError(str(e)) from None
        if resume and not (self.run_dir / "checkpoints" / LATEST).is_file():
            raise RunError(f"no checkpoint to resume from at {self.run_dir / 'checkpoints' / LATEST}")
        if self.cfg.rollout.backend == "ray" and self.cfg.rollout.ray_address:
            from racemarl.acting.ray_workers import check_ray_address
            from racemarl.acting.workers import RolloutError

            try:
                check_ray_address(self.cfg.rollout.ray_address)
            except RolloutError as e:
                raise RunError(str(e)) from None
        self._claim_folder(resume)
        if resume:
            ckpt.clean_temp_files(self.run_dir / "checkpoints")

    def _claim_folder(self, resume: bool) -> None:
        from racemarl.records.runs import TRAIN_LOCK, FolderLock, RunDirError, check_new_run_dir

        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(self.run_dir / TRAIN_LOCK, "racemarl train")
        try:
            lock.acquire()
            if not resume:  # again, now that the folder is ours: another process may have started it meanwhile
                check_new_run_dir(self.run_dir, self.cfg)
        except RunDirError as e:
            lock.release()
            self._remove_created_dir()
            raise RunError(str(e)) from None
        self._lock = lock

    def _remove_created_dir(self) -> None:
        """Remove the run folder if this process created it and it holds no checkpoint."""
        import shutil

        if getattr(self, "_created_dir", False) and not self._has_checkpoint():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._created_dir = False

    def _has_checkpoint(self) -> bool:
        return any((self.run_dir / "checkpoints" / name).is_file() for name in (LATEST, LAST_GOOD))

    def _release_folder(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def _abandon(self, resume: bool) -> None:
        """After a failure: a run with a checkpoint stays resumable (`train --resume` rewrites what came after it);
        a new run that never wrote one leaves no half-written folder: the folder is removed if this process created
        it, else emptied of what this session wrote (it was empty, or a never-checkpointed start of this run)."""
        import shutil

        from racemarl.records.runs import LOCK_FILES

        if resume or self._has_checkpoint() or not self.run_dir.is_dir():
            return
        if getattr(self, "_created_dir", False):
            self._release_folder()
            self._remove_created_dir()
            return
        for child in self.run_dir.iterdir():
            if child.name in LOCK_FILES:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def _check_memory(self) -> None:
        """Refuse, before the population, envs and buffers are built, a run whose estimate does not fit in memory
        (`racemarl.records.memory`); the task's sizes come from one env, built and closed here."""
        from racemarl.acting.workers import env_kwargs
        from racemarl.envs import make_env
        from racemarl.records import memory

        env = make_env(self.cfg.env.task, **env_kwargs(self.cfg))
        try:
            spec = env.spec
        finally:
            env.close()
        try:
            memory.check(self.cfg, spec, self.device)
        except memory.MemoryEstimateError as e:
            raise RunError(str(e)) from None

    def _fail_cleanup(self) -> None:
        """A run that failed: stop what it started, then leave its folder resumable or as it was (`_abandon`)."""
        try:
            self.close()
        finally:
            self._abandon(self._resume)
            self._release_folder()

    def _load(self, path: Path) -> None:
        if not path.exists():
            raise RunError(f"no checkpoint to resume from at {path}")
        try:
            sd = ckpt.load(path)
        except ckpt.CheckpointError as e:
            raise RunError(str(e)) from None
        missing = [k for k in ("config", "progress", "learner", "buffer", "rng") if k not in sd]
        if missing:
            raise RunError(f"{path} is not a racemarl training checkpoint (no {', '.join(missing)})")
        try:
            saved = from_dict(sd["config"])
        except (ConfigError, TypeError, AttributeError) as e:
            raise RunError(f"{path} holds an invalid config ({e})") from None
        if saved.env.task != self.cfg.env.task or saved.algo != self.cfg.algo:
            raise RunError(
                f"checkpoint {path} is for {saved.algo} on {saved.env.task}, not {self.cfg.algo} on {self.cfg.env.task}"
            )
        self.progress = Progress(**sd["progress"])
        self.learner.load_full_state(sd["learner"])
        self._load_learner_generator(sd["learner"].get("generator"))
        self.population = sd["population"]
        self.best_heads = sd["best_heads"]
        self.pop_encoders, self.best_encoders = sd["pop_encoders"], sd["best_encoders"]
        self.buffer.load_state_dict(sd["buffer"])
        ckpt.set_numpy_rng_state(self.evo_rng, sd["rng"]["evolution"])
        self.torch_gen.set_state(sd["rng"]["torch_gen"])
        ckpt.set_global_rng_state(sd["rng"]["global"])
        self.sync_actor()

    def _load_learner_generator(self, saved: dict | None) -> None:
        """The learner's random draws (target smoothing, team draws, Gumbel noise). A CPU run draws them from
        `torch_gen` (restored with the other generators); a GPU run from a generator on the device, saved as
        `learner.generator`. Restored when the checkpoint was made the same way on the same kind of device; else
        they continue from a fresh stream (seeded from seed and updates), with a warning: resume is exact on the
        same kind of device, and continues correctly, with other random draws, across devices."""
        gen = self.learner.generator
        if gen is self.torch_gen:
            if saved is not None:
                log.warning(
                    "resuming on the CPU a run checkpointed on %s: the learner's random draws continue from "
                    "a fresh stream",
                    saved["device"],
                )
            return
        if saved is not None and saved["device"] == self.device.type:
            gen.set_state(saved["state"])
            return
        gen.manual_seed(int(np.random.default_rng([self.cfg.seed, 4, self.progress.updates]).integers(2**62)))
        log.warning(
            "resuming on %s a run checkpointed on %s: the learner's random draws continue from a fresh stream",
            self.device.type,
            "cpu" if saved is None else saved["device"],
        )

    def _set_pending(self, fitness: np.ndarray, champion: tuple | None) -> None:
        """Record in the progress what the rest of this generation needs after its updates (its fitness, the
        champion's evaluation, the evolution report), so a checkpoint written between two updates resumes it."""
        p = self.progress
        p.pending_fitness = [float(f) for f in fitness]
        p.pending_champion = (
            None
            if champion is None
            else {
                "returns": [float(r) for r in champion[0]],
                "wins": None if champion[1] is None else [float(w) for w in champion[1]],
            }
        )
        p.pending_report = None
        if self.cfg.race.evolve_before_learning and self._report is not None and len(fitness):
            p.pending_report = report_state(self._report)

    def _restore_pending(self) -> tuple[np.ndarray, tuple | None, int]:
        p = self.progress
        champion = None
        if p.pending_champion is not None:
            wins = p.pending_champion["wins"]
            champion = (np.array(p.pending_champion["returns"]), None if wins is None else np.array(wins))
        if p.pending_report is not None:
            self._report = report_from_state(p.pending_report)
        return np.array(p.pending_fitness), champion, 0

    def _raise_if_non_finite(self, fallback: dict) -> None:
        problem = self.learner.non_finite()
        if problem is None:
            return
        bad = [k for k, v in self._loss_values(self.progress.loss_sums).items() if not math.isfinite(v)]
        self._restore_learner(fallback)
        path = self.run_dir / "checkpoints" / LAST_GOOD
        ckpt.save_atomic(self._state(), path)
        detail = f" ({', '.join(bad)})" if bad else ""
        raise RunError(
            f"{problem}{detail}; training stopped. Last good state (before this generation's updates) saved to {path}"
        )

    def _learner_snapshot(self, n: int) -> dict:
        """A copy, on the device, of everything the updates change: the learner's parameters, targets and optimiser
        states, its update count, the learner's and the buffer's generators, the loss sums and the update counters."""
        p = self.progress
        return {
            "learner": clone_tree(self.learner.full_state()),
            "gen": self.learner.generator.get_state(),
            "buffer_gen": self.buffer.generator.get_state(),
            "loss_sums": dict(p.loss_sums),
            "loss_counts": dict(p.loss_counts),
            "updates": p.updates,
            "pending_updates": n,
        }

    def _restore_learner(self, snap: dict) -> None:
        p = self.progress
        self.learner.load_full_state(snap["learner"])
        self.learner.generator.set_state(snap["gen"])
        self.buffer.generator.set_state(snap["buffer_gen"])
        p.loss_sums, p.loss_counts = snap["loss_sums"], snap["loss_counts"]
        p.updates = snap["updates"]
        p.pending_updates = snap["pending_updates"]  # all of these updates are still to do
        self.sync_actor()

    @staticmethod
    def _loss_values(sums: dict) -> dict[str, float]:
        """Loss sums (float64 tensors on the device, or floats) as floats, read in one transfer."""
        on_device = [v for v in sums.values() if isinstance(v, torch.Tensor)]
        if not on_device:
            return {k: float(v) for k, v in sums.items()}
        device = on_device[0].device
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in sums.values()]).tolist()
        return dict(zip(sums, values))

    def elapsed(self) -> float:
        """Wall-clock seconds of the whole run, earlier sessions of a resumed run included."""
        return self._clock_base + time.perf_counter() - self._clock_start

    def log_generation(self, fitness: np.ndarray, copy_slot: int | None = None) -> None:
        """Per-generation TensorBoard scalars (metrics.csv holds one row per evaluation): the MARL team's training
        return, the population's whole fitness vector, and the fitness of the slot holding last generation's
        MARL copy (`copy_slot`). A generation scored by short rollouts + the PeVFA logs its fitness under
        `fitness_short*` instead of `fitness*` (another scale: H steps plus a discounted bootstrap)."""
        p = self.progress
        values = {"train_return": p.train_returns[-1]} if p.train_returns else {}
        if p.train_wins:
            values["train_win_rate"] = p.train_wins[-1]
        if len(fitness):
            kind = "fitness_short" if self.draws_short_fitness(p.generation - 1) else "fitness"
            values.update(
                {
                    f"{kind}_max": float(fitness.max()),
                    f"{kind}_mean": float(fitness.mean()),
                    f"{kind}_min": float(fitness.min()),
                }
            )
            values.update({f"{kind}/team_{j}": float(f) for j, f in enumerate(fitness)})
            if copy_slot is not None:  # the MARL team injected last generation played unchanged: a noise-free curve
                values[f"{kind}_marl_copy"] = float(fitness[copy_slot])
        if p.last_injected is not None:
            values["injected_slot"] = p.last_injected
        self.logger.scalars(values, p.env_steps, prefix="generation/")

    def summary(self) -> dict:
        p = self.progress
        evals = [r["eval_return"] for r in p.rows]
        wins = [r["eval_win_rate"] for r in p.rows if r.get("eval_win_rate") is not None]
        wall = self.elapsed()
        summary = {
            "task": self.cfg.env.task,
            "algo": self.cfg.algo,
            "seed": self.cfg.seed,
            "final_eval_return": evals[-1] if evals else None,
            "best_eval_return": max(evals) if evals else None,
            "total_env_steps": p.env_steps,
            "updates": p.updates,
            "generations": p.generation,
            "wall_time": wall,
            "mean_sps": p.env_steps / wall if wall > 0 else None,
        }
        if wins:  # discrete tasks
            summary.update(final_eval_win_rate=wins[-1], best_eval_win_rate=max(wins))
        write_summary(self.run_dir, summary)
        return summary
