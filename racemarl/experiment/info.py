"""`racemarl info RUN_DIR`: what a run is (its task, algo, settings that differ from the defaults), how far it
got and what it holds on disk."""

from __future__ import annotations

from pathlib import Path

from racemarl.records.runs import flatten, load_run


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _auto_vmm_beta(task: str) -> float | str:
    """The number the default `race.vmm_beta: auto` stands for on `task`, for the families whose action type the name
    tells (MaMuJoCo: continuous; SMAX, SMAC: discrete); `auto` elsewhere (deciding would mean building the env)."""
    from racemarl.config.schema import resolve_vmm_beta

    family = task.split("/", 1)[0]
    if family == "mamujoco":
        return resolve_vmm_beta("auto", discrete=False)
    if family in ("smax", "smac"):
        return resolve_vmm_beta("auto", discrete=True)
    return "auto"


def run_info(path: str | Path) -> dict:
    """What `racemarl info` shows, as a dict (JSON-ready)."""
    from racemarl.config import Config, to_dict

    run = load_run(path)
    cfg = run.config
    last = next((r for r in reversed(run.rows) if r.get("env_steps") is not None), None)
    defaults = flatten(to_dict(Config()))
    skip = {"algo", "seed", "total_steps", "env.task", "progress", "eval_interval", "eval_episodes"}
    defaults["race.vmm_beta"] = _auto_vmm_beta(run.task)  # config.yaml records the number `auto` stood for
    overrides = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in skip and defaults.get(k) != v}
    ckpt_dir = run.path / "checkpoints"
    checkpoints = {}
    if ckpt_dir.is_dir():
        checkpoints = {c.name: c.stat().st_size for c in sorted(ckpt_dir.glob("*.pt"))}
    s = run.summary or {}
    env_steps = s.get("total_env_steps", None if last is None or (steps := last["env_steps"]) is None else int(steps))
    return {
        "run_dir": str(run.path),
        "task": run.task,
        "algo": run.algo,
        "seed": run.seed,
        "total_steps": cfg.total_steps,
        "eval_interval": cfg.eval_interval,
        "eval_episodes": cfg.eval_episodes,
        "overrides": overrides,
        "env_steps": env_steps or 0,
        "generation": s.get("generations", None if last is None else _int(last.get("generation"))),
        "updates": s.get("updates", None if last is None else _int(last.get("updates"))),
        "wall_time": s.get("wall_time", None if last is None else last.get("wall_time")),
        "evaluations": sum(1 for r in run.rows if r.get("env_steps") is not None),
        "last_metrics": {k: v for k, v in (last or {}).items() if v is not None},
        "checkpoints": checkpoints,
        "finished": run.finished,
        "summary": run.summary,
    }


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def format_info(info: dict) -> str:
    total = info["total_steps"]
    steps = info["env_steps"]
    pct = 100.0 * steps / total if total else 0.0
    lines = [
        ("run", info["run_dir"]),
        ("task", info["task"]),
        ("algo", info["algo"]),
        ("seed", str(info["seed"])),
        (
            "budget",
            f"{total} env steps; evaluation every {info['eval_interval']} env steps, "
            f"{info['eval_episodes']} episode(s)",
        ),
        ("config", ", ".join(f"{k}={v}" for k, v in info["overrides"].items()) or "defaults"),
        (
            "progress",
            f"{steps} / {total} env steps ({pct:.1f}%), generation {info['generation'] if info['generation'] is not None else '-'}, "
            f"updates {info['updates'] if info['updates'] is not None else '-'}, "
            f"wall time {_duration(info['wall_time'])}, {info['evaluations']} evaluation(s)",
        ),
    ]
    m = info["last_metrics"]
    if m:
        lines.append(("last eval", ", ".join(f"{k}={_short(v)}" for k, v in m.items())))
    else:
        lines.append(("last eval", "none yet"))
    ck = info["checkpoints"]
    lines.append(("checkpoints", ", ".join(f"{k} ({_size(v)})" for k, v in ck.items()) or "none"))
    if info["finished"]:
        s = info["summary"] or {}
        lines.append(
            (
                "finished",
                f"yes: final eval return {_short(s.get('final_eval_return'))}, "
                f"best {_short(s.get('best_eval_return'))}, mean {_short(s.get('mean_sps'))} env steps/s",
            )
        )
    else:
        cont = f"racemarl train --resume {info['run_dir']}" if "latest.pt" in ck else "start it again (no checkpoint)"
        lines.append(("finished", f"no (continue with: {cont})"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _short(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)
