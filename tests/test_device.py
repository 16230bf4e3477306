"""`--device`, the update without host synchronisation, the CPU acting copy and device-independent checkpoints.

CPU-only: the GPU checks are in tests/test_gpu.py (skipped without CUDA). Here:
- every learner's `update()` runs with every host-read method of torch.Tensor made to raise;
- `--device cuda` without CUDA, or a bad device name, is a one-line error with exit status 2;
- a run with a separate acting copy and learner generator (what a GPU run does, forced on the CPU) trains,
  resumes exactly, and its checkpoint resumes and evaluates as a plain CPU run;
- checkpoints hold CPU tensors and are loaded with map_location="cpu".
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import racemarl
from racemarl.algorithms.facmac import FACMAC, FacmacContinuous
from racemarl.algorithms.matd3 import MATD3
from racemarl.algorithms.race import RaceLearner
from racemarl.algorithms.race_discrete import RaceDiscreteLearner
from racemarl.config import ConfigError, build_config
from racemarl.data.buffer import ReplayBuffer
from racemarl.data.episode_buffer import EpisodeBuffer
from racemarl.device import DeviceError, cpu_tree, resolve_device
from racemarl.envs.base import EnvSpec
from racemarl.nets.policy import init_heads
from racemarl.records import checkpoint as ckpt
from racemarl.train import Trainer
from tests.conftest import poison_replay_batch, tiny_config

torch.set_num_threads(1)

CONT_SPEC = EnvSpec(
    task="test/cont",
    n_agents=3,
    obs_dims=(5, 7, 4),
    state_dim=9,
    act_dims=(1, 2, 2),
    discrete=False,
    episode_limit=10,
    act_low=tuple(-np.ones(a, np.float32) for a in (1, 2, 2)),
    act_high=tuple(np.ones(a, np.float32) for a in (1, 2, 2)),
)
DISC_SPEC = EnvSpec(
    task="test/disc", n_agents=2, obs_dims=(4, 4), state_dim=5, act_dims=(3, 3), discrete=True, episode_limit=6
)


def _cfg(algo: str):
    return build_config(
        None,
        [
            "net.encoder_hidden=16",
            "net.embed_dim=8",
            "net.critic_hidden=[16,16]",
            "net.policy_embed_dim=8",
            "race.mi_hidden=8",
            "race.pevfa_teams_per_update=2",
            "learner.policy_delay=1",
            "discrete.rnn_hidden=8",
            "discrete.critic_hidden=[16]",
            "discrete.mixer_embed=8",
            "discrete.hypernet_hidden=8",
            "discrete.target_update=soft",
            "discrete.vmm_time_reduction=sum",
        ],
        algo=algo,
        progress=False,
    )


def _continuous(cls, algo):
    learner = cls(CONT_SPEC, _cfg(algo), torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    n, s, u = 64, CONT_SPEC.state_dim, learner.layout.joint_dim
    buf = ReplayBuffer(n, 3, learner.max_obs, s, u)
    buf.add(
        obs=rng.normal(size=(n, 3, learner.max_obs)),
        state=rng.normal(size=(n, s)),
        action=rng.uniform(-1, 1, (n, u)),
        reward=rng.normal(size=n),
        next_obs=rng.normal(size=(n, 3, learner.max_obs)),
        next_state=rng.normal(size=(n, s)),
        terminated=(rng.random(n) < 0.1).astype(np.float32),
    )
    pop = init_heads(3, 3, learner.layout.max_act, 8, learner.layout.row_mask, torch.Generator().manual_seed(1))
    return learner, (lambda: buf.sample(16)), pop


def _discrete(cls, algo):
    learner = cls(DISC_SPEC, _cfg(algo), torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    buf = EpisodeBuffer(16, 6, 2, 4, 5, 3)
    for e in range(8):
        length = int(rng.integers(1, 7))
        avail = np.ones((length + 1, 2, 3), bool)
        avail[:, 1, 1] = False
        buf.add(
            {
                "obs": rng.normal(size=(length + 1, 2, 4)),
                "state": rng.normal(size=(length + 1, 5)),
                "avail": avail,
                "actions": np.zeros((length, 2), np.int64),
                "reward": rng.normal(size=length),
                "terminated": np.eye(length)[-1] * (e % 2),
            }
        )
    pop = init_heads(3, 2, 3, 8, learner.row_mask, torch.Generator().manual_seed(1))
    return learner, (lambda: buf.sample(4)), pop


LEARNERS = {
    "matd3": lambda: _continuous(MATD3, "matd3"),
    "facmac-continuous": lambda: _continuous(FacmacContinuous, "facmac"),
    "race": lambda: _continuous(RaceLearner, "race"),
    "facmac-discrete": lambda: _discrete(FACMAC, "facmac"),
    "race-discrete": lambda: _discrete(RaceDiscreteLearner, "race"),
}


class HostRead(AssertionError):
    pass


# racemarl's own code, by the package's folder: a name test ("racemarl/" in the path) also matched torch's files
# in a checkout cloned into a folder called racemarl (its .venv lies below it).
PACKAGE_DIR = os.path.dirname(os.path.abspath(racemarl.__file__)) + os.sep


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Every way Python code can read a tensor's value on the host (or make a shape depend on it) raises."""

    def forbid(name):
        def raiser(*args, **kwargs):
            raise HostRead(f"host read inside update(): Tensor.{name}")

        return raiser

    with monkeypatch.context() as m:
        for name in (
            "item",
            "tolist",
            "cpu",
            "numpy",
            "__bool__",
            "__float__",
            "__int__",
            "__index__",
            "__array__",
            "__complex__",
            "nonzero",
            "masked_select",
            "unique",
            "argwhere",
            "nonzero_static",
        ):
            m.setattr(torch.Tensor, name, forbid(name))
        for name in ("nonzero", "masked_select", "unique", "argwhere"):
            m.setattr(torch, name, forbid(f"torch.{name}"))
        to, getitem, setitem = torch.Tensor.to, torch.Tensor.__getitem__, torch.Tensor.__setitem__

        def checked_to(self, *args, **kwargs):
            # a move to the CPU written in racemarl's code (torch's own same-device `.to(device)` calls pass)
            targets = [*args, kwargs.get("device")]
            to_cpu = any(
                str(a) == "cpu" or (isinstance(a, torch.device) and a.type == "cpu") for a in targets if a is not None
            )
            caller = sys._getframe(1).f_code.co_filename
            if to_cpu and caller.startswith(PACKAGE_DIR):
                raise HostRead("host read inside update(): Tensor.to(cpu)")
            return to(self, *args, **kwargs)

        def bool_index(index) -> bool:
            parts = index if isinstance(index, tuple) else (index,)
            return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)

        def checked_getitem(self, index):
            if bool_index(index):
                raise HostRead("host read inside update(): boolean-mask indexing")
            return getitem(self, index)

        def checked_setitem(self, index, value):
            if bool_index(index):
                raise HostRead("host read inside update(): boolean-mask assignment")
            return setitem(self, index, value)

        m.setattr(torch.Tensor, "to", checked_to)
        m.setattr(torch.Tensor, "__getitem__", checked_getitem)
        m.setattr(torch.Tensor, "__setitem__", checked_setitem)
        yield


