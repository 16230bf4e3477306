"""Grids of training runs: `racemarl sweep`.

Every (task, algo, seed) is one `python -m racemarl train` subprocess writing to its own run
directory `OUT/<task>__<algo>__s<seed>` (characters other than letters, digits, `.`, `_` and `-` in
the task become `_`), with its output in `OUT/logs/<name>.log`. At most `workers` run at once.

Restarting a sweep is safe and finishes the grid:
- a run whose summary.json covers the budget is skipped;
- a run with `checkpoints/latest.pt` continues with `train --resume` (metrics.csv is rewritten from
  the checkpoint, so rows logged after the last checkpoint are not duplicated);
- a run directory without a checkpoint (killed before its first save) is deleted and started anew.

Children die with the sweep: they share its process group (Ctrl-C reaches them), a SIGTERM or
SIGINT sent to the sweep alone is forwarded to them, and on Linux each child asks the kernel for
SIGKILL when the sweep process dies (PR_SET_PDEATHSIG), so even `kill -9` of the sweep leaves no
orphan writing into a run directory. A lock file (`OUT/.sweep.lock`) stops two sweeps from working
on one folder at the same time.

`OUT/sweep.json` records the config of the folder (`--config` or the per-task presets of
`--preset`, `--set`, `--eval-interval`, `--eval-episodes`); a restart must use the same ones (the
budget and the grid may change). With `--preset paper-mamujoco|paper-smax` (`racemarl.experiment.presets`) each
task runs with its own preset file and, unless `--total-steps` is given, its preset's budget.
`OUT/index.json` lists the grid: task, algo, seed, run dir, status, final and best eval return.
The grid itself (`SweepSpec`, `Point`, run names) is in `sweep_grid.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from racemarl.config import ConfigError
from racemarl.experiment.sweep_grid import Point, SweepSpec, parse_names, parse_seeds, run_name  # noqa: F401
from racemarl.records.runs import LATEST_CHECKPOINT, RunDirError

BACKENDS = ("local", "ray", "slurm")
SWEEP_FILE = "sweep.json"
INDEX_FILE = "index.json"
LOCK_FILE = ".sweep.lock"
LOG_DIR = "logs"
POLL_S = 0.2
SLURM_POLL_S = 3.0  # squeue is asked this often while a sweep follows its Slurm tasks
GRACE_S = 10.0
NOTICE_S = 0.5


class SweepInterrupted(Exception):
    """The sweep received SIGINT or SIGTERM."""


# ---------------------------------------------------------------- one run


def run_state(run_dir: Path, total_steps: int) -> str:
    """'finished', 'resume' (a checkpoint to continue from) or 'new'."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:  # an unreadable or foreign summary.json (not an object, no step count) is no proof of a finished run
            done = json.loads(summary.read_text()).get("total_env_steps", 0) >= total_steps
        except (OSError, ValueError, AttributeError, TypeError):
            done = False
        if done:
            return "finished"
    if (run_dir / LATEST_CHECKPOINT).is_file():
        return "resume"
    return "new"


def train_command(p: Point, spec: SweepSpec, run_dir: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "racemarl", "train", "--no-progress", "--total-steps", str(spec.steps_for(p.task))]
    if resume:
        return cmd + ["--resume", str(run_dir)]
    cmd += ["--task", p.task, "--algo", p.algo, "--seed", str(p.seed), "--out", str(run_dir)]
    if spec.config_for(p.task):
        cmd += ["--config", str(spec.config_for(p.task))]
    if spec.eval_interval:
        cmd += ["--eval-interval", str(spec.eval_interval)]
    if spec.eval_episodes:
        cmd += ["--eval-episodes", str(spec.eval_episodes)]
    for s in spec.sets:
        cmd += ["--set", s]
    return cmd


