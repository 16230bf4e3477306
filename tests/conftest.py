import pytest

from racemarl.config import Config, build_config

TINY = [
    "env.max_episode_steps=20",
    "net.encoder_hidden=16",
    "net.embed_dim=8",
    "net.critic_hidden=[16,16]",
    "net.policy_embed_dim=8",
    "race.mi_hidden=8",
    "learner.batch_size=16",
    "learner.start_steps=40",
    "learner.buffer_size=1000",
    "race.pop_size=3",
]


# The tiny settings of the tests that train through the command line (`--set` pairs).
TINY_CLI_SETS = [
    x
    for s in [
        "env.max_episode_steps=20",
        "net.encoder_hidden=16",
        "net.embed_dim=8",
        "net.critic_hidden=[16,16]",
        "learner.batch_size=16",
        "learner.start_steps=20",
    ]
    for x in ("--set", s)
]


def tiny_train_args(out, *extra: str, eval_interval: int = 20) -> list[str]:
    """`racemarl train` arguments of a tiny MATD3 run of 40 env steps into `out`: the TINY_CLI_SETS networks, one
    evaluation episode, no progress bar; then the `extra` arguments."""
    return [
        "train",
        "--algo",
        "matd3",
        "--total-steps",
        "40",
        "--eval-interval",
        str(eval_interval),
        "--eval-episodes",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *TINY_CLI_SETS,
        *extra,
    ]


def tiny_config(algo: str = "race", total_steps: int = 160, extra: list[str] = (), **top) -> Config:
    """A config that trains in about a second: short episodes, tiny networks."""
    top = {"eval_interval": 40, "eval_episodes": 1, "progress": False, **top}
    return build_config(None, TINY + list(extra), algo=algo, total_steps=total_steps, **top)


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(autouse=True)
def _auto_device_is_the_cpu(monkeypatch):
    """The suite checks CPU behaviour (bit-identical reruns and resumes): `device: auto` trains on the CPU in
    tests even where CUDA is available. tests/test_gpu.py asks for `cuda` explicitly."""
    import racemarl.train
    from racemarl.device import resolve_device

    monkeypatch.setattr(
        racemarl.train, "resolve_device", lambda name: resolve_device("cpu" if name == "auto" else name)
    )


def poison_replay_batch(monkeypatch, at: int = 30) -> None:
    """The `at`-th batch the MATD3/RACE replay buffer samples for an update gets a NaN reward (for the non-finite
    guard). The evaluations' gradient-share probe (`Trainer.encoder_gradients`, which samples a batch too) is off, so
    that the count is of update batches only."""
    from racemarl.data.buffer import ReplayBuffer
    from racemarl.train import Trainer

    monkeypatch.setattr(Trainer, "encoder_gradients", lambda self: {})

    original, calls = ReplayBuffer.sample, {"n": 0}

    def poisoned(self, batch_size):
        batch = original(self, batch_size)
        calls["n"] += 1
        if calls["n"] == at:
            batch.reward[0] = float("nan")
        return batch

    monkeypatch.setattr(ReplayBuffer, "sample", poisoned)
