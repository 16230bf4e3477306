"""Greedy evaluation of a saved run: `racemarl eval RUN_DIR`.

The learner is rebuilt from the checkpoint's own config (`learner_class`: RaceLearner, MATD3, RaceDiscreteLearner
or FACMAC), its model weights are loaded from `learner.model`, and the chosen team plays greedy episodes with the
same batched policy as the continuous family's `team_policy` (all episodes step in lockstep, one forward pass).

Teams: `marl` = the MARL learner's heads (race, matd3); `best` = the fittest population team of the
last generation, the one behind `eval_return_best_team` (race, ea); `K` = population slot K
(race, ea). With unshared encoders (race.shared_encoder=false) a population team is evaluated with
its own encoders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from racemarl.envs.base import MultiAgentEnv, StepResult
from racemarl.records.runs import LATEST_CHECKPOINT, RunDirError, check_output_file, load_run

if TYPE_CHECKING:
    import torch

    from racemarl.config import Config
    from racemarl.envs.base import EnvSpec

GL_BACKENDS = ("egl", "osmesa")
GL_INSTALL_HINT = (
    "install an off-screen OpenGL library: EGL (Debian/Ubuntu: apt-get install -y libegl1 libgl1) "
    "or OSMesa (apt-get install -y libosmesa6), then retry (or set MUJOCO_GL=egl|osmesa)"
)
MAX_LOCKSTEP_ENVS = 16


@dataclass
class LoadedRun:
    """A checkpoint turned back into acting networks."""

    cfg: Config  # of the checkpoint
    spec: EnvSpec
    learner: Any  # MATD3 / RaceLearner / FACMAC / RaceDiscreteLearner with the saved weights
    population: torch.Tensor | None  # [P, N, A, d+1]
    pop_encoders: dict | None
    best_heads: torch.Tensor | None  # None without a population
    best_encoders: dict | None
    progress: dict


def default_team(algo: str) -> str:
    return "best" if algo == "ea" else "marl"


def load_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Path, dict]:
    """Read a run's checkpoint after checking it belongs to the run (same task and algo)."""
    from racemarl.records import checkpoint as ckpt

    run = load_run(run_dir)
    path = Path(checkpoint) if checkpoint is not None else run.path / LATEST_CHECKPOINT
    if not path.is_file():
        hint = "" if checkpoint is not None else " (the run has not saved a checkpoint yet)"
        raise RunDirError(f"no checkpoint at {path}{hint}")
    try:
        sd = ckpt.load(path)
    except ckpt.CheckpointError as e:
        raise RunDirError(str(e)) from None
    try:
        saved_task, saved_algo = sd["config"]["env"]["task"], sd["config"]["algo"]
    except (KeyError, TypeError) as e:
        raise RunDirError(f"{path} is not a racemarl checkpoint (no {e})") from None
    if (saved_task, saved_algo) != (run.task, run.algo):
        raise RunDirError(
            f"checkpoint {path} is for {saved_algo} on {saved_task}, but {run.path} is a {run.algo} run on {run.task}"
        )
    return path, sd


def rebuild(sd: dict) -> LoadedRun:
    """Networks of a checkpoint state (the `_state` layout of racemarl.train.Trainer)."""
    import torch

    from racemarl.acting.families import learner_class
    from racemarl.acting.workers import env_kwargs
    from racemarl.config import from_dict
    from racemarl.envs import make_env

    cfg = from_dict(sd["config"])
    torch.set_num_threads(cfg.torch_threads)
    torch.set_flush_denormal(True)
    env = make_env(cfg.env.task, **env_kwargs(cfg))
    spec = env.spec
    env.close()
    learner_cls = learner_class(cfg, spec.discrete)
    learner = learner_cls(spec, cfg, torch.Generator().manual_seed(cfg.seed))
    learner.load_state_dict(sd["learner"]["model"])
    learner.eval()
    return LoadedRun(
        cfg=cfg,
        spec=spec,
        learner=learner,
        population=sd.get("population"),
        pop_encoders=sd.get("pop_encoders"),
        best_heads=sd.get("best_heads"),
        best_encoders=sd.get("best_encoders"),
        progress=dict(sd.get("progress", {})),
    )


