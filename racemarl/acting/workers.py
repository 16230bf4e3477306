"""Rollout workers: where a generation's training episodes are played.

Three backends behind one interface, `RolloutWorkers.play(plan) -> [SlotResult]`:

- `inline`: in the driver process (the default);
- `process`: local worker processes (`multiprocessing`, spawn context), one pipe each;
- `ray`: Ray actors, on a local Ray instance or on a cluster joined with `rollout.ray_address`.

This module holds the interface, the shared restart logic and `inline`; `process_workers.py` and
`ray_workers.py` hold the other two.

The slots of a generation (the MARL team's episode first, then the population's) are split into fixed
contiguous blocks, one per worker. Each worker builds the environments of its block once and keeps
them; per generation it gets its slots' orders (`GenerationPlan.part`: the teams' heads, the encoder
weights, exploration noise, random-action flags, random streams), plays one episode per env and sends
back the transitions, returns and lengths. The driver keeps the learner, the replay buffer, evolution
and evaluation. Because every slot has its own random stream and the policy batch always has the same
shape (`racemarl.acting.rollout.SlotActor`), the results do not depend on the backend or the worker count.

A worker that dies, closes its pipe or gives no answer within `rollout.worker_timeout` is restarted
(new process or actor, environments rebuilt) and plays its episodes again with the same orders. A
worker's results are used only once its whole answer arrived, so no transition is lost or stored
twice. After `rollout.max_restarts` restarts of one worker in a row the run stops with an error.

Worker processes are started with the spawn method, which imports the main module again: a script
that trains with the process backend needs the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import logging
import os
from typing import Self

import numpy as np
import torch

from racemarl.acting.rollout import EnvRunner, GenerationPlan, RunnerSetup, SlotResult
from racemarl.config import Config

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'racemarl[ray]'"


class RolloutError(RuntimeError):
    """The rollout workers could not deliver a generation (a worker raised, or failed too often)."""


def env_kwargs(cfg: Config) -> dict:
    """The keyword arguments of `make_env` for a config's training and evaluation environments."""
    return {
        "agent_obsk": cfg.env.agent_obsk,
        "max_episode_steps": cfg.env.max_episode_steps,
        "kwargs": dict(cfg.env.kwargs),
    }


def assign_slots(n_slots: int, n_workers: int) -> list[tuple[int, ...]]:
    """Contiguous blocks of slots, one per worker, as even as possible (the first blocks get one more).
    Never more blocks than slots."""
    n_workers = max(1, min(n_workers, n_slots))
    return [tuple(int(s) for s in block) for block in np.array_split(np.arange(n_slots), n_workers)]


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_torch_setup() -> None:
    """PyTorch settings of every worker: one intra-op thread (workers are one per core) and no denormals."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def _block_label(slots: tuple[int, ...]) -> str:
    return f"slot {slots[0]}" if len(slots) == 1 else f"slots {slots[0]}-{slots[-1]}"


class RolloutWorkers:
    """The common part of the backends: slot assignment, lazy start, ordering of the results, shutdown."""

    backend = ""

    def __init__(self, cfg: Config, n_slots: int):
        self.cfg = cfg
        self.n_slots = n_slots
        self.blocks: list[tuple[int, ...]] = []  # the slots of each worker, fixed at start
        self.started = False
        self.closed = False
        self.restarts = 0  # worker restarts since start

    @property
    def n_workers(self) -> int:
        return len(self.blocks)

    def setup(self, slots: tuple[int, ...]) -> RunnerSetup:
        cfg = self.cfg
        return RunnerSetup(
            task=cfg.env.task,
            env_kwargs=env_kwargs(cfg),
            encoder_hidden=cfg.net.encoder_hidden,
            embed_dim=cfg.net.embed_dim,
            n_slots=self.n_slots,
            slots=slots,
        )

    def start(self) -> None:
        """Create the workers (done by the first `play`)."""
        if self.closed:
            raise RolloutError("the rollout workers were shut down")
        if not self.started:
            self._start()
            self.started = True

    def play(self, plan: GenerationPlan) -> list[SlotResult]:
        """Every slot of `plan` plays one episode; the results in slot order."""
        if tuple(plan.slots) != tuple(range(self.n_slots)):
            raise ValueError(f"a generation has slots 0-{self.n_slots - 1}, the plan has {plan.slots}")
        self.start()
        by_worker = self._play(plan)
        results = [r for i in range(self.n_workers) for r in by_worker[i]]
        return sorted(results, key=lambda r: r.slot)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self.started and not self.closed:
            self._close()
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        raise NotImplementedError

    def _play(self, plan: GenerationPlan) -> dict[int, list[SlotResult]]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _give_up_or_warn(self, i: int, failures: int, why: str, where: str) -> None:
        limit = self.cfg.rollout.max_restarts
        if failures > limit:
            raise RolloutError(
                f"rollout worker {i} ({_block_label(self.blocks[i])}) failed {failures} times in a row, "
                f"last: {why}; giving up (rollout.max_restarts={limit})"
            )
        log.warning(
            "rollout worker %d (%s%s) %s; restarting it and replaying its episodes (restart %d of at most %d in a row)",
            i,
            _block_label(self.blocks[i]),
            where,
            why,
            failures,
            limit,
        )
        self.restarts += 1


# ---------------------------------------------------------------- inline


class InlineWorkers(RolloutWorkers):
    """All slots played in the driver process, with one PyTorch thread like a worker."""

    backend = "inline"

    def _start(self) -> None:
        self.blocks = [tuple(range(self.n_slots))]
        self.runner = EnvRunner(self.setup(self.blocks[0]))

    def _play(self, plan: GenerationPlan) -> dict[int, list[SlotResult]]:
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)  # the same kernels as in a worker, whatever cfg.torch_threads is
        try:
            return {0: self.runner.run(plan)}
        finally:
            if threads != 1:
                torch.set_num_threads(threads)

    def _close(self) -> None:
        self.runner.close()


def make_workers(cfg: Config, n_slots: int) -> RolloutWorkers:
    """The rollout workers of `cfg.rollout` for generations of `n_slots` episodes (started by the first play). The
    `process` and `ray` backends live in `process_workers.py` and `ray_workers.py`, imported when chosen."""
    backend = cfg.rollout.backend
    cls: type[RolloutWorkers]
    if backend == "process":
        from racemarl.acting.process_workers import ProcessWorkers

        cls = ProcessWorkers
    elif backend == "ray":
        from racemarl.acting.ray_workers import RayWorkers

        cls = RayWorkers
    else:
        cls = {"inline": InlineWorkers}[backend]
    return cls(cfg, n_slots)
