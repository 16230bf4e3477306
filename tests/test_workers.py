"""Rollout workers: every backend and worker count trains bit-identically; killed workers are replayed."""

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from racemarl.acting.process_workers import ProcessWorkers
from racemarl.acting.ray_workers import RayWorkers
from racemarl.acting.rollout import EnvRunner, GenerationPlan, RunnerSetup
from racemarl.acting.workers import assign_slots
from racemarl.config import ConfigError
from racemarl.records import checkpoint as ckpt
from racemarl.records.metrics import WALL_CLOCK_COLUMNS, read_metrics
from racemarl.train import RunError, Trainer
from tests.conftest import tiny_config, tiny_train_args

STEPS = 320  # 4 generations of 4 slots (MARL team + 3 population teams) x 20 steps


def _config(backend="inline", workers=0, extra=()):
    return tiny_config(
        "race", total_steps=STEPS, extra=[f"rollout.backend={backend}", f"rollout.workers={workers}", *extra]
    )


def _train(cfg, run_dir):
    with Trainer(cfg, run_dir) as trainer:
        trainer.train()
    return trainer


def _outcome(run_dir):
    """What a run learned: its metrics (wall-clock columns aside), final weights, population and buffer."""
    rows = [{k: v for k, v in r.items() if k not in WALL_CLOCK_COLUMNS} for r in read_metrics(run_dir / "metrics.csv")]
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    tensors = {f"learner.{k}": v for k, v in state["learner"]["model"].items()}
    tensors.update({f"buffer.{k}": v for k, v in state["buffer"]["data"].items()})
    tensors["population"] = state["population"]
    return rows, tensors