def select_team(loaded: LoadedRun, team: str) -> tuple[str, torch.Tensor, dict | None]:
    """(label, heads [N, A, d+1], encoders {name: [1, N, ...]} or None) of `marl`, `best` or a slot K."""
    cfg = loaded.cfg
    pop = cfg.race.pop_size if cfg.uses_population else 0
    valid = (["marl"] if cfg.uses_marl else []) + (["best", f"0..{pop - 1}"] if pop else [])
    valid_text = f"valid teams for this {cfg.algo} run: {', '.join(valid)}"
    if team == "marl":
        if not cfg.uses_marl:
            raise RunDirError(f"team 'marl' does not exist in an {cfg.algo} run (no MARL learner); {valid_text}")
        return "marl", loaded.learner.marl_heads.detach(), None
    if team == "best":
        if not cfg.uses_population:
            raise RunDirError(f"team 'best' needs a population, and a {cfg.algo} run has none; {valid_text}")
        assert loaded.best_heads is not None  # every population run saves it
        return "best", loaded.best_heads, loaded.best_encoders
    try:
        slot = int(team)
    except ValueError:
        raise RunDirError(f"unknown team {team!r}; {valid_text}") from None
    if not cfg.uses_population:
        raise RunDirError(f"team {slot} is a population slot, and a {cfg.algo} run has no population; {valid_text}")
    if not 0 <= slot < pop:
        raise RunDirError(f"population slot {slot} does not exist (population size {pop}); {valid_text}")
    enc = None if loaded.pop_encoders is None else {k: v[slot : slot + 1] for k, v in loaded.pop_encoders.items()}
    assert loaded.population is not None  # every population run saves it
    return f"slot {slot}", loaded.population[slot], enc


# ---------------------------------------------------------------- rendering


def _probe_gl(backend: str) -> str | None:
    """None if MuJoCo renders off-screen with `backend` (checked in a fresh process), else why not."""
    code = (
        "import mujoco\n"
        "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody></mujoco>')\n"
        "d = mujoco.MjData(m)\n"
        "r = mujoco.Renderer(m, 16, 16)\n"
        "r.update_scene(d)\n"
        "assert r.render().shape == (16, 16, 3)\n"
    )
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    if res.returncode == 0:
        return None
    lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
    return lines[-1][:160] if lines else f"exit status {res.returncode}"


def pick_gl_backend() -> str:
    """A MuJoCo off-screen GL backend that works here; sets MUJOCO_GL (and PYOPENGL_PLATFORM).

    An explicit MUJOCO_GL is respected (and checked); otherwise EGL, then OSMesa, are tried.
    """
    given = os.environ.get("MUJOCO_GL", "").strip().lower()
    candidates = (given,) if given else GL_BACKENDS
    reasons = []
    for backend in candidates:
        why = _probe_gl(backend)
        if why is None:
            os.environ["MUJOCO_GL"] = backend
            if backend in ("egl", "osmesa"):
                os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        reasons.append(f"{backend}: {why}")
    raise RunDirError(
        f"cannot render off-screen: no working MuJoCo GL backend ({'; '.join(reasons)}); {GL_INSTALL_HINT}"
    )


def _check_video_packages() -> None:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401 - the ffmpeg plugin that writes MP4
    except ImportError as e:
        raise RunDirError(f"--video needs imageio and imageio-ffmpeg ({e}): pip install 'racemarl[video]'") from e


def _looks_like_gl_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e} {type(e).__module__}".lower()
    return any(word in text for word in ("gl", "egl", "osmesa", "opengl", "context"))


def _open_video_writer(path: Path, fps: float):
    import imageio.v2 as imageio

    _check_video_packages()
    path.parent.mkdir(parents=True, exist_ok=True)
    return imageio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=16, quality=7)


