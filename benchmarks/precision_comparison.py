"""Does bf16 learn as well as float32? Side by side, the learning benchmark's curves of the same tasks, algorithms
and seeds trained in both precisions (issue 19), up to a common budget.

Reads two `benchmarks/learning.py` results files (the float32 one may have a larger budget: only its evaluations
up to `--budget` are used) and writes `benchmarks/results/<name>.json` and `.md` and a figure: per (algo, seed)
the headline `eval_return` at every `--points` step (the last evaluation at or before it), the final one within the
budget, the mean over all evaluations within the budget (the area under the curve, less noisy than one point),
the MARL team's final `eval_return_marl`, and the critic's bias `q_bias_marl` at the end; then per algorithm the
mean over seeds of the final and mean returns and the bf16 - fp32 difference.

    python benchmarks/precision_comparison.py --fp32 benchmarks/results/race_vs_matd3_6x1_200k.json \\
        --bf16 benchmarks/results/bf16_6x1_100k.json --budget 100000 --name precision_6x1_100k
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def at(curve: list[dict], step: int, key: str = "eval_return") -> float | None:
    """The last evaluation at or before `step` (None before the first)."""
    rows = [r for r in curve if r["env_steps"] <= step and r.get(key) is not None]
    return rows[-1][key] if rows else None


def measures(run: dict, budget: int, points: list[int]) -> dict:
    curve = [r for r in run["curve"] if r["env_steps"] <= budget]
    return {
        "algo": run["algo"],
        "seed": run["seed"],
        "at": {p: at(curve, p) for p in points},
        "final": curve[-1]["eval_return"],
        "final_step": int(curve[-1]["env_steps"]),
        "mean": statistics.mean(r["eval_return"] for r in curve),
        "final_marl": curve[-1].get("eval_return_marl"),
        "q_bias_final": at(curve, budget, "q_bias_marl"),
    }


def compare(fp32: dict, bf16: dict, budget: int, points: list[int]) -> dict:
    """Runs matched by (task, algo, seed); only pairs present in both files."""
    key = lambda r: (r["task"], r["algo"], r["seed"])  # noqa: E731
    a = {key(r): r for r in fp32["runs"]}
    b = {key(r): r for r in bf16["runs"]}
    pairs = sorted(set(a) & set(b))
    rows = [
        {"task": k[0], "fp32": measures(a[k], budget, points), "bf16": measures(b[k], budget, points)} for k in pairs
    ]
    per_algo = {}
    for algo in sorted({k[1] for k in pairs}):
        mine = [r for r in rows if r["fp32"]["algo"] == algo]
        out = {}
        for m in ("final", "mean"):
            f = statistics.mean(r["fp32"][m] for r in mine)
            h = statistics.mean(r["bf16"][m] for r in mine)
            out[m] = {"fp32": f, "bf16": h, "bf16_minus_fp32": h - f}
        out["seeds"] = [r["fp32"]["seed"] for r in mine]
        per_algo[algo] = out
    return {"budget": budget, "points": points, "runs": rows, "per_algo": per_algo, "rule": rule(rows, per_algo)}


def rule(rows: list[dict], per_algo: dict) -> dict:
    """The rule fixed before the comparison finished (docs/performance.md, Precision): bf16 passes if, for every
    algorithm and for both the final return and the mean over the run, |bf16 - fp32| of the seeds' means is at most
    the float32 seeds' own spread (max - min of their values)."""
    checks = {}
    for algo, o in per_algo.items():
        for m in ("final", "mean"):
            fp32 = [r["fp32"][m] for r in rows if r["fp32"]["algo"] == algo]
            spread = max(fp32) - min(fp32)
            diff = o[m]["bf16_minus_fp32"]
            checks[f"{algo}/{m}"] = {"difference": diff, "fp32_spread": spread, "within": abs(diff) <= spread}
    complete = all(len(o["seeds"]) >= 2 for o in per_algo.values()) and all(
        r[prec]["final_step"] >= 0.9 * max(r["fp32"]["final_step"], r["bf16"]["final_step"])
        for r in rows
        for prec in ("fp32", "bf16")
    )  # every run has reached (about) the budget
    return {
        "checks": checks,
        "complete": complete,
        "bf16_passes": complete and all(c["within"] for c in checks.values()),
    }


