"""Rollout workers of the `ray` backend: Ray actors, on a local Ray instance or on a cluster joined with
`rollout.ray_address`. See `racemarl.acting.workers` for the interface, restarts and timeouts."""
from __future__ import annotations

import contextlib
import os
import time

from racemarl.acting.rollout import EnvRunner, GenerationPlan, RunnerSetup, SlotResult
from racemarl.acting.workers import (
    RAY_EXTRA,
    RolloutError,
    RolloutWorkers,
    _block_label,
    assign_slots,
    local_cores,
    worker_torch_setup,
)
from racemarl.config import Config


def require_ray():
    try:
        import ray
    except ImportError:
        raise RolloutError(f"rollout.backend ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _kill_actor(ray, actor) -> None:
    with contextlib.suppress(Exception):  # already gone
        ray.kill(actor, no_restart=True)


class RayRunner:
    """The Ray actor of one block of slots."""

    def __init__(self, setup: RunnerSetup):
        worker_torch_setup()
        self.runner = EnvRunner(setup)

    def pid(self) -> int:
        return os.getpid()

    def run(self, plan: GenerationPlan) -> list[SlotResult]:
        return self.runner.run(plan)

    def close(self) -> None:
        self.runner.close()


class RayWorkers(RolloutWorkers):
    """One Ray actor (1 CPU) per block of slots. Joins the cluster at `rollout.ray_address`, or an already
    initialised Ray, or starts a local Ray instance with `workers` CPUs (shut down again by `close`)."""

    backend = "ray"

    def __init__(self, cfg: Config, n_slots: int):
        super().__init__(cfg, n_slots)
        require_ray()

    def _start(self) -> None:
        ray = require_ray()
        rc = self.cfg.rollout
        self._owns_ray = False
        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": "error"}
            if rc.ray_address:
                ray.init(address=rc.ray_address, **quiet)
            else:
                ray.init(num_cpus=min(rc.workers or local_cores(), self.n_slots), include_dashboard=False, **quiet)
            self._owns_ray = True
        n = rc.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.blocks = assign_slots(self.n_slots, n)
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RayRunner)
        self.failures = [0] * self.n_workers
        self.actors = [self._actor_cls.remote(self.setup(b)) for b in self.blocks]

    def _restart(self, i: int, why: str) -> None:
        ray = require_ray()
        _kill_actor(ray, self.actors[i])
        self.failures[i] += 1
        self._give_up_or_warn(i, self.failures[i], why, ", Ray actor")
        self.actors[i] = self._actor_cls.remote(self.setup(self.blocks[i]))

    def _dispatch(self, i: int, job: GenerationPlan):
        return self.actors[i].run.remote(job)

    def _play(self, plan: GenerationPlan) -> dict[int, list[SlotResult]]:
        ray = require_ray()
        from ray.exceptions import RayError, RayTaskError

        timeout = self.cfg.rollout.worker_timeout
        jobs = {i: plan.part(block) for i, block in enumerate(self.blocks)}
        pending, deadline = {}, {}
        for i, job in jobs.items():
            pending[self._dispatch(i, job)] = i
            deadline[i] = time.monotonic() + timeout
        results: dict[int, list[SlotResult]] = {}
        while pending:
            wait_s = max(0.0, min(deadline[i] for i in pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except RayTaskError as e:  # the worker's code raised: playing again would raise again
                    raise RolloutError(f"rollout worker {i} ({_block_label(self.blocks[i])}) raised an exception:\n"
                                       f"{e}") from None
                except RayError as e:  # the actor died, or its node
                    self._restart(i, f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                    pending[self._dispatch(i, jobs[i])] = i
                    deadline[i] = time.monotonic() + timeout
                else:
                    self.failures[i] = 0
            now = time.monotonic()
            for ref, i in list(pending.items()):
                if now >= deadline[i]:
                    del pending[ref]
                    self._restart(i, f"gave no answer within {timeout:g} s (rollout.worker_timeout)")
                    pending[self._dispatch(i, jobs[i])] = i
                    deadline[i] = time.monotonic() + timeout
        return results

    def _close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for actor in self.actors:
            _kill_actor(ray, actor)
        if self._owns_ray:
            ray.shutdown()