class _Recorder(MultiAgentEnv):
    """Wraps an env: remembers the last step's info and, given a writer, streams rendered frames."""

    def __init__(self, env: MultiAgentEnv, writer=None):
        self.env, self.spec, self.writer = env, env.spec, writer
        self.last_info: dict = {}
        self.frames = 0

    def _frame(self) -> None:
        if self.writer is not None:
            frame = cast(Any, self.env).render()  # a writer is only given with a MaMuJoCo env, which renders
            if frame is not None:
                self.writer.append_data(np.asarray(frame))
                self.frames += 1

    def reset(self, seed: int | None = None):
        out = self.env.reset(seed=seed)
        self.last_info = {}
        self._frame()
        return out

    def step(self, actions) -> StepResult:
        res = self.env.step(actions)
        self.last_info = res.info
        self._frame()
        return res

    def close(self) -> None:
        self.env.close()


def _render_fps(env: MultiAgentEnv, default: float = 30.0) -> float:
    inner = getattr(getattr(env, "_env", None), "single_agent_env", None)
    fps = getattr(inner, "metadata", {}).get("render_fps") if inner is not None else None
    return float(fps) if fps else default


# ---------------------------------------------------------------- evaluation


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    episodes: int = 10,
    team: str | None = None,
    seed: int | list[int] = 0,
    video: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Greedy returns of one team of a saved run over `episodes` episodes; writes the result as JSON.

    `seed` seeds the generator that draws the episodes' env seeds (`np.random.default_rng(seed)`);
    `[cfg.seed, 2, S]` with `episodes = cfg.eval_episodes` replays the run's evaluation at S env steps (MaMuJoCo).
    """

    from racemarl.acting.rollout import run_episodes
    from racemarl.acting.workers import env_kwargs
    from racemarl.envs import make_env

    if episodes < 1:
        raise RunDirError(f"--episodes must be >= 1, got {episodes}")
    if any(int(v) < 0 for v in (seed if isinstance(seed, (list, tuple)) else [seed])):
        raise RunDirError(f"--seed must be >= 0, got {seed}")
    if video is not None and Path(video).suffix.lower() != ".mp4":
        raise RunDirError(f"--video must name an .mp4 file, got {video}")
    run = load_run(run_dir)
    # every path is checked before a single episode is played
    check_output_file(out if out is not None else run.path / "eval.json", "--out")
    if video is not None:
        check_output_file(video, "--video", (".mp4",))
    team = team if team is not None else default_team(run.algo)
    ckpt_path, sd = load_checkpoint(run.path, checkpoint)
    loaded = rebuild(sd)
    label, heads, encoders = select_team(loaded, team)
    if video is not None:
        _check_video_packages()
        pick_gl_backend()
    cfg = loaded.cfg
    if loaded.spec.discrete:
        if video is not None:
            raise RunDirError(f"--video is for MA-MuJoCo tasks; {cfg.env.task} cannot be rendered here")
        result = _evaluate_discrete(loaded, heads, episodes, seed)
        result.update(
            run_dir=str(run.path),
            checkpoint=str(ckpt_path),
            task=cfg.env.task,
            algo=cfg.algo,
            team=label,
            episodes=episodes,
            seed=seed,
        )
        return _write_result(result, run.path, out)
    env_kw = env_kwargs(cfg)
    rng = np.random.default_rng(seed)
    returns, lengths, infos = [], [], []
    writer, render_env, frames = None, None, 0
    if video is not None:  # the first episode is recorded
        try:
            render_env = make_env(cfg.env.task, render_mode="rgb_array", **env_kw)
        except ValueError as e:  # the task's family cannot render: before anything is played or written
            raise RunDirError(
                f"--video is for MA-MuJoCo tasks; {cfg.env.task} cannot be rendered here ({' '.join(str(e).split())})"
            ) from None
        writer = _open_video_writer(Path(video), _render_fps(render_env))
    try:
        done = 0
        while done < episodes:
            n = min(MAX_LOCKSTEP_ENVS, episodes - done)
            envs = [_Recorder(render_env, writer)] if done == 0 and render_env is not None else []
            envs += [_Recorder(make_env(cfg.env.task, **env_kw)) for _ in range(n - len(envs))]
            stacked = heads[None].expand(n, *heads.shape)
            tiled = None if encoders is None else {k: v.expand(n, *v.shape[1:]) for k, v in encoders.items()}

            def policy(obs: torch.Tensor, idx: np.ndarray, stacked=stacked, tiled=tiled) -> torch.Tensor:
                team_enc = None if tiled is None else {k: v[idx] for k, v in tiled.items()}
                return loaded.learner.act(obs, stacked[idx], team_enc)

            try:
                stats = run_episodes(envs, policy, rng)
            except Exception as e:
                if any(env.writer is not None for env in envs) and _looks_like_gl_error(e):
                    first = (str(e).strip().splitlines() or [""])[0][:200]
                    raise RunDirError(f"rendering failed ({type(e).__name__}: {first}); {GL_INSTALL_HINT}") from e
                raise
            finally:
                for env in envs:
                    env.close()
            frames += sum(env.frames for env in envs)
            returns += [float(r) for r in stats.returns]
            lengths += [int(x) for x in stats.lengths]
            infos += [env.last_info for env in envs]
            done += n
    finally:
        if writer is not None:
            writer.close()
    result = {
        "run_dir": str(run.path),
        "checkpoint": str(ckpt_path),
        "task": cfg.env.task,
        "algo": cfg.algo,
        "team": label,
        "episodes": episodes,
        "seed": seed,
        **_episode_summary(loaded, returns, lengths),
    }
    if infos and all("battle_won" in i for i in infos):
        result["win_rate"] = float(np.mean([bool(i["battle_won"]) for i in infos]))
    if video is not None:
        result["video"] = str(video)
        result["video_frames"] = frames
    return _write_result(result, run.path, out)


def _write_result(result: dict, run_path: Path, out: str | Path | None) -> dict:
    out_path = Path(out) if out is not None else run_path / "eval.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    result["out"] = str(out_path)
    return result


def _evaluate_discrete(loaded: LoadedRun, heads, episodes: int, seed: int | list[int]) -> dict:
    """Greedy episodes of one team on a discrete task, `MAX_LOCKSTEP_ENVS` rows at a time."""
    from racemarl.acting.rollout_discrete import run_discrete_episodes
    from racemarl.acting.workers import env_kwargs
    from racemarl.envs.batch import make_env_batch

    cfg = loaded.cfg
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    lengths: list[int] = []
    won: list[bool] = []
    while len(returns) < episodes:
        n = min(MAX_LOCKSTEP_ENVS, episodes - len(returns))
        envs = make_env_batch(cfg.env.task, n, **env_kwargs(cfg))
        rngs = [np.random.default_rng(int(rng.integers(2**63))) for _ in range(n)]
        try:
            stats = run_discrete_episodes(
                envs, loaded.learner, heads[None].expand(n, *heads.shape), rngs, greedy=np.ones(n, bool)
            )
        finally:
            envs.close()
        returns += [float(r) for r in stats.returns]
        lengths += [int(x) for x in stats.lengths]
        won += [bool(w) for w in stats.won]
    return {
        **_episode_summary(loaded, returns, lengths),
        **({"win_rate": float(np.mean(won))} if getattr(envs, "reports_wins", True) else {}),
    }


def _episode_summary(loaded: LoadedRun, returns: list[float], lengths: list[int]) -> dict:
    """Where the checkpoint stands and the statistics of the evaluation episodes' returns."""
    r = np.array(returns)
    return {
        "env_steps": int(loaded.progress.get("env_steps", 0)),
        "generation": int(loaded.progress.get("generation", 0)),
        "mean": float(r.mean()),
        "std": float(r.std()),
        "min": float(r.min()),
        "max": float(r.max()),
        "returns": returns,
        "lengths": lengths,
    }
