"""Rollout workers: where a generation's training episodes are played.

Three backends behind one interface, `RolloutWorkers.play(plan) -> [SlotResult]`:

- `inline`: in the driver process (the default);
- `process`: local worker processes (`multiprocessing`, spawn context), one pipe each;
- `ray`: Ray actors, on a local Ray instance or on a cluster joined with `rollout.ray_address`.

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

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Self

import numpy as np
import torch

from racemarl.config import Config
from racemarl.acting.rollout import EnvRunner, GenerationPlan, RunnerSetup, SlotResult

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'racemarl[ray]'"


class RolloutError(RuntimeError):
    """The rollout workers could not deliver a generation (a worker raised, or failed too often)."""


def env_kwargs(cfg: Config) -> dict:
    """The keyword arguments of `make_env` for a config's training and evaluation environments."""
    return {"agent_obsk": cfg.env.agent_obsk, "max_episode_steps": cfg.env.max_episode_steps, "kwargs": dict(cfg.env.kwargs)}


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
        return RunnerSetup(task=cfg.env.task, env_kwargs=env_kwargs(cfg), encoder_hidden=cfg.net.encoder_hidden,
                           embed_dim=cfg.net.embed_dim, n_slots=self.n_slots, slots=slots)

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
            raise RolloutError(f"rollout worker {i} ({_block_label(self.blocks[i])}) failed {failures} times in a row, "
                               f"last: {why}; giving up (rollout.max_restarts={limit})")
        log.warning("rollout worker %d (%s%s) %s; restarting it and replaying its episodes (restart %d of at most %d "
                    "in a row)", i, _block_label(self.blocks[i]), where, why, failures, limit)
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


# ---------------------------------------------------------------- local processes


def _process_main(conn: mp.connection.Connection, setup: RunnerSetup) -> None:
    """A worker process: build the envs, then play one generation per message until None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    worker_torch_setup()
    try:
        runner = EnvRunner(setup)
    except BaseException:  # noqa: BLE001 - reported to the driver, which stops the run
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            try:
                plan = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):  # the driver is gone
                break
            if plan is None:
                break
            try:
                result = runner.run(plan)
            except Exception:  # noqa: BLE001 - reported to the driver, which stops the run
                conn.send(("error", traceback.format_exc()))
                continue
            conn.send(("ok", result))
    finally:
        runner.close()
        conn.close()


def _send_quietly(conn: mp.connection.Connection, data: bytes) -> None:
    with contextlib.suppress(Exception):  # the worker died or was stopped: the driver notices it by its exit
        conn.send_bytes(data)


def _exit_reason(process: mp.process.BaseProcess) -> str:
    process.join(timeout=1.0)
    code = process.exitcode
    if code is None:
        return "closed its pipe"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Proc:
    def __init__(self, process: mp.process.BaseProcess, conn: mp.connection.Connection):
        self.process, self.conn = process, conn


class ProcessWorkers(RolloutWorkers):
    """One local process per block of slots, each with a pipe to the driver (multiprocessing, spawn)."""

    backend = "process"

    def _start(self) -> None:
        n = self.cfg.rollout.workers or local_cores()
        self.blocks = assign_slots(self.n_slots, n)
        self._ctx = mp.get_context("spawn")  # no fork of a process with threads (PyTorch, tqdm, TensorBoard)
        self.failures = [0] * self.n_workers
        self.in_flight = False  # a generation was sent and not all answers came back
        self.procs: list[_Proc | None] = [None] * self.n_workers
        for i in range(self.n_workers):
            self.procs[i] = self._spawn(i)

    def _spawn(self, i: int) -> _Proc:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_process_main, args=(child, self.setup(self.blocks[i])),
                                    name=f"racemarl-rollout-{i}", daemon=True)
        process.start()
        child.close()
        return _Proc(process, parent)

    def pids(self) -> list[int]:
        """Process ids of the workers (in worker order)."""
        return [p.process.pid for p in self.procs]

    def _dispatch(self, i: int, data: bytes) -> None:
        # Sent from a thread: a big message blocks until the worker reads it, and a worker may be
        # still starting (or hung); the wait in `_play` has the timeout.
        threading.Thread(target=_send_quietly, args=(self.procs[i].conn, data), daemon=True).start()

    def _kill(self, i: int) -> None:
        p = self.procs[i]
        if p.process.is_alive():
            p.process.kill()
        p.process.join(timeout=10)
        p.conn.close()

    def _restart(self, i: int, why: str, job: bytes) -> None:
        pid = self.procs[i].process.pid
        self._kill(i)
        self.failures[i] += 1
        self._give_up_or_warn(i, self.failures[i], why, f", pid {pid}")
        self.procs[i] = self._spawn(i)
        self._dispatch(i, job)

    def _play(self, plan: GenerationPlan) -> dict[int, list[SlotResult]]:
        timeout = self.cfg.rollout.worker_timeout
        jobs = {i: pickle.dumps(plan.part(block), protocol=pickle.HIGHEST_PROTOCOL) for i, block in enumerate(self.blocks)}
        deadline = {}
        for i, job in jobs.items():
            self._dispatch(i, job)
            deadline[i] = time.monotonic() + timeout
        results: dict[int, list[SlotResult]] = {}
        pending = set(jobs)
        self.in_flight = True
        while pending:
            owner = {}
            for i in pending:
                owner[self.procs[i].conn] = i
                owner[self.procs[i].process.sentinel] = i
            wait_s = max(0.0, min(deadline[i] for i in pending) - time.monotonic())
            ready = {owner[x] for x in mp.connection.wait(list(owner), timeout=wait_s)}
            for i in sorted(ready):
                proc = self.procs[i]
                try:
                    answer = proc.conn.recv() if proc.conn.poll() else None
                except Exception as e:  # noqa: BLE001 - EOF, a cut-off message: the worker died
                    answer, cause = None, f"{type(e).__name__}"
                else:
                    cause = ""
                if answer is None:
                    why = _exit_reason(proc.process) + (f" ({cause})" if cause else "")
                    self._restart(i, why, jobs[i])
                    deadline[i] = time.monotonic() + timeout
                    continue
                kind, payload = answer
                if kind == "error":
                    raise RolloutError(f"rollout worker {i} ({_block_label(self.blocks[i])}) raised an exception:\n"
                                       f"{payload.rstrip()}")
                results[i] = payload
                self.failures[i] = 0
                pending.discard(i)
            now = time.monotonic()
            for i in sorted(pending - ready):
                if now >= deadline[i]:
                    self._restart(i, f"gave no answer within {timeout:g} s (rollout.worker_timeout)", jobs[i])
                    deadline[i] = time.monotonic() + timeout
        self.in_flight = False
        return results

    def _close(self) -> None:
        if not self.in_flight:  # idle workers stop by themselves (and close their envs); busy ones are killed
            stop = pickle.dumps(None)
            for p in self.procs:
                _send_quietly(p.conn, stop)  # tiny: never blocks
            end = time.monotonic() + 5.0
            for p in self.procs:
                p.process.join(timeout=max(0.0, end - time.monotonic()))
        for i in range(self.n_workers):
            self._kill(i)


# ---------------------------------------------------------------- Ray


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


BACKENDS = {"inline": InlineWorkers, "process": ProcessWorkers, "ray": RayWorkers}


def make_workers(cfg: Config, n_slots: int) -> RolloutWorkers:
    """The rollout workers of `cfg.rollout` for generations of `n_slots` episodes (started by the first play)."""
    return BACKENDS[cfg.rollout.backend](cfg, n_slots)