def _assert_same(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


def _children() -> list[str]:
    """Live (non-zombie) worker processes started by this process: spawned multiprocessing children,
    not multiprocessing's resource tracker (it exits with the driver) nor helpers of other libraries
    that earlier tests may have left (e.g. wandb's service)."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,stat=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True, check=False
    ).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    return [
        " ".join(r)
        for r in rows
        if len(r) == 3 and not r[1].startswith("Z") and "spawn_main" in r[2] and "resource_tracker" not in r[2]
    ]


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inline")
    _train(_config(), run_dir)
    return _outcome(run_dir)


def test_slots_are_assigned_in_contiguous_blocks():
    assert assign_slots(6, 2) == [(0, 1, 2), (3, 4, 5)]
    assert assign_slots(5, 2) == [(0, 1, 2), (3, 4)]
    assert assign_slots(2, 8) == [(0,), (1,)]


def test_an_episode_does_not_depend_on_the_slots_beside_it():
    """Each slot's random stream and policy row are its own: any split of the slots gives the same episodes,
    here with the unshared-encoder ablation, exploration noise and random warm-up actions."""
    torch.manual_seed(0)
    n_slots, n_agents, d = 4, 6, 8
    setup = RunnerSetup(
        "mamujoco/HalfCheetah-6x1", {"agent_obsk": 0, "max_episode_steps": 15}, 16, d, n_slots, tuple(range(n_slots))
    )
    whole = EnvRunner(setup)
    names = dict(whole.actor.encoders.named_parameters())
    plan = GenerationPlan(
        slots=tuple(range(n_slots)),
        heads=torch.randn(n_slots, n_agents, 1, d + 1),
        encoders={},
        team_encoders={k: torch.randn(n_slots, *v.shape) * 0.3 for k, v in names.items()},
        noise_std=np.array([0.2, 0.0, 0.1, 0.0]),
        random_actions=np.array([True, False, False, False]),
        streams=[(7, 0, 3, t) for t in range(n_slots)],
    )
    expected = whole.run(plan)
    got = []
    for block in assign_slots(n_slots, 3):
        runner = EnvRunner(RunnerSetup(setup.task, setup.env_kwargs, 16, d, n_slots, block))
        got += runner.run(plan.part(block))
        runner.close()
    whole.close()
    assert [r.slot for r in got] == [0, 1, 2, 3]
    for a, b in zip(expected, got):
        assert a.episode_return == b.episode_return and a.length == b.length == 15
        for k in a.transitions:
            assert np.array_equal(a.transitions[k], b.transitions[k]), (a.slot, k)
    assert expected[1].episode_return != expected[3].episode_return


@pytest.mark.parametrize("shared", [True, False])
def test_slot_actor_is_the_learners_policy(shared):
    """The rollout actor computes what MATD3.act computes (up to float rounding), for shared and unshared encoders."""
    from racemarl.acting.rollout import SlotActor
    from racemarl.algorithms.matd3 import MATD3
    from racemarl.envs import make_env

    cfg = tiny_config("race")
    spec = make_env(cfg.env.task, max_episode_steps=20).spec
    learner = MATD3(spec, cfg, torch.Generator().manual_seed(0))
    n_slots = 5
    heads = torch.randn(n_slots, spec.n_agents, learner.layout.max_act, cfg.net.embed_dim + 1)
    team = None if shared else learner.fresh_encoder_params(n_slots)
    obs = torch.randn(n_slots, spec.n_agents, learner.max_obs)
    actor = SlotActor(spec, cfg.net.encoder_hidden, cfg.net.embed_dim, n_slots)
    assert actor.lean
    actor.load(
        GenerationPlan(
            tuple(range(n_slots)),
            heads,
            learner.encoders.state_dict(),
            team,
            np.zeros(n_slots),
            np.zeros(n_slots, bool),
            [()] * n_slots,
        )
    )
    torch.testing.assert_close(actor(obs), learner.act(obs, heads, team), rtol=1e-5, atol=1e-6)


def test_process_workers_train_like_inline(tmp_path, inline_run):
    trainer = _train(_config("process", 2), tmp_path)
    assert trainer.workers.n_workers == 2 and trainer.workers.restarts == 0
    _assert_same(_outcome(tmp_path), inline_run)
    assert _children() == []


def test_killed_worker_is_restarted_and_replayed(tmp_path, inline_run, monkeypatch, caplog):
    """Worker 1 is killed right after it got generation 2's orders, worker 0 while idle before generation 3."""
    generation, killed = [0], []
    play, dispatch = ProcessWorkers._play, ProcessWorkers._dispatch

    def counting_play(self, plan):
        generation[0] += 1
        if generation[0] == 3:
            killed.append(self.procs[0].process.pid)
            os.kill(killed[-1], signal.SIGKILL)
        return play(self, plan)

    def killing_dispatch(self, i, job):
        dispatch(self, i, job)
        if generation[0] == 2 and i == 1 and len(killed) == 0:
            killed.append(self.procs[1].process.pid)
            os.kill(killed[-1], signal.SIGKILL)

    monkeypatch.setattr(ProcessWorkers, "_play", counting_play)
    monkeypatch.setattr(ProcessWorkers, "_dispatch", killing_dispatch)
    with caplog.at_level(logging.WARNING, logger="racemarl.acting.workers"):
        trainer = _train(_config("process", 2), tmp_path)
    assert len(killed) == 2 and trainer.workers.restarts == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("rollout worker 1 (slots 2-3") and "SIGKILL" in m for m in warnings), warnings
    assert any(m.startswith("rollout worker 0 (slots 0-1") and "SIGKILL" in m for m in warnings), warnings
    _assert_same(_outcome(tmp_path), inline_run)
    assert _children() == []


def test_a_send_cut_off_by_a_workers_death_never_reaches_its_replacement(tmp_path, inline_run, monkeypatch):
    """The orders go out from a thread. One that was preempted inside its write (here: it took the pipe's file
    descriptor, then slept) while the driver saw the worker die must not finish that write into the replacement's
    pipe, which may reuse the descriptor: the replacement would get the orders twice and answer a later generation
    with a stale episode. The driver waits for the sender before it closes the old pipe."""
    import struct
    import time

    from racemarl.acting import process_workers

    real_send, dispatch = process_workers._send_quietly, ProcessWorkers._dispatch
    generation, killed = [0], []

    def preempted_send(conn, data):
        if getattr(conn, "preempted", False):
            fd = conn.fileno()
            time.sleep(1.0)  # the driver sees the death, restarts the worker, dispatches again
            try:
                os.write(fd, struct.pack("!i", len(data)) + data)  # what send_bytes writes
            except OSError:
                pass  # the old pipe's reader is dead (EPIPE) or the descriptor is gone
            return
        real_send(conn, data)

    def killing_dispatch(self, i, job):
        if generation[0] == 2 and i == 1 and not killed:
            self.procs[1].conn.preempted = True
            dispatch(self, i, job)
            killed.append(self.procs[1].process.pid)
            os.kill(killed[-1], signal.SIGKILL)
            return
        dispatch(self, i, job)

    def counting_play(self, plan, play=ProcessWorkers._play):
        generation[0] += 1
        return play(self, plan)

    monkeypatch.setattr(process_workers, "_send_quietly", preempted_send)
    monkeypatch.setattr(ProcessWorkers, "_dispatch", killing_dispatch)
    monkeypatch.setattr(ProcessWorkers, "_play", counting_play)
    trainer = _train(_config("process", 2), tmp_path)
    assert killed and trainer.workers.restarts == 1
    _assert_same(_outcome(tmp_path), inline_run)
    assert _children() == []