def test_the_guard_catches_host_reads(monkeypatch):
    x = torch.ones(3)
    with no_host_reads(monkeypatch):
        for read in (
            lambda: x.sum().item(),
            lambda: float(x.sum()),
            lambda: bool(x.all()),
            lambda: x.tolist(),
            lambda: x[x > 0],
            lambda: x.nonzero(),
            lambda: np.asarray(x),
            lambda: int(x[0]),
        ):
            with pytest.raises(HostRead):
                read()
    assert x.sum().item() == 3.0  # restored


@pytest.mark.parametrize("name", list(LEARNERS))
def test_update_reads_nothing_on_the_host(name, monkeypatch):
    learner, sample, pop = LEARNERS[name]()
    batches = [sample() for _ in range(3)]  # sampling is outside update()
    bad = sample()
    bad.reward[0] = float("nan")
    with no_host_reads(monkeypatch):
        for batch in batches[:2]:
            losses = learner.update(batch, pop)
        learner.update(bad, pop)  # a non-finite update: skipped on the device, still no host read
        learner.update(batches[2], pop)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in losses.values())
    assert {"critic", "actor"} <= set(losses)
    if name.startswith("race"):
        assert {"pevfa", "value", "vfm", "vmm", "mi"} <= set(losses)
    assert learner.non_finite() == "non-finite values in the sampled batch at update 3"
    assert learner.non_finite() is None


# ---------------------------------------------------------------------------------------------- the flag


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="device must be"):
        build_config(None, ["device=tpu"])
    assert build_config(None, ["device=cuda:1"]).device == "cuda:1"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "racemarl", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "device, needle",
    [("cuda", "CUDA is not available"), ("cuda:3", "CUDA is not available"), ("gpu", "device must be")],
)
def test_cli_device_errors_are_one_line_exit_2(tmp_path, device, needle):
    res = _cli(
        "train",
        "--algo",
        "matd3",
        "--total-steps",
        "10",
        "--out",
        str(tmp_path / "x"),
        "--device",
        device,
        "--no-progress",
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------------- the GPU path on the CPU


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "sps")} for r in csv.DictReader(f)]