def _die_with_parent(parent_pid: int):
    """preexec_fn: SIGKILL this child when the sweep process dies (Linux); no-op elsewhere."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                pass
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def launch(cmd: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent(os.getpid()),
        )


def run_blocking(cmd: list[str], log_path: str) -> int:
    """One run to the end in this process's child (used by the ray backend's tasks)."""
    return launch(cmd, Path(log_path)).wait()


def last_error_line(log_path: Path) -> str | None:
    if not log_path.is_file():
        return None
    lines = [
        ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("# ")
    ]
    return lines[-1][:1000] if lines else None  # one line; long enough for a resume hint with its path


# ---------------------------------------------------------------- the sweep


class Sweep:
    def __init__(
        self,
        spec: SweepSpec,
        out: str | Path,
        workers: int | None = None,
        backend: str = "local",
        echo=print,
        slurm=None,
        wait: bool = True,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"--backend: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if workers is not None and workers < 1:
            raise ConfigError("--workers must be >= 1")
        if backend != "slurm" and (slurm is not None or not wait):
            raise ConfigError("--slurm-* options and --no-wait are for --backend slurm")
        self.spec, self.backend, self.echo = spec, backend, echo
        self.out = Path(out).resolve()
        self.slurm, self.wait = slurm, wait
        # slurm: at most `workers` array tasks at once when given (else as many as Slurm grants)
        self.workers = workers if backend == "slurm" else (workers or os.cpu_count() or 1)
        self.points = spec.points()
        self.status: dict[Point, dict] = {}
        self._lock: Any = None  # FolderLock of OUT, while running
        self._signal: str | None = None  # set by the SIGINT/SIGTERM handler

    def _check_signal(self) -> None:
        if self._signal is not None:
            raise SweepInterrupted(self._signal)

    def run_dir(self, p: Point) -> Path:
        return self.out / p.name

    def log_path(self, p: Point) -> Path:
        return self.out / LOG_DIR / f"{p.name}.log"

    # -------------------------------------------------------------- bookkeeping
    def _check_folder_config(self) -> None:
        path = self.out / SWEEP_FILE
        mine = self.spec.folder_config()
        if path.is_file():
            try:
                saved = json.loads(path.read_text()).get("folder_config", {})
            except (json.JSONDecodeError, AttributeError) as e:
                raise RunDirError(f"{path} is not a readable sweep file ({e}); use another --out") from None
            diffs = [
                f"{k}: {saved.get(k)!r} (now {mine.get(k)!r})"
                for k in mine
                if _comparable(k, saved.get(k)) != _comparable(k, mine.get(k))
            ]
            if diffs:
                raise RunDirError(
                    f"{self.out} was started with other settings ({'; '.join(diffs)}); "
                    f"restart it with the same ones or use another --out"
                )
        data = {
            "folder_config": mine,
            "tasks": self.spec.tasks,
            "algos": self.spec.algos,
            "seeds": self.spec.seeds,
            "total_steps": self.spec.total_steps,
        }
        _write_json(path, data)

    def _check_out(self) -> None:
        """--out: a new or empty folder, or a sweep folder (with sweep.json) to continue; nothing else."""
        from racemarl.records.runs import check_output_dir

        check_output_dir(self.out)
        from racemarl.records.runs import has_content

        if has_content(self.out) and not (self.out / SWEEP_FILE).is_file():
            raise RunDirError(
                f"{self.out} is not empty and is not a sweep folder (no {SWEEP_FILE}); choose a new or empty folder"
            )

    def _acquire_lock(self) -> None:
        from racemarl.records.runs import FolderLock

        self._lock = FolderLock(self.out / LOCK_FILE, "sweep").acquire()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def entry(self, p: Point, status: str, **extra) -> dict:
        run_dir = self.run_dir(p)
        e = {
            "task": p.task,
            "algo": p.algo,
            "seed": p.seed,
            "run_dir": p.name,
            "status": status,
            "final_eval_return": None,
            "best_eval_return": None,
            "env_steps": None,
            "log": str(Path(LOG_DIR) / f"{p.name}.log"),
        }
        summary = run_dir / "summary.json"
        if status == "finished" and summary.is_file():
            s = json.loads(summary.read_text())
            e.update(
                final_eval_return=s.get("final_eval_return"),
                best_eval_return=s.get("best_eval_return"),
                env_steps=s.get("total_env_steps"),
            )
        e.update(extra)
        return e

    def write_index(self) -> None:
        entries = [self.status.get(p) or self.entry(p, "pending") for p in self.points]
        _write_json(self.out / INDEX_FILE, {"total_steps": self.spec.total_steps, "runs": entries})

    def _finish(self, p: Point, rc: int, interrupted: bool) -> None:
        state = run_state(self.run_dir(p), self.spec.steps_for(p.task))
        if state == "finished":
            self.status[p] = self.entry(p, "finished")
            e = self.status[p]
            self.echo(f"done     {p.label()}: final {_fmt(e['final_eval_return'])}, best {_fmt(e['best_eval_return'])}")
        elif interrupted:
            self.status[p] = self.entry(p, "interrupted", returncode=rc)
        else:
            err = last_error_line(self.log_path(p))
            self.status[p] = self.entry(p, "failed", returncode=rc, error=err)
            self.echo(f"FAILED   {p.label()} (exit {rc}): {err or '?'}; log: {self.log_path(p)}")
        self.write_index()

    def _prepare(self, p: Point) -> list[str] | None:
        """The command for a grid point, or None if it is finished (or being trained by another process)."""
        from racemarl.records.runs import TRAIN_LOCK, FolderLock

        run_dir = self.run_dir(p)
        other = FolderLock(run_dir / TRAIN_LOCK, "racemarl train").holder() if run_dir.is_dir() else None
        if other is not None:
            self.status[p] = self.entry(p, "busy", error=f"another process (pid {other}) is training it")
            self.echo(f"busy     {p.label()}: another process (pid {other}) is training it; left alone")
            return None
        state = run_state(run_dir, self.spec.steps_for(p.task))
        if state == "finished":
            self.status[p] = self.entry(p, "finished")
            self.echo(f"skip     {p.label()} (finished)")
            return None
        if state == "new" and run_dir.exists():
            if (run_dir / "summary.json").exists():  # finished a smaller budget, checkpoint gone: keep it
                err = "cannot extend the budget: the run has summary.json but no checkpoints/latest.pt"
                self.status[p] = self.entry(p, "failed", error=err)
                self.echo(f"FAILED   {p.label()}: {err}")
                return None
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to continue from
        return train_command(p, self.spec, run_dir, resume=state == "resume")

    # -------------------------------------------------------------- running
    def run(self) -> int:
        """Run the grid; 0 if every run finished, 1 if one failed, 130 if interrupted."""
        self.spec.validate()
        if self.backend == "ray":
            _require_ray()
        if self.backend == "slurm":
            from racemarl.experiment.slurm import SlurmOptions, require_submitit

            self.slurm = self.slurm or SlurmOptions()
            self.slurm.validate()
            require_submitit()
        self._check_out()
        from racemarl.records.runs import has_content

        fresh = not has_content(self.out)  # what this command writes there, a refused Slurm submission removes
        existed = self.out.is_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        refused = False
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def interrupt(signum, _frame):  # only a flag: the loops stop their children, then raise
            self._signal = signal.Signals(signum).name

        try:
            self._check_folder_config()
            for sig in previous:
                signal.signal(sig, interrupt)
            todo, following = [], {}
            queued = self._slurm_in_queue() if self.backend == "slurm" else {}
            for p in self.points:
                if p.name in queued:  # a task of an earlier submission is still queued or running: follow it
                    following[p] = queued[p.name]
                    self.status[p] = self.entry(p, "queued", slurm_job=queued[p.name])
                    continue
                cmd = self._prepare(p)
                if cmd is not None:
                    todo.append((p, cmd))
                self._check_signal()
            self.write_index()
            n_done = len(self.points) - len(todo) - len(following)
            at_once = f"{min(self.workers, max(len(todo), 1))} at a time" if self.workers else "as Slurm grants"
            self.echo(
                f"sweep {self.out}: {len(self.points)} runs, {n_done} finished, {len(todo)} to run"
                + (f", {len(following)} already in the Slurm queue" if following else "")
                + f", {at_once} ({self.backend})"
            )
            if self.backend == "slurm":
                if todo or following:
                    try:
                        submitted = self._run_slurm(todo, following)
                    except RunDirError:
                        refused = fresh
                        raise
                    if not submitted:
                        return 0  # --no-wait: submitted
            elif todo:
                (self._run_ray if self.backend == "ray" else self._run_local)(todo)
        except SweepInterrupted as e:
            self.write_index()
            if self.backend == "slurm":
                self.echo(
                    f"sweep interrupted ({e}); the Slurm tasks go on: run the same command again to follow "
                    "them (scancel stops them)"
                )
            else:
                self.echo(f"sweep interrupted ({e}); run the same command again to continue")
            return 130
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._release_lock()
            if refused:  # sbatch refused the grid of a new (or empty) folder: leave it as it was
                for child in list(self.out.iterdir()) if existed else [self.out]:
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink(missing_ok=True)
        self.write_index()
        statuses = [self.status[p]["status"] for p in self.points]
        failed, stopped = statuses.count("failed"), statuses.count("interrupted") + statuses.count("busy")
        self.echo(
            f"sweep finished: {statuses.count('finished')}/{len(self.points)} runs finished"
            + (f", {failed} failed" if failed else "")
            + (f", {stopped} stopped before the end (run the same command again to continue them)" if stopped else "")
            + f"; index: {self.out / INDEX_FILE}"
        )
        return 1 if failed or stopped else 0

    def _run_local(self, todo: list[tuple[Point, list[str]]]) -> None:
        queue = list(todo)
        running: dict[Point, subprocess.Popen] = {}
        try:
            while queue or running:
                self._check_signal()
                while queue and len(running) < (self.workers or 1):
                    p, cmd = queue.pop(0)
                    running[p] = launch(cmd, self.log_path(p))
                    self.status[p] = self.entry(p, "running")
                    self.echo(f"{'resume' if '--resume' in cmd else 'start':8} {p.label()} -> {self.run_dir(p)}")
                    self.write_index()
                for p, proc in list(running.items()):
                    rc = proc.poll()
                    if rc is not None:
                        del running[p]
                        self._finish(p, rc, interrupted=False)
                time.sleep(POLL_S)
        except SweepInterrupted:
            _stop(list(running.values()), [self.log_path(p) for p in running])
            for p, proc in running.items():
                self._finish(p, proc.returncode if proc.returncode is not None else -1, interrupted=True)
            raise

    def _run_ray(self, todo: list[tuple[Point, list[str]]]) -> None:
        import ray

        refs = {}
        try:
            if not ray.is_initialized():
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, logging_level="error")  # type: ignore[arg-type]  # ray takes a level's name too
            task = ray.remote(num_cpus=1, max_retries=0)(run_blocking)
            for p, cmd in todo:
                refs[task.remote(cmd, str(self.log_path(p)))] = p
                self.status[p] = self.entry(p, "queued")
                self.echo(f"{'resume' if '--resume' in cmd else 'queue':8} {p.label()} -> {self.run_dir(p)}")
            self.write_index()
            while refs:
                self._check_signal()
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    p = refs.pop(ref)
                    try:
                        rc = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a task that died
                        self.echo(f"ray task of {p.label()} failed: {type(e).__name__}: {e}")
                        rc = -1
                    self._finish(p, rc, interrupted=False)
        except SweepInterrupted:
            for ref in refs:
                ray.cancel(ref, force=True)
            for p in refs.values():
                self._finish(p, -1, interrupted=True)
            raise
        finally:
            ray.shutdown()

    # -------------------------------------------------------------- slurm (`experiment/slurm.py`)
    def _slurm_in_queue(self) -> dict[str, str]:
        """{run name: job id} of this folder's earlier Slurm tasks that are still queued or running."""
        from racemarl.experiment.slurm import load_jobs, queue_states

        jobs = load_jobs(self.out)
        alive = queue_states(list(jobs.values()))
        return {name: jid for name, jid in jobs.items() if jid in alive}

    def _run_slurm(self, todo: list[tuple[Point, list[str]]], following: dict[Point, str]) -> bool:
        """Submit `todo` as one job array and follow it (with the tasks in `following`) until every task has left
        the queue; False when submitted without waiting (--no-wait)."""
        from racemarl.experiment.slurm import SlurmTask, load_jobs, queue_states, save_jobs, submit

        jobs = dict(following)
        if todo:
            ids = submit(self.out, [SlurmTask(str(self.out), p, self.spec) for p, _ in todo], self.slurm, self.workers)
            recorded = load_jobs(self.out)
            for (p, _), jid in zip(todo, ids):
                jobs[p] = recorded[p.name] = jid
                self.status[p] = self.entry(p, "queued", slurm_job=jid)
            save_jobs(self.out, recorded)
            self.echo(
                f"submitted {len(ids)} tasks as Slurm job array {ids[0].split('_')[0]} "
                f"(logs: {self.out / LOG_DIR}, Slurm's: {self.out / 'slurm'})"
            )
        self.write_index()
        if not self.wait:
            self.echo("not waiting (--no-wait): run the same command again to follow the tasks and collect results")
            return False
        shown: dict[Point, str] = {}
        while jobs:
            states = queue_states(list(jobs.values()))
            for p, jid in list(jobs.items()):
                state = states.get(jid)
                if state is None:  # left the queue: finished, failed, cancelled or out of time
                    del jobs[p]
                    self._finish_slurm(p, jid)
                    continue
                status = {"PENDING": "queued", "RUNNING": "running"}.get(state, state.lower())
                if shown.get(p) != status:
                    shown[p] = status
                    self.status[p] = self.entry(p, status, slurm_job=jid)
                    self.echo(f"{status:8} {p.label()} (Slurm task {jid})")
                    self.write_index()
            deadline = time.monotonic() + SLURM_POLL_S
            while jobs and time.monotonic() < deadline:
                self._check_signal()
                time.sleep(POLL_S)
            self._check_signal()
        return True

    def _finish_slurm(self, p: Point, jid: str) -> None:
        state = run_state(self.run_dir(p), self.spec.steps_for(p.task))
        if state == "finished":
            self._finish(p, 0, interrupted=False)
            return
        err = last_error_line(self.log_path(p))
        if state == "resume" and not (err or "").startswith("racemarl: error"):
            self.status[p] = self.entry(p, "interrupted", slurm_job=jid)
            self.echo(
                f"stopped  {p.label()} (Slurm task {jid} ended before the run did: cancelled, preempted or out "
                "of time); its checkpoint is kept: run the same command again to continue it"
            )
            self.write_index()
            return
        self.status[p] = self.entry(p, "failed", slurm_job=jid, error=err)
        self.echo(f"FAILED   {p.label()} (Slurm task {jid}): {err or '?'}; log: {self.log_path(p)}")
        self.write_index()