def test_a_worker_that_keeps_failing_stops_the_run(tmp_path, monkeypatch):
    dispatch = ProcessWorkers._dispatch

    def killing_dispatch(self, i, job):
        dispatch(self, i, job)
        os.kill(self.procs[i].process.pid, signal.SIGKILL)

    monkeypatch.setattr(ProcessWorkers, "_dispatch", killing_dispatch)
    cfg = _config("process", 1, ["rollout.max_restarts=1"])
    with pytest.raises(
        RunError,
        match=r"rollout worker 0 \(slots 0-3\) failed 2 times in a row, last: was killed by "
        r"SIGKILL.*rollout.max_restarts=1",
    ):
        _train(cfg, tmp_path)
    assert _children() == []


def test_workers_stop_when_the_run_fails_between_generations(tmp_path, monkeypatch):
    calls = [0]

    def failing_learn(self, steps):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "learn", failing_learn)
    with pytest.raises(RuntimeError, match="boom"):
        _train(_config("process", 2), tmp_path)
    assert _children() == []


def test_cli_process_backend_and_resume_inline(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "racemarl"]
    res = subprocess.run(
        [*base, *tiny_train_args(out, "--backend", "process", "--workers", "2")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert (out / "config.yaml").read_text().count("backend: process") == 1
    res = subprocess.run(
        [*base, "train", "--resume", str(out), "--total-steps", "80", "--backend", "inline", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert int(read_metrics(out / "metrics.csv")[-1]["env_steps"]) == 80


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["rollout.backend=threads"], "rollout.backend"),
        (["rollout.workers=-1"], "rollout.workers must be >= 0"),
        (["rollout.workers=2"], "needs rollout.backend process or ray"),
        (["rollout.backend=process", "rollout.ray_address=10.0.0.1:6379"], "only used with rollout.backend ray"),
        (["rollout.backend=process", "rollout.worker_timeout=0"], "worker_timeout must be positive"),
        (["rollout.max_restarts=-1"], "max_restarts must be >= 0"),
    ],
)
def test_bad_rollout_config(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        tiny_config("race", extra=sets)


def test_ray_backend_without_ray_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from racemarl.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(
        [
            "train",
            "--algo",
            "matd3",
            "--total-steps",
            "40",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--ray-address",
            "10.0.0.1:6379",
            "--set",
            "env.max_episode_steps=20",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'racemarl[ray]'" in lines[0], err


# ---------------------------------------------------------------- Ray (a local instance with 2 CPUs)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


def _assert_actors_gone(ray, trainer):
    for actor in trainer.workers.actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.pid.remote(), timeout=30)


def test_ray_workers_train_like_inline(tmp_path, inline_run, ray_local):
    trainer = _train(_config("ray", 2), tmp_path)
    assert trainer.workers.n_workers == 2 and trainer.workers.restarts == 0
    _assert_same(_outcome(tmp_path), inline_run)
    _assert_actors_gone(ray_local, trainer)


def test_killed_ray_actor_is_restarted_and_replayed(tmp_path, inline_run, ray_local, monkeypatch, caplog):
    generation, killed = [0], []
    play, dispatch = RayWorkers._play, RayWorkers._dispatch

    def counting_play(self, plan):
        generation[0] += 1
        return play(self, plan)

    def killing_dispatch(self, i, job):
        ref = dispatch(self, i, job)
        if generation[0] == 2 and i == 0 and not killed:
            killed.append(i)
            ray_local.kill(self.actors[i], no_restart=True)
        return ref

    monkeypatch.setattr(RayWorkers, "_play", counting_play)
    monkeypatch.setattr(RayWorkers, "_dispatch", killing_dispatch)
    with caplog.at_level(logging.WARNING, logger="racemarl.acting.workers"):
        trainer = _train(_config("ray", 2), tmp_path)
    assert killed == [0] and trainer.workers.restarts == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("rollout worker 0 (slots 0-1, Ray actor) failed") for m in warnings), warnings
    _assert_same(_outcome(tmp_path), inline_run)
    _assert_actors_gone(ray_local, trainer)
