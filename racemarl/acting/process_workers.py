"""Rollout workers of the `process` backend: one local process per block of slots, each with a pipe to the driver
(multiprocessing, spawn context). See `racemarl.acting.workers` for the interface, restarts and timeouts."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import pickle
import signal
import threading
import time
import traceback
from typing import Any

from racemarl.acting.rollout import EnvRunner, GenerationPlan, RunnerSetup, SlotResult
from racemarl.acting.workers import (
    RolloutError,
    RolloutWorkers,
    _block_label,
    assign_slots,
    local_cores,
    worker_torch_setup,
)
from racemarl.envs.base import EnvFailure


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
            except EnvFailure as e:  # the env's own failure: its one line, and the traceback for RACEMARL_TRACEBACK
                conn.send(("env_error", (str(e), traceback.format_exc())))
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
    # Its pipe is closed, so it is exiting; on a loaded machine the exit can take seconds to be reaped, and
    # without the exit code the reason would read "closed its pipe" instead of the signal that killed it.
    process.join(timeout=10.0)
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
        self.sender: threading.Thread | None = None  # the thread that sends this worker its latest orders


class ProcessWorkers(RolloutWorkers):
    """One local process per block of slots, each with a pipe to the driver (multiprocessing, spawn)."""

    backend = "process"

    def _start(self) -> None:
        n = self.cfg.rollout.workers or local_cores()
        self.blocks = assign_slots(self.n_slots, n)
        self._ctx = mp.get_context("spawn")  # no fork of a process with threads (PyTorch, tqdm, TensorBoard)
        self.failures = [0] * self.n_workers
        self.in_flight = False  # a generation was sent and not all answers came back
        self.procs: list[_Proc] = [self._spawn(i) for i in range(self.n_workers)]

    def _spawn(self, i: int) -> _Proc:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_process_main, args=(child, self.setup(self.blocks[i])), name=f"racemarl-rollout-{i}", daemon=True
        )
        process.start()
        child.close()
        return _Proc(process, parent)

    def pids(self) -> list[int]:
        """Process ids of the workers (in worker order)."""
        return [p.process.pid for p in self.procs if p.process.pid is not None]  # all of them: they are started

    def _dispatch(self, i: int, data: bytes) -> None:
        # Sent from a thread: a big message blocks until the worker reads it, and a worker may be
        # still starting (or hung); the wait in `_play` has the timeout.
        p = self.procs[i]
        p.sender = threading.Thread(target=_send_quietly, args=(p.conn, data), daemon=True)
        p.sender.start()

    def _kill(self, i: int) -> None:
        p = self.procs[i]
        if p.process.is_alive():
            p.process.kill()
        p.process.join(timeout=10)
        # A sender still inside its write would, once the pipe is closed, write into whatever reuses the file
        # descriptor, such as the replacement's pipe (orders twice, then a stale answer). With the reader dead
        # its write fails at once (EPIPE), so wait for it before closing.
        if p.sender is not None:
            p.sender.join(timeout=10)
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
        jobs = {
            i: pickle.dumps(plan.part(block), protocol=pickle.HIGHEST_PROTOCOL) for i, block in enumerate(self.blocks)
        }
        deadline = {}
        for i, job in jobs.items():
            self._dispatch(i, job)
            deadline[i] = time.monotonic() + timeout
        results: dict[int, list[SlotResult]] = {}
        pending = set(jobs)
        self.in_flight = True
        while pending:
            owner: dict[Any, int] = {}  # a worker's pipe or its process sentinel -> the worker
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
                if kind == "env_error":
                    raise EnvFailure(payload[0], detail=payload[1])
                if kind == "error":
                    raise RolloutError(
                        f"rollout worker {i} ({_block_label(self.blocks[i])}) raised an exception:\n{payload.rstrip()}"
                    )
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
