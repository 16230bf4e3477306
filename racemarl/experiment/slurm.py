"""The Slurm backend of `racemarl sweep` (`--backend slurm`): every grid point that is still to run is one task of
a Slurm job array, submitted with submitit (https://github.com/facebookincubator/submitit).

In the job (`SlurmTask.__call__`), the point's state is read when the task starts, not when it was submitted:
finished: nothing to do; a checkpoint: `racemarl train --resume`; else a fresh `racemarl train` (a folder left
by a start that never checkpointed is cleared first). Training runs as a child process writing to the sweep's
`logs/<run>.log`, exactly as with the local backend, and the run folder's lock (`RUN/.train.lock`) guarantees
that no two processes ever train one run, whatever Slurm does.

Preemption and time limits: the array is submitted with `--signal=USR2@S` (`signal_delay_s`, S seconds before the
time limit) and `--requeue`. On USR2 (the time limit is near, or a preemption notice) submitit calls
`SlurmTask.checkpoint`: the training child gets SIGTERM, writes its checkpoint and stops; submitit then requeues
the task, which continues from that checkpoint. When Slurm ends a task with SIGTERM (scancel, preemption without
notice), the child gets the SIGTERM itself and checkpoints within Slurm's KillWait; a requeued task, or the same
`racemarl sweep` command run again, continues it.

The sweep process submits, records the job ids in OUT/slurm/jobs.json and follows the tasks with squeue until
they have left the queue, keeping OUT/index.json up to date. Run again, it re-attaches to tasks still in the queue
instead of submitting them twice. Ctrl-C stops only the following: the tasks go on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from racemarl.config import ConfigError
from racemarl.records.runs import RunDirError

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
SLURM_EXTRA = "pip install 'racemarl[slurm]'"
CHILD_GRACE_S = 120.0  # how long `checkpoint` waits for the training child to write its checkpoint


@dataclass
class SlurmOptions:
    """What each array task asks Slurm for (`racemarl sweep --slurm-*`)."""

    partition: str | None = None
    time: str | None = None  # minutes, or [D-]HH:MM[:SS]
    cpus: int = 1
    mem: str | None = None  # e.g. 4G
    gpus: int = 0
    options: list[str] = field(default_factory=list)  # extra sbatch options, KEY=VALUE or KEY
    setup: list[str] = field(default_factory=list)  # shell lines run before each task (module load ..., source ...)
    signal_delay_s: int = 120
    max_requeues: int = 50

    def time_minutes(self) -> int | None:
        if self.time is None:
            return None
        return parse_time(self.time)

    def validate(self) -> None:
        self.time_minutes()
        if self.cpus < 1:
            raise ConfigError(f"--slurm-cpus must be >= 1, got {self.cpus}")
        if self.gpus < 0:
            raise ConfigError(f"--slurm-gpus must be >= 0, got {self.gpus}")
        if self.mem is not None and not _valid_mem(self.mem):
            raise ConfigError(f"--slurm-mem {self.mem!r}: expected a size such as 4G, 500M or 16000 (MB)")
        if self.partition is not None and not self.partition.strip():
            raise ConfigError("--slurm-partition must not be empty")
        self.additional()

    def additional(self) -> dict:
        out = {}
        for opt in self.options:
            key, sep, value = opt.lstrip("-").partition("=")
            if not key or " " in key:
                raise ConfigError(
                    f"--slurm-option {opt!r}: expected an sbatch option as KEY=VALUE or KEY "
                    "(e.g. account=my_lab, qos=high, exclusive)"
                )
            out[key.replace("-", "_")] = value if sep else True
        return out

    def executor_parameters(self, workers: int | None) -> dict:
        params = {
            "cpus_per_task": self.cpus,
            "signal_delay_s": self.signal_delay_s,
            "job_name": "racemarl-sweep",
            "additional_parameters": {"requeue": True, **self.additional()},
            "stderr_to_stdout": True,
        }
        if self.partition:
            params["partition"] = self.partition
        minutes = self.time_minutes()
        if minutes is not None:
            params["time"] = minutes
        if self.mem:
            params["mem"] = self.mem
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if workers:
            params["array_parallelism"] = workers
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def parse_time(text: str) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) as whole minutes (rounded up)."""
    t = str(text).strip()
    try:
        days = 0
        if "-" in t:
            d, t = t.split("-", 1)
            days = int(d)
            parts = [int(x) for x in t.split(":")] + [0] * (3 - len(t.split(":")))
            h, m, s = parts[:3]
        else:
            parts = [int(x) for x in t.split(":")]
            if len(parts) == 1:
                h, m, s = 0, parts[0], 0
            elif len(parts) == 2:
                h, m, s = 0, parts[0], parts[1]
            elif len(parts) == 3:
                h, m, s = parts
            else:
                raise ValueError
        if min(days, h, m, s) < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--slurm-time {text!r}: expected minutes or [D-]HH:MM[:SS] (e.g. 90, 1:30:00, 2-00:00:00)"
        ) from None
    minutes = days * 1440 + h * 60 + m + (1 if s else 0)
    if minutes < 1:
        raise ConfigError(f"--slurm-time {text!r} must be at least one minute")
    return minutes