def table(res: dict) -> str:
    pts = res["points"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    head = " | ".join(f"{p // 1000}k" for p in pts)
    lines = [
        f"| algo | seed | precision | {head} | final | mean over the run | MARL team, final | q_bias_marl, final |",
        "|---|---|---|" + "---|" * len(pts) + "---|---|---|---|",
    ]
    for r in res["runs"]:
        for prec in ("fp32", "bf16"):
            m = r[prec]
            cells = " | ".join(fmt(m["at"][p]) for p in pts)
            lines.append(
                f"| {m['algo']} | {m['seed']} | {prec} | {cells} | {fmt(m['final'])} | {fmt(m['mean'])} | "
                f"{fmt(m['final_marl'])} | {fmt(m['q_bias_final'])} |"
            )
    lines += ["", "| algo | seeds | final: fp32 | final: bf16 | difference | mean: fp32 | mean: bf16 | difference |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for algo, o in res["per_algo"].items():
        f, m = o["final"], o["mean"]
        lines.append(
            f"| {algo} | {','.join(map(str, o['seeds']))} | {f['fp32']:.0f} | {f['bf16']:.0f} | "
            f"{f['bf16_minus_fp32']:+.0f} | {m['fp32']:.0f} | {m['bf16']:.0f} | {m['bf16_minus_fp32']:+.0f} |"
        )
    r = res["rule"]
    lines += ["", "| check | bf16 - fp32 | float32 seeds' spread | within |", "|---|---|---|---|"]
    lines += [
        f"| {k} | {c['difference']:+.0f} | {c['fp32_spread']:.0f} | {'yes' if c['within'] else 'no'} |"
        for k, c in r["checks"].items()
    ]
    verdict = "passes" if r["bf16_passes"] else ("fails" if r["complete"] else "is not decided: runs are incomplete")
    lines += ["", f"The rule (docs/performance.md, Precision): bf16 {verdict}."]
    return "\n".join(lines)


def figure(fp32: dict, bf16: dict, budget: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    algos = sorted({r["algo"] for r in bf16["runs"]})
    fig, axes = plt.subplots(1, len(algos), figsize=(5.5 * len(algos), 3.8), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        for data, prec, style in ((fp32, "fp32", "-"), (bf16, "bf16", "--")):
            for r in data["runs"]:
                if r["algo"] != algo or r["seed"] not in {x["seed"] for x in bf16["runs"] if x["algo"] == algo}:
                    continue
                c = [x for x in r["curve"] if x["env_steps"] <= budget]
                colour = {1: "tab:blue", 2: "tab:orange"}.get(r["seed"], "tab:gray")
                ax.plot(
                    [x["env_steps"] for x in c],
                    [x["eval_return"] for x in c],
                    ls=style,
                    color=colour,
                    label=f"seed {r['seed']} {prec}",
                )
        ax.set_title(f"{algo}: float32 (solid) vs bf16 (dashed)", fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval_return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--bf16", required=True)
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--points", default="20000,40000,60000,80000,100000")
    ap.add_argument("--name", default="precision_comparison")
    ap.add_argument("--figure", default=str(ROOT.parent / "docs" / "figures" / "precision_comparison.png"))
    args = ap.parse_args(argv)
    for path in (args.fp32, args.bf16):
        if not Path(path).is_file():
            print(f"precision_comparison.py: error: {path} does not exist", file=sys.stderr)
            raise SystemExit(2)
    fp32, bf16 = json.loads(Path(args.fp32).read_text()), json.loads(Path(args.bf16).read_text())
    res = compare(fp32, bf16, args.budget, [int(p) for p in args.points.split(",")])
    res["command"] = "python benchmarks/precision_comparison.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "figure"
    )
    res["table"] = table(res)
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (ROOT / "results" / f"{args.name}.md").write_text(f"Command: `{res['command']}`\n\n{res['table']}\n")
    figure(fp32, bf16, args.budget, Path(args.figure))
    print(res["table"])
    return res


if __name__ == "__main__":
    main()