STOPPING_MARK = "finishing the current update, then writing a checkpoint"  # printed by a run's signal handler


def _already_stopping(log_path: Path | None) -> bool:
    """The run's log shows, since its last launch, that it got a signal and is writing its checkpoint."""
    if log_path is None or not log_path.is_file():
        return False
    text = log_path.read_text(errors="replace")
    return STOPPING_MARK in text[text.rfind("\n# ") + 1 :]


def _stop(procs: list[subprocess.Popen], logs: list[Path] | None = None) -> None:
    """Let children that already got the signal (Ctrl-C reaches the whole group) finish their checkpoint;
    send SIGINT to the others (a second signal would stop a run at once, losing that checkpoint); SIGKILL
    whatever is left after the grace period."""
    log_paths: list[Path | None] = list(logs) if logs is not None else [None] * len(procs)
    deadline = time.monotonic() + NOTICE_S  # a run that got the signal prints STOPPING_MARK at once
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p, log in zip(procs, log_paths):
        if p.poll() is None and not _already_stopping(log):
            try:
                p.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RunDirError("--backend ray needs ray: pip install 'racemarl[ray]'") from None


def set_values(sets: list[str] | None) -> dict:
    """The config that --set flags make from the defaults: the same settings given in another order or
    spelling (1e-3 vs 0.001) compare equal; flags that do not apply compare as their text."""
    from racemarl.config import Config, apply_override, to_dict

    cfg = Config()
    try:
        for assignment in sets or []:
            apply_override(cfg, str(assignment))
    except ConfigError:
        return {"unparsed": sorted(map(str, sets or []))}
    return to_dict(cfg)


def _comparable(key: str, value):
    return set_values(value) if key == "set" else value


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"
