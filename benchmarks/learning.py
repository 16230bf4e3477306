"""Learning benchmark: final and best evaluation returns of algorithms on tasks, over seeds.

Runs `racemarl train` for every (task, algo, seed) in parallel worker processes (one per core by
default), skips runs that already finished, then writes `benchmarks/results/learning.json` and a
Markdown table, and prints the table.

    python benchmarks/learning.py --tasks mamujoco/HalfCheetah-6x1,mamujoco/HalfCheetah \
        --algos matd3 --seeds 1,2 --total-steps 50000 --name foundation
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def run_one(task: str, algo: str, seed: int, steps: int, out: Path, extra: list[str], log_dir: Path) -> dict:
    summary = out / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "racemarl", "train", "--total-steps", str(steps), "--no-progress"]
        if (out / "checkpoints" / "latest.pt").exists():  # an interrupted run: continue it
            cmd += ["--resume", str(out)]
        else:
            cmd += ["--task", task, "--algo", algo, "--seed", str(seed), "--out", str(out), *extra]
        log = log_dir / f"{out.name}.log"
        with log.open("a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    data = json.loads(summary.read_text())
    data["curve"] = _curve(out / "metrics.csv")
    data["run_dir"] = str(out)
    return data


def _curve(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def table(results: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["algo"]), []).append(r)
    lines = ["| task | algo | seeds | env steps | final eval return (mean ± std) | best eval return (mean ± std) | wall time per run (s) | env steps/s |",
             "|---|---|---|---|---|---|---|---|"]
    for (task, algo), rs in sorted(groups.items()):
        fin = [r["final_eval_return"] for r in rs]
        best = [r["best_eval_return"] for r in rs]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        wall = statistics.mean(r["wall_time"] for r in rs)
        lines.append(f"| {task} | {algo} | {len(rs)} | {rs[0]['total_env_steps']} | {statistics.mean(fin):.1f} ± {sd(fin):.1f} "
                     f"| {statistics.mean(best):.1f} ± {sd(best):.1f} | {wall:.0f} | {statistics.mean(r['mean_sps'] for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mamujoco/HalfCheetah-6x1,mamujoco/HalfCheetah")
    ap.add_argument("--algos", default="matd3")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--total-steps", type=int, default=50_000)
    ap.add_argument("--eval-interval", type=int, default=5_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--name", default="learning", help="results file stem and run folder")
    ap.add_argument("--runs-dir", default=str(ROOT / "_runs"))
    ap.add_argument("--set", action="append", default=[], help="config override passed to every run")
    args = ap.parse_args()

    runs_dir = Path(args.runs_dir) / args.name
    runs_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    extra = ["--eval-interval", str(args.eval_interval)] + [x for s in args.set for x in ("--set", s)]
    # Seed-major order: the first runs to finish give a complete comparison of every algorithm.
    grid = [(t, a, int(s)) for s in args.seeds.split(",") for t in args.tasks.split(",") for a in args.algos.split(",")]
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, t, a, s, args.total_steps,
                               runs_dir / f"{t.replace('/', '_').replace('|', '_')}__{a}__s{s}", extra, runs_dir)
                   for t, a, s in grid]
        results = [f.result() for f in futures]
    md = table(results)
    out = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "total_steps": args.total_steps, "seeds": args.seeds, "overrides": args.set,
        "benchmark_wall_time": time.time() - start, "machine_cpus": os.cpu_count(),
        "runs": results, "table_markdown": md,
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