@pytest.fixture
def acting_copy(monkeypatch):
    """Make Trainer take the path of a GPU run on the CPU: a separate CPU acting copy and a learner generator of
    its own ("the device's"), refreshed and checkpointed as on a GPU."""
    monkeypatch.setattr(Trainer, "_uses_acting_copy", lambda self: True)


@pytest.mark.parametrize("algo", ["race", "matd3"])
def test_acting_copy_run_trains_and_resumes_exactly(tmp_path, acting_copy, algo):
    cfg = tiny_config(algo, total_steps=160)
    with Trainer(cfg, tmp_path / "straight") as t:
        assert t.actor is not t.learner and t.learner.generator is not t.torch_gen
        t.train()
        assert all(torch.equal(a, b) for a, b in zip(t.actor.state_dict().values(), t.learner.state_dict().values()))
    half = tiny_config(algo, total_steps=80)
    Trainer(half, tmp_path / "resumed").train()
    Trainer(cfg, tmp_path / "resumed", resume=True).train()
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "resumed")
    state = ckpt.load(tmp_path / "straight" / "checkpoints" / "latest.pt")
    assert state["learner"]["generator"]["device"] == "cpu"


def test_acting_copy_checkpoint_resumes_and_evaluates_as_a_plain_run(tmp_path, monkeypatch, caplog):
    from racemarl.experiment.evaluate import evaluate_run

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_uses_acting_copy", lambda self: True)
        Trainer(tiny_config("race", total_steps=80), tmp_path / "r").train()
    state = ckpt.load(tmp_path / "r" / "checkpoints" / "latest.pt")
    state["learner"]["generator"]["device"] = "cuda"  # as a GPU run would have saved it
    ckpt.save_atomic(state, tmp_path / "r" / "checkpoints" / "latest.pt")
    with caplog.at_level("WARNING"):
        summary = Trainer(tiny_config("race", total_steps=160), tmp_path / "r", resume=True).train()
    assert summary["total_env_steps"] >= 160
    assert "fresh stream" in caplog.text
    result = evaluate_run(tmp_path / "r", episodes=1)
    assert np.isfinite(result["mean"])


def test_checkpoints_hold_cpu_tensors_and_load_with_map_location(tmp_path, monkeypatch):
    class FakeDeviceTensor(torch.Tensor):
        """A tensor that says it lives elsewhere until `.cpu()` is called."""

    t = torch.ones(2).as_subclass(FakeDeviceTensor)
    moved = cpu_tree({"a": [t, (t,)], "b": 3})
    assert type(moved["a"][0]) is FakeDeviceTensor  # .cpu() was applied (subclass kept), structure kept
    assert isinstance(moved["a"][1], tuple) and moved["b"] == 3

    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    ckpt.save_atomic({"x": torch.zeros(1)}, tmp_path / "c.pt")
    monkeypatch.setattr(torch, "load", spy)
    ckpt.load(tmp_path / "c.pt")
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True

    cfg = tiny_config("race", total_steps=40)
    with Trainer(cfg, tmp_path / "run") as trainer:
        calls = []
        monkeypatch.setattr("racemarl.records.run_state.cpu_tree", lambda obj: calls.append(1) or cpu_tree(obj))
        state = trainer._state()
    assert calls, "checkpoint state not passed through cpu_tree"

    def devices(obj):
        if isinstance(obj, torch.Tensor):
            yield obj.device.type
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from devices(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from devices(v)

    assert set(devices(state)) == {"cpu"}


def test_a_checkpoint_between_updates_reads_the_guard_first(tmp_path, monkeypatch):
    """With a checkpoint due before every update, a NaN met by update 30 is caught before the next checkpoint:
    no checkpoint holds an unchecked update, and last_good.pt has the state (and counters) before the
    generation's updates, with all of them still to do."""
    from racemarl.train import RunError

    poison_replay_batch(monkeypatch, at=30)
    with pytest.raises(RunError, match="at update 30 .*last_good.pt"):
        Trainer(tiny_config("matd3", checkpoint_minutes=1e-9), tmp_path).train()
    latest = ckpt.load(tmp_path / "checkpoints" / "latest.pt")
    assert latest["progress"]["updates"] == 29
    good = ckpt.load(tmp_path / "checkpoints" / "last_good.pt")
    assert good["progress"]["updates"] < 30 and good["progress"]["pending_updates"] > 0
    assert all(torch.isfinite(v).all() for v in good["learner"]["model"].values())
