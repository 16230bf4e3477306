"""A tiny run must learn something measurable, not just finish."""

from racemarl.records.metrics import read_metrics
from racemarl.train import train
from tests.conftest import tiny_config

PENDULUM = [
    "env.max_episode_steps=200",
    "net.encoder_hidden=64",
    "net.embed_dim=32",
    "net.critic_hidden=[64,64]",
    "learner.start_steps=500",
    "learner.batch_size=64",
]


def pendulum_run(algo: str, run_dir) -> list[dict]:
    """3000 env steps of `algo` on InvertedPendulum, an evaluation every 500: the metrics rows."""
    cfg = tiny_config(
        algo,
        total_steps=3000,
        extra=PENDULUM,
        env={"task": "mamujoco/InvertedPendulum"},
        eval_interval=500,
        eval_episodes=3,
    )
    train(cfg, run_dir)
    return read_metrics(run_dir / "metrics.csv")


def test_matd3_learns_to_balance_the_inverted_pendulum(tmp_path):
    # A random policy keeps the pole up for ~3 steps; 2.5k updates of MATD3 reach ~45 (seed 1, measured).
    returns = [float(r["eval_return"]) for r in pendulum_run("matd3", tmp_path)]
    assert returns[0] < 10
    assert max(returns[-2:]) > 25, returns


def test_race_learns_the_inverted_pendulum_and_so_does_its_marl_team(tmp_path):
    # RACE (3 evolved teams + the MARL team, VFM and VMM on): a random policy scores ~3-10; measured at 3000 env
    # steps (seed 1): MARL team 64 and headline 104 at the last evaluation (seed 2: 142 and 186)
    rows = pendulum_run("race", tmp_path)
    first, last = rows[0], rows[-1]
    assert float(first["eval_return_marl"]) < 15
    marl = [float(r["eval_return_marl"]) for r in rows[-2:]]
    assert max(marl) > 30, marl  # the gradient-trained team itself learned, not only a lucky evolved one
    # the headline is the better of the MARL team and the champion, played on the same episodes
    assert float(last["eval_return"]) == max(float(last["eval_return_marl"]), float(last["eval_return_best_team"]))
    assert float(last["grad_enc_vfm"]) > 0 and float(last["grad_enc_vmm"]) > 0  # VFM and VMM reached the encoders
