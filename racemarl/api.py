"""The Python API: build a config, train, resume, evaluate and read a run's results from a script or notebook.

    import racemarl

    cfg = racemarl.make_config(task="smax/3m", algo="race", seed=1, total_steps=20_000,
                               overrides={"discrete.batch_episodes": 16})
    summary = racemarl.train_run(cfg, "runs/s1")          # a new run; refuses a folder holding anything else
    summary = racemarl.resume_run("runs/s1", total_steps=40_000)  # continue exactly, here with a larger budget
    result = racemarl.evaluate_run("runs/s1", episodes=20)  # greedy episodes of the saved team (eval.json)
    rows = racemarl.load_metrics("runs/s1")               # metrics.csv as a list of dicts of numbers
    baseline = racemarl.random_policy("smax/3m", episodes=20)

(The names end in `_run` because `racemarl.train` and `racemarl.experiment.evaluate` are the modules behind them.)
Every function validates its arguments before any work starts, like the command line: a bad value is a
`ConfigError`, a bad folder or checkpoint a `RunDirError` or `RunError`, each with a one-line message.
A run stopped by Ctrl-C (SIGINT) or SIGTERM writes a checkpoint and raises `TrainingInterrupted`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from racemarl.config import Config, ConfigError, apply_override, build_config, from_dict, load_yaml

__all__ = ["make_config", "train_run", "resume_run", "evaluate_run", "load_metrics", "load_run", "random_policy"]


def make_config(
    preset: str | Path | None = None,
    *,
    task: str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    **settings: Any,
) -> Config:
    """A validated `Config`: the defaults, then a YAML `preset`, then `settings`, then `overrides`.

    Args:
        preset: a YAML file, or the name of a shipped preset such as ``demo`` or ``paper/mamujoco-hopper-3x1``
            (optional).
        task: shorthand for ``env={"task": task}``.
        overrides: dotted keys, as a mapping ``{"learner.batch_size": 128}`` or as ``["learner.batch_size=128"]``
            strings (the values of strings are read as YAML, like ``--set``).
        **settings: top-level values (``algo="race"``, ``seed=2``, ``total_steps=50_000``) or whole sections as
            dicts (``race={"pop_size": 3}``).

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range (the message names it).
    """
    if preset is not None:
        from racemarl.records.runs import RunDirError, check_preset_file

        try:
            preset = check_preset_file(preset, "preset")
        except RunDirError as e:
            raise ConfigError(str(e)) from None
    if task is not None:
        settings["env"] = {**settings.get("env", {}), "task": task}
    cfg = build_config(preset, [], **settings)
    if isinstance(overrides, Mapping):
        from racemarl.config.io import apply_key

        for key, value in overrides.items():  # as `--set KEY=VALUE`, with the value already parsed
            apply_key(cfg, key, value)
    else:
        if isinstance(overrides, str):
            overrides = [overrides]
        for assignment in overrides:
            apply_override(cfg, assignment)
    return cfg.validate()


def train_run(config: Config, run_dir: str | Path, *, progress: bool | None = None) -> dict:
    """Train a new run into `run_dir` and return its summary (also in ``run_dir/summary.json``).

    `run_dir` must be new, empty, or an earlier start of this same run that never wrote a checkpoint; a
    folder holding anything else (another run, a finished run, unrelated files) is refused with a
    `RunError` and left untouched. `progress` shows a progress bar (default: the config's `progress`).
    """
    from racemarl.train import train as _train

    if not isinstance(config, Config):
        raise ConfigError(f"config must be a racemarl Config (see racemarl.make_config), got {type(config).__name__}")
    if progress is not None:
        config.progress = bool(progress)
    return _train(config.validate(), run_dir)


def resume_run(run_dir: str | Path, *, total_steps: int | None = None, progress: bool = False) -> dict:
    """Continue the run in `run_dir` from its last checkpoint, exactly as if it had never stopped.

    `total_steps` extends the budget (a smaller one than the run's is refused). Returns the summary.
    """
    from racemarl.records.runs import require_run_dir
    from racemarl.train import RunError, Trainer

    run_dir = require_run_dir(run_dir)
    cfg = from_dict(load_yaml(run_dir / "config.yaml"))
    if total_steps is not None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise ConfigError(f"total_steps must be an int, got {total_steps!r}")
        if total_steps < cfg.total_steps:
            raise RunError(
                f"total_steps {total_steps} is smaller than the run's budget of {cfg.total_steps} env "
                "steps; a resume can only keep or extend it"
            )
        cfg.total_steps = total_steps
    cfg.progress = progress
    with Trainer(cfg.validate(), run_dir, resume=True) as trainer:
        return trainer.train()


def evaluate_run(
    run_dir: str | Path,
    *,
    episodes: int = 10,
    team: str | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    video: str | Path | None = None,
) -> dict:
    """Greedy episodes of one team of a saved run (``racemarl eval``); returns and writes the result
    (``out``, default ``run_dir/eval.json``): mean, std, min, max, per-episode returns, win rate on
    discrete tasks. `team`: ``"marl"``, ``"best"`` or a population slot ``"K"`` (default: the run's main team)."""
    from racemarl.experiment.evaluate import evaluate_run as _evaluate_run

    return _evaluate_run(run_dir, checkpoint=checkpoint, episodes=episodes, team=team, seed=seed, video=video, out=out)


def load_metrics(run_dir: str | Path) -> list[dict[str, float | None]]:
    """A run's ``metrics.csv``, one dict per evaluation, numbers parsed (empty cells are None)."""
    from racemarl.records.runs import load_run as _load_run

    return _load_run(run_dir).rows


def load_run(run_dir: str | Path):
    """A run directory read from disk (`racemarl.records.runs.Run`: config, metrics rows, summary, series(metric))."""
    from racemarl.records.runs import load_run as _load_run

    return _load_run(run_dir)


def random_policy(
    task: str, *, episodes: int = 10, seed: int = 0, max_episode_steps: int | None = None, agent_obsk: int = 0
) -> dict:
    """Returns (and win rate on discrete tasks) of uniformly random actions over `episodes` episodes, the
    baseline a trained team should beat. Episode seeds are drawn from ``numpy.random.default_rng(seed)``."""
    import numpy as np

    from racemarl.acting.workers import env_kwargs
    from racemarl.envs import is_discrete_task

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a positive int, got {episodes!r}")
    cfg = Config()
    cfg.env.task, cfg.env.max_episode_steps, cfg.env.agent_obsk = task, max_episode_steps, agent_obsk
    cfg.validate()
    rng = np.random.default_rng(seed)
    kwargs = env_kwargs(cfg)
    if is_discrete_task(task, **kwargs):  # all episodes step together in one batch
        returns, won = _random_discrete(task, episodes, kwargs, rng)
    else:
        returns, won = _random_continuous(task, episodes, kwargs, rng)
    r = np.array(returns)
    out = {
        "task": task,
        "episodes": episodes,
        "seed": seed,
        "mean": float(r.mean()),
        "std": float(r.std()),
        "returns": [float(x) for x in returns],
    }
    if won:
        out["win_rate"] = float(np.mean(won))
    return out


def _random_continuous(task, episodes, kwargs, rng) -> tuple[list[float], list[bool]]:
    from racemarl.envs import make_env

    env = make_env(task, **kwargs)
    returns: list[float] = []
    try:
        for _ in range(episodes):
            env.reset(seed=int(rng.integers(2**31)))
            total = 0.0
            while True:
                res = env.step(env.sample_actions(rng))
                total += res.reward
                if res.terminated or res.truncated:
                    break
            returns.append(total)
    finally:
        env.close()
    return returns, []


def _random_discrete(task, episodes, kwargs, rng) -> tuple[list[float], list[bool]]:
    import numpy as np

    from racemarl.envs.batch import make_env_batch

    envs = make_env_batch(task, episodes, **kwargs)
    try:
        _, _, avail = envs.reset(seeds=[int(rng.integers(2**31)) for _ in range(episodes)])
        returns, won = np.zeros(episodes), np.zeros(episodes, bool)
        while envs.active.any():
            u = rng.random(avail.shape)
            res = envs.step(np.argmax(np.where(avail > 0, u, -1.0), axis=-1).astype(np.int32))
            returns += np.where(res.stepped, res.reward, 0.0)
            won |= res.stepped & res.battle_won
            avail = res.avail_actions
    finally:
        envs.close()
    return [float(r) for r in returns], [bool(w) for w in won]
