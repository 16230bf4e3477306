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


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A bounded check that a Ray cluster can be reached at `address` (HOST:PORT, or ray://HOST:PORT for Ray
    Client): the host resolves and its port accepts a TCP connection within `timeout` seconds. RolloutError (one
    line) otherwise. `auto` and `local` are left to Ray. Done before a run writes anything: `ray.init` itself
    retries for minutes on an address where no cluster listens."""
    import concurrent.futures
    import socket

    require_ray()  # not installed: that is the message
    if address is None or address.strip() in ("auto", "local"):
        return
    text = address.strip()
    rest = text.split("://", 1)[1] if "://" in text else text
    host, sep, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RolloutError(f"--ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:  # name resolution has no timeout of its own: bounded here
        infos = pool.submit(socket.getaddrinfo, host, int(port_text), type=socket.SOCK_STREAM).result(timeout)
    except concurrent.futures.TimeoutError:
        raise RolloutError(
            f"--ray-address {address}: the host name {host!r} did not resolve within {timeout:g} s"
        ) from None
    except OSError as e:
        raise RolloutError(f"--ray-address {address}: unknown host {host!r} ({e.strerror or e})") from None
    finally:
        pool.shutdown(wait=False)
    last = None
    for family, kind, proto, _, where in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(where)
                break
        except OSError as e:
            last = e
    else:
        why = (
            "timed out"
            if isinstance(last, TimeoutError | socket.timeout)
            else (getattr(last, "strerror", None) or last)
        )
        raise RolloutError(
            f"--ray-address {address}: no Ray cluster answers there ({why}); start one with "
            f"`ray start --head` or check the address"
        )
    _probe_ray(address, float(os.environ.get("RACEMARL_RAY_CONNECT_TIMEOUT", 30)))


def _probe_ray(address: str, timeout: float) -> None:
    """Something listens at the address; whether it is a Ray cluster only Ray can tell, and `ray.init` retries for
    long and prints its own logs: it is asked in a child process, quietly, for at most `timeout` seconds."""
    import subprocess
    import sys

    code = (
        "import sys, ray\n"
        "try:\n    ray.init(address=sys.argv[1], log_to_driver=False, logging_level='error')\n"
        "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e).splitlines()[0] if str(e) else '')\n"
        "    sys.exit(1)\nray.shutdown()\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, address],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RolloutError(
            f"--ray-address {address}: no Ray cluster answered within {timeout:g} s (something listens "
            "there, but not Ray's head node?); check the address "
            "(RACEMARL_RAY_CONNECT_TIMEOUT=S waits longer)"
        ) from None
    if out.returncode != 0:
        why = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else f"exit {out.returncode}"
        raise RolloutError(f"--ray-address {address}: cannot join a Ray cluster there ({why[:200]})")


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
                try:
                    ray.init(address=rc.ray_address, **quiet)
                except ConnectionError as e:
                    raise RolloutError(f"--ray-address {rc.ray_address}: {str(e).splitlines()[0]}") from None
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
                    from racemarl.envs.base import EnvFailure

                    cause = getattr(e, "cause", None)
                    if isinstance(cause, EnvFailure):
                        raise EnvFailure(str(cause), detail=str(e)) from None
                    raise RolloutError(
                        f"rollout worker {i} ({_block_label(self.blocks[i])}) raised an exception:\n{e}"
                    ) from None
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
