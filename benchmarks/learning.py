"""Learning benchmark: final and best evaluation returns of algorithms on tasks, over seeds.

Runs `racemarl train` for every (task, algo, seed) in parallel worker processes (one per core by
default), skips runs that already finished, then writes `benchmarks/results/learning.json` and a
Markdown table, and prints the table.

Every finished run leaves a record, `benchmarks/results/run_records/<name>/<run>/` (its config.yaml,
metrics.csv and summary.json, a few kB, meant to be committed): a run whose record exists is not run again,
even on a machine that lost the run folders, and the record is itself a run folder that `racemarl table`,
`racemarl plot` and `benchmarks/reproduction_table.py` read. A record made with other settings (task,
algorithm, seed, budget, overrides) than the ones asked for stops the benchmark with an error.

    python benchmarks/learning.py --tasks mamujoco/HalfCheetah-6x1,mamujoco/HalfCheetah \
        --algos matd3 --seeds 1,2 --total-steps 50000 --name foundation

Discrete tasks (SMAX) also report the evaluation win rate:

    python benchmarks/learning.py --tasks smax/3m,smax/2s3z --algos race,facmac --seeds 1,2 \
        --total-steps 80000 --eval-episodes 32 --name smax
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECORDS = RESULTS / "run_records"
RECORD_FILES = ("config.yaml", "metrics.csv", "summary.json")


def run_name(task: str, algo: str, seed: int) -> str:
    """The run's folder name inside the benchmark's runs folder and inside its records."""
    return f"{task.replace('/', '_').replace('|', '_')}__{algo}__s{seed}"


def request_of(task: str, algo: str, seed: int, steps: int, extra: list[str]) -> dict:
    """What a run is asked to be; a record holds it (request.json) so that a later benchmark can check it."""
    return {"task": task, "algo": algo, "seed": seed, "total_steps": steps, "args": extra}


def record_conflict(record: Path, request: dict) -> str | None:
    """Why the record in `record` cannot stand for the run `request` asks for, or None (no record, or it fits)."""
    if not (record / "summary.json").exists():
        return None
    if not (record / "request.json").exists():
        return f"{record} has no request.json (what the run was asked to be); delete it or give another --name"
    made = json.loads((record / "request.json").read_text())
    if made == request:
        return None
    differ = ", ".join(f"{k} {made.get(k)!r} (asked: {request[k]!r})" for k in request if made.get(k) != request[k])
    return f"{record} was made with other settings: {differ}; delete it or give the benchmark another --name"


def restore_record(out: Path, record: Path) -> None:
    """Copy a finished run's record into its run folder `out` if `out` has not finished."""
    if (out / "summary.json").exists() or not (record / "summary.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        shutil.copy2(record / name, out / name)


def write_record(out: Path, record: Path, request: dict) -> None:
    """Keep a finished run's small files, and what it was asked to be, in `record`."""
    record.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        shutil.copy2(out / name, record / name)
    (record / "request.json").write_text(json.dumps(request, indent=1) + "\n")


def run_one(
    task: str,
    algo: str,
    seed: int,
    steps: int,
    out: Path,
    extra: list[str],
    log_dir: Path,
    record: Path | None = None,
    threads: int | None = None,
) -> dict:
    """Run (or resume, or take from its record) one benchmark run, and return its summary with its curve.
    `threads`: the PyTorch threads of this session of the run (not part of what the run is: a resume may change it)."""
    summary = out / "summary.json"
    request = request_of(task, algo, seed, steps, extra)
    if record is not None:
        restore_record(out, record)
    if not summary.exists():
        cmd = [sys.executable, "-m", "racemarl", "train", "--total-steps", str(steps), "--no-progress"]
        if threads is not None:
            cmd += ["--set", f"torch_threads={threads}"]
        if (out / "checkpoints" / "latest.pt").exists():  # an interrupted run: continue it
            cmd += ["--resume", str(out)]
        else:
            cmd += ["--task", task, "--algo", algo, "--seed", str(seed), "--out", str(out), *extra]
        log = log_dir / f"{out.name}.log"
        with log.open("a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    if record is not None and not (record / "summary.json").exists():
        write_record(out, record, request)
    data = json.loads(summary.read_text())
    data["curve"] = _curve(out / "metrics.csv")
    data["run_dir"] = str(out)
    # A run stops at the end of the generation that reaches the budget (RACE: all teams' episodes),
    # so it may overshoot; compare algorithms on the evaluations made within the budget.
    data["budget"] = steps
    within = _within(data)
    data["final_within_budget"] = within[-1]["eval_return"]
    data["final_step_within_budget"] = int(within[-1]["env_steps"])
    data["best_within_budget"] = max(r["eval_return"] for r in within)
    data.update(marl_team(within))
    if within[-1].get("eval_win_rate") is not None:  # discrete tasks (SMAX, SMAC)
        data["final_win_rate_within_budget"] = within[-1]["eval_win_rate"]
        data["best_win_rate_within_budget"] = max(r["eval_win_rate"] for r in within)
    return data


def marl_team(within: list[dict]) -> dict:
    """The MARL team's own return at the last evaluation within the budget (`eval_return_marl`), and the mean of
    its last 5 evaluations, beside the headline `eval_return` (RACE: the better of the MARL team and the champion
    on the same episodes; a base learner's headline is its one team)."""
    marl = [r.get("eval_return_marl") for r in within]
    if any(m is None for m in marl):  # EA-only has no MARL team (and the oldest results no such column)
        return {"final_marl_within_budget": None, "last5_marl_within_budget": None}
    return {"final_marl_within_budget": marl[-1], "last5_marl_within_budget": statistics.mean(marl[-5:])}


def _curve(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def table(results: list[dict], random: dict | None = None) -> str:
    """One row per (task, algo); `random` maps a task to `racemarl.random_policy`'s result, shown as its own row."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["algo"]), []).append(r)
    wins = any("final_win_rate_within_budget" in r for r in results)
    win_head = " final win rate (mean ± std) | best win rate (mean ± std) |" if wins else ""
    lines = [
        "| task | algo | seeds | budget (env steps) | last eval at | final eval return (mean ± std) "
        "| best eval return (mean ± std) | MARL team: final (mean ± std) | MARL team: mean of the last 5 "
        f"|{win_head} wall time per run (s) | env steps/s |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if wins else "") + "---|---|",
    ]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    fmt = lambda xs, d: f"{statistics.mean(xs):.{d}f} ± {sd(xs):.{d}f}"  # noqa: E731
    maybe = lambda xs, d: "-" if None in xs else fmt(xs, d)  # noqa: E731
    shown: set[str] = set()
    for (task, algo), rs in sorted(groups.items()):
        if random and task in random and task not in shown:
            shown.add(task)
            b = random[task]
            se = b["std"] / b["episodes"] ** 0.5
            win = f" {b['win_rate']:.2f} | |" if wins and "win_rate" in b else (" | |" if wins else "")
            lines.append(
                f"| {task} | random policy | | | | {b['mean']:.3g} (s.e. {se:.2g}, {b['episodes']} episodes) "
                f"| | | |{win} | |"
            )
        rs = [r if "final_marl_within_budget" in r else {**r, **marl_team(_within(r))} for r in rs]  # older JSON
        fin = [r["final_within_budget"] for r in rs]
        marl = [r["final_marl_within_budget"] for r in rs]
        marl5 = [r["last5_marl_within_budget"] for r in rs]
        best = [r["best_within_budget"] for r in rs]
        digits = 1 if max(abs(x) for x in fin + best) >= 10 else 3  # SMAX returns are at most 2
        at = sorted({r["final_step_within_budget"] for r in rs})
        wall = statistics.mean(r["wall_time"] for r in rs)
        win_cells = ""
        if wins:
            fw = [r.get("final_win_rate_within_budget") for r in rs]
            bw = [r.get("best_win_rate_within_budget") for r in rs]
            win_cells = f" {fmt(fw, 2)} | {fmt(bw, 2)} |" if None not in fw else " - | - |"
        lines.append(
            f"| {task} | {algo} | {len(rs)} | {rs[0]['budget']} | {', '.join(map(str, at))} "
            f"| {fmt(fin, digits)} | {fmt(best, digits)} | {maybe(marl, digits)} | {maybe(marl5, digits)} |{win_cells} "
            f"{wall:.0f} | {statistics.mean(r['mean_sps'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


def _within(run: dict) -> list[dict]:
    budget = run.get("budget", float("inf"))  # the oldest results have no budget field: all their evaluations
    return [r for r in run["curve"] if r["env_steps"] <= budget]


def write_results_page() -> None:
    """benchmarks/results/RESULTS.md: every learning benchmark result, with the command that produced it."""
    parts = [
        "# Learning benchmark results",
        "",
        "Generated by `benchmarks/learning.py` from the JSON files in this folder; do not edit by hand.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "table_markdown" not in data:
            continue
        overrides = ", ".join(f"`{o}`" for o in data["overrides"]) or "none"
        data["table_markdown"] = table(data["runs"], data.get("random_policy"))  # today's columns, old runs too
        parts += [
            f"## {path.stem}",
            "",
            f"Command: `python benchmarks/{data['command']}`",
            "",
            f"Budget {data['total_steps']} env steps per run, seeds {data['seeds']}, config overrides: {overrides}; "
            f"each run's wall time is its own, on a {data['machine_cpus']}-core machine that other runs may have shared "
            "(one command runs up to `--workers` at a time; the reproduction's pacing is in docs/results.md).",
            "",
            data["table_markdown"],
            "",
        ]
    (RESULTS / "RESULTS.md").write_text("\n".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mamujoco/HalfCheetah-6x1,mamujoco/HalfCheetah")
    ap.add_argument("--algos", default="matd3")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--total-steps", type=int, default=50_000)
    ap.add_argument("--eval-interval", type=int, default=5_000)
    ap.add_argument(
        "--eval-episodes", type=int, default=None, help="evaluation episodes per team (default: the config's)"
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="PyTorch threads of each run (default: the config's, 1); a resumed run takes it too. It is not part of"
        " a run's request: its record stands for the run whatever the threads",
    )
    ap.add_argument("--name", default="learning", help="results file stem and run folder")
    ap.add_argument("--runs-dir", default=str(ROOT / "_runs"))
    ap.add_argument(
        "--records",
        default=str(RECORDS),
        help="folder of the finished runs' records (<records>/<name>/<run>); 'none': keep no records",
    )
    ap.add_argument("--set", action="append", default=[], help="config override passed to every run")
    ap.add_argument(
        "--random-episodes",
        type=int,
        default=0,
        help="also play a uniformly random policy for this many episodes per task (its row in the table)",
    )
    ap.add_argument(
        "--no-results",
        action="store_true",
        help="train and record the runs but write no results file (a queue's single runs; the group's results"
        " come from a later call with all its seeds)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild benchmarks/results/RESULTS.md from the JSON files (today's table columns)",
    )
    args = ap.parse_args()
    if args.report_only:
        write_results_page()
        return

    if args.torch_threads is not None and args.torch_threads < 1:
        ap.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    runs_dir = Path(args.runs_dir) / args.name
    records = None if args.records == "none" else Path(args.records) / args.name
    extra = ["--eval-interval", str(args.eval_interval)] + [x for s in args.set for x in ("--set", s)]
    if args.eval_episodes is not None:
        extra += ["--eval-episodes", str(args.eval_episodes)]
    # Seed-major order: the first runs to finish give a complete comparison of every algorithm.
    grid = [(t, a, int(s)) for s in args.seeds.split(",") for t in args.tasks.split(",") for a in args.algos.split(",")]
    if records is not None:  # before anything runs or is written
        conflicts = [record_conflict(records / run_name(*g), request_of(*g, args.total_steps, extra)) for g in grid]
        if any(conflicts):
            print("\n".join(f"learning.py: error: {c}" for c in conflicts if c), file=sys.stderr)
            raise SystemExit(2)
    runs_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [
            pool.submit(
                run_one,
                t,
                a,
                s,
                args.total_steps,
                runs_dir / run_name(t, a, s),
                extra,
                runs_dir,
                None if records is None else records / run_name(t, a, s),
                args.torch_threads,
            )
            for t, a, s in grid
        ]
        results = [f.result() for f in futures]
    if args.no_results:
        return
    random = None
    if args.random_episodes > 0:
        import racemarl

        random = {t: racemarl.random_policy(t, episodes=args.random_episodes, seed=1000) for t in args.tasks.split(",")}
    md = table(results, random)
    out = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "total_steps": args.total_steps,
        "seeds": args.seeds,
        "overrides": args.set,
        "benchmark_wall_time": time.time() - start,
        "machine_cpus": os.cpu_count(),
        "runs": results,
        "random_policy": random,
        "table_markdown": md,
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(md + "\n")
    write_results_page()
    print(md)


if __name__ == "__main__":
    main()
