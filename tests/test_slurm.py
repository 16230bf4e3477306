"""`racemarl sweep --backend slurm` against a real single-node Slurm (munge, slurmctld, slurmd on this machine),
started by tests/slurm/cluster.sh and stopped again when these tests are done (when they started it).

A 2 x 2 grid (race, matd3 x seeds 1, 2) on a slow fake simulator: one task is cancelled in the middle of its run
(scancel: SIGTERM), another gets Slurm's preemption/time-limit notice (USR2) and is requeued. The preempted one
continues by itself from its checkpoint; the cancelled one when the same sweep command runs again. Skipped only
where Slurm cannot be installed (not root, no apt-get)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "slurm" / "cluster.sh"
CLUSTER_DIR = Path(os.environ.get("RACEMARL_TEST_SLURM_DIR", "/tmp/racemarl-test-slurm"))
TASK = f"pettingzoo/{ROOT / 'tests' / 'bad_env.py'}:make_env"
SETS = [
    "env.max_episode_steps=12",
    "env.kwargs.delay=0.03",
    "net.encoder_hidden=16",
    "net.embed_dim=8",
    "net.critic_hidden=[16,16]",
    "net.policy_embed_dim=8",
    "race.mi_hidden=8",
    "learner.batch_size=16",
    "learner.start_steps=24",
    "learner.buffer_size=1000",
    "race.pop_size=2",
]


@pytest.fixture(scope="module")
def slurm_cluster():
    pytest.importorskip("submitit", reason="--backend slurm needs submitit: pip install 'racemarl[slurm]'")
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster is a Linux one (Debian's slurm-wlm)")
    r = subprocess.run(["bash", str(SCRIPT), "start", str(CLUSTER_DIR)], capture_output=True, text=True, timeout=900)
    if r.returncode == 3:
        pytest.skip(f"Slurm cannot be installed here: {r.stderr.strip()}")
    assert r.returncode == 0, f"the test Slurm did not start: {r.stderr.strip()}"
    values = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = values["SLURM_CONF"]
    try:
        yield values["SLURM_CONF"]
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if values.get("STARTED") == "1":
            subprocess.run(["bash", str(SCRIPT), "stop", str(CLUSTER_DIR)], capture_output=True, timeout=120)


def _sweep_cmd(out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "racemarl",
        "sweep",
        "--backend",
        "slurm",
        "--tasks",
        TASK,
        "--algos",
        "race,matd3",
        "--seeds",
        "1-2",
        "--total-steps",
        "240",
        "--out",
        str(out),
        "--eval-interval",
        "48",
        "--eval-episodes",
        "1",
        "--slurm-time",
        "15",
        "--slurm-option",
        "comment=racemarl-test",
    ]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _wait_for(what: str, check, timeout: float = 180.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) while waiting for {what}: {proc.stdout.read()}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _scancel(*args: str) -> None:
    """scancel, not waited on for long: a task that requeues itself while scancel signals it makes scancel retry
    for minutes ("Job can not be altered now") although the signal has been delivered; the outcome is checked."""
    try:
        subprocess.run(["scancel", *args], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _start_now_once_requeued(job: str, proc: subprocess.Popen) -> None:
    """Slurm holds a requeued task back for a couple of minutes (its BeginTime); a test has no time to spare."""

    def pending() -> bool:
        r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
        return r.stdout.strip() == "PENDING"

    _wait_for("the requeued task", pending, timeout=60, proc=proc)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)


def _mid_run(run: Path) -> bool:
    return (run / "checkpoints" / "latest.pt").is_file() and not (run / "summary.json").exists()


def _eval_steps(run: Path) -> list[int]:
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [int(r.split(",")[0]) for r in rows]


def test_a_grid_on_slurm_survives_a_cancelled_and_a_preempted_task(slurm_cluster, tmp_path):
    out = tmp_path / "grid"
    proc = subprocess.Popen(_sweep_cmd(out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        jobs = _wait_for(
            "the submission",
            lambda: (out / "slurm" / "jobs.json").is_file() and json.loads((out / "slurm" / "jobs.json").read_text()),
            proc=proc,
        )
        names = sorted(jobs)
        cancelled = next(n for n in names if "__race__s1" in n)
        preempted = next(n for n in names if "__race__s2" in n)
        _wait_for(
            "both race runs in the middle", lambda: _mid_run(out / cancelled) and _mid_run(out / preempted), proc=proc
        )
        _scancel("--signal=USR2", jobs[preempted])  # the notice of a preemption or time limit: checkpoint, requeue
        _scancel(jobs[cancelled])  # SIGTERM: the run checkpoints, the task ends
        _start_now_once_requeued(jobs[preempted], proc)
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, text
    assert "stopped" in text and "race" in text and "run the same command again" in text
    index = {e["run_dir"]: e for e in json.loads((out / "index.json").read_text())["runs"]}
    assert index[cancelled]["status"] == "interrupted"
    assert sum(e["status"] == "finished" for e in index.values()) == 3, index
    # the preempted task was requeued by itself and continued from its checkpoint
    log = (out / "logs" / f"{preempted}.log").read_text()
    launches = [ln for ln in log.splitlines() if ln.startswith("# ") and "slurm task" in ln]
    assert len(launches) == 2 and "--resume" in launches[1] and "(restart 1)" in launches[1], log
    # run again: the cancelled run continues from its checkpoint, the finished ones are skipped
    again = subprocess.run(_sweep_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skip ") == 3 and "4/4 runs finished" in again.stdout
    log = (out / "logs" / f"{cancelled}.log").read_text()
    launches = [ln for ln in log.splitlines() if ln.startswith("# ") and "slurm task" in ln]
    assert len(launches) == 2 and "--resume" in launches[1], log
    for name in (cancelled, preempted):  # nothing ran twice into one folder: every evaluation once, in order
        steps = _eval_steps(out / name)
        assert steps == sorted(set(steps)) and steps[-1] >= 240
        assert json.loads((out / name / "summary.json").read_text())["total_env_steps"] >= 240
    table = subprocess.run(
        [sys.executable, "-m", "racemarl", "table", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 0 and "race" in table.stdout and "matd3" in table.stdout, table.stderr


def test_slurm_options_are_checked_before_anything_is_written(tmp_path, capsys):
    from racemarl.cli import main

    out = tmp_path / "grid"
    base = ["sweep", "--tasks", "mpe/simple_spread", "--total-steps", "100", "--out", str(out)]
    for extra, words in (
        (["--backend", "slurm", "--slurm-time", "1:xx"], "--slurm-time"),
        (["--backend", "slurm", "--slurm-mem", "lots"], "--slurm-mem"),
        (["--backend", "slurm", "--slurm-cpus", "0"], "--slurm-cpus"),
        (["--slurm-partition", "gpu"], "only with --backend slurm"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_slurm_time_formats():
    from racemarl.config import ConfigError
    from racemarl.experiment.slurm import parse_time

    assert [parse_time(t) for t in ("90", "1:30", "2:00:00", "1-00:00:00", "0:00:30", "1-2")] == [
        90,
        2,
        120,
        1440,
        1,
        1560,
    ]
    with pytest.raises(ConfigError):
        parse_time("0")


def test_without_sbatch_the_slurm_backend_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    import racemarl.experiment.slurm as slurm
    from racemarl.cli import main

    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    out = tmp_path / "grid"
    assert (
        main(["sweep", "--tasks", "mpe/simple_spread", "--total-steps", "100", "--out", str(out), "--backend", "slurm"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch" in err[0] and not out.exists()


@pytest.mark.parametrize("existing", [False, True])
def test_a_grid_sbatch_refuses_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, capfd, monkeypatch, existing):
    pytest.importorskip("submitit")
    from racemarl.cli import main

    bin_dir = tmp_path / "bin"  # an sbatch that refuses, as Slurm does for an unknown partition
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nosuch' >&2\n"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n"
    )
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "grid"
    if existing:
        out.mkdir()
    args = ["sweep", "--tasks", "mpe/simple_spread", "--total-steps", "100", "--out", str(out), "--backend", "slurm"]
    assert main([*args, "--slurm-partition", "nosuch"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch refused the job array" in err[0] and "Invalid partition name" in err[0], err
    assert (sorted(out.iterdir()) == []) if existing else not out.exists()