def _valid_mem(text: str) -> bool:
    t = text.strip().upper()
    if t and t[-1] in "KMGT":
        t = t[:-1]
    return t.isdigit() and int(t) > 0


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise RunDirError(f"--backend slurm needs submitit: {SLURM_EXTRA}") from None
    if shutil.which("sbatch") is None:
        raise RunDirError("--backend slurm needs Slurm's sbatch on the PATH (run the sweep on a Slurm login node)")
    return submitit


# ---------------------------------------------------------------- in the job


class SlurmTask:
    """One grid point as a Slurm array task (pickled by submitit; see the module docstring)."""

    def __init__(self, out: str, point, spec):
        self.out, self.point, self.spec = out, point, spec
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._proc = None

    def command(self) -> list[str] | None:
        """The training command for the point as it is now, or None when it is finished."""
        from racemarl.experiment.sweep import run_state, train_command
        from racemarl.records.runs import TRAIN_LOCK, FolderLock

        run_dir = Path(self.out) / self.point.name
        state = run_state(run_dir, self.spec.steps_for(self.point.task))
        if state == "finished":
            return None
        if state == "new" and run_dir.exists() and FolderLock(run_dir / TRAIN_LOCK, "").holder() is None:
            shutil.rmtree(run_dir)  # a start that never wrote a checkpoint, and nobody is training it
        return train_command(self.point, self.spec, run_dir, resume=state == "resume")

    def __call__(self) -> int:
        from racemarl.experiment.sweep import LOG_DIR

        cmd = self.command()
        if cmd is None:
            return 0
        log_path = Path(self.out) / LOG_DIR / f"{self.point.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            job = (
                os.environ["SLURM_ARRAY_JOB_ID"] + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "?")
                if "SLURM_ARRAY_JOB_ID" in os.environ
                else os.environ.get("SLURM_JOB_ID", "?")
            )
            log.write(
                f"# {time.strftime('%Y-%m-%d %H:%M:%S')} slurm task {job} "
                f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')}): {shlex.join(cmd)}\n"
            )
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_child_setup,
            )
        while True:  # poll, not wait: `checkpoint` (a signal handler in this thread) polls the child too
            rc = self._proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.5)

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on USR2 (time limit near, or a preemption notice): the training child writes its
        checkpoint and stops; the task is requeued and continues from it."""
        import submitit

        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + CHILD_GRACE_S
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(SlurmTask(self.out, self.point, self.spec))


def _child_setup() -> None:
    """preexec_fn of the training child: Slurm's USR2 notice is the task's (submitit) to handle, not the child's
    (its default action would kill it without a checkpoint); the child dies with the task (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass


# ---------------------------------------------------------------- in the sweep process


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: Slurm state} of the given array tasks ("123_4") still in the queue (pending, running, ...). One
    squeue call per job array: squeue refuses a whole list when one array in it has left the queue."""
    states: dict[str, str] = {}
    for array in sorted({j.split("_")[0] for j in job_ids}):
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-j", array, "-o", "%i|%T"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode != 0 and "Invalid job id" in out.stderr:
            continue  # the whole array has left the queue
        if out is None or out.returncode != 0:  # squeue did not answer: count its tasks as still there
            states.update({j: "UNKNOWN" for j in job_ids if j.split("_")[0] == array})
            continue
        for line in out.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            states[jid] = state
    return {j: states[j] for j in job_ids if j in states}


def load_jobs(out: Path) -> dict[str, str]:
    path = out / SLURM_DIR / JOBS_FILE
    try:
        data = json.loads(path.read_text())
        return {str(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def save_jobs(out: Path, jobs: dict[str, str]) -> None:
    path = out / SLURM_DIR / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jobs, indent=2) + "\n")
    os.replace(tmp, path)


def submit(out: Path, tasks: list[SlurmTask], options: SlurmOptions, workers: int | None) -> list[str]:
    """Submit the tasks as one job array; their job ids ("<array id>_<index>") in order."""
    submitit = require_submitit()
    executor = submitit.SlurmExecutor(folder=out / SLURM_DIR / "%j", max_num_timeout=options.max_requeues)
    executor.update_parameters(**options.executor_parameters(workers))
    try:  # submitit prints sbatch's complaints to sys.stderr before raising them: one line instead
        with contextlib.redirect_stderr(io.StringIO()):
            jobs = executor.submit_array(tasks)
    except Exception as e:  # noqa: BLE001 - sbatch refused (a partition, a limit): its message, one line
        text = " ".join(str(e).split())
        raise RunDirError(f"sbatch refused the job array: {text[:600]}") from None
    return [str(j.job_id) for j in jobs]
