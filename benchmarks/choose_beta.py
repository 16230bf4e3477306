"""Apply the pre-registered rule that chooses VMM's beta on MA-MuJoCo (docs/results.md, "VMM on MA-MuJoCo").

Reads the tuning runs' results (`benchmarks/results/vmm_beta_<BETA>.json`, written by `benchmarks/learning.py`
with `--seeds 101,102 --set race.vmm_beta=BETA --name vmm_beta_<BETA>`), and per run computes
- the score: the mean `eval_return_marl` over the evaluations in (80k, 100k] env steps;
- the VMM share: the median of `grad_enc_vmm / grad_enc_vfm` over the evaluations after 20k env steps.
Rule: (1) eligible = share >= 0.01 in every seed; (2) among the eligible the highest mean score wins, and an
eligible candidate within the pooled standard deviation of the seeds' scores is tied with it; among the tied,
the one whose share (mean over seeds of the medians) is nearest 0.1 on a log scale; (3) none eligible: the
largest beta. Writes `benchmarks/results/vmm_beta.json` and `.md`, and prints the table.

    python benchmarks/choose_beta.py                       # candidates 0.1, 1, 10
    python benchmarks/choose_beta.py --betas 0.1,1,10 --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SCORE_WINDOW = (80_000, 100_000)  # (exclusive, inclusive] env steps
SHARE_AFTER = 20_000
MIN_SHARE = 0.01
TARGET_SHARE = 0.1


def median_share(curve: list[dict], term: str = "vmm", until: float = math.inf) -> float | None:
    """The median of `grad_enc_<term> / grad_enc_vfm` over a run's evaluations (metrics.csv rows) after
    SHARE_AFTER and up to `until` env steps; None if there are none."""
    ratios = [
        r[f"grad_enc_{term}"] / r["grad_enc_vfm"]
        for r in curve
        if SHARE_AFTER < r["env_steps"] <= until and r.get(f"grad_enc_{term}") is not None and r.get("grad_enc_vfm")
    ]
    return statistics.median(ratios) if ratios else None


def run_measures(curve: list[dict]) -> dict:
    """The score and the VMM share of one run from its curve (metrics.csv rows)."""
    lo, hi = SCORE_WINDOW
    window = [
        r["eval_return_marl"] for r in curve if lo < r["env_steps"] <= hi and r.get("eval_return_marl") is not None
    ]
    share = median_share(curve)
    if not window or share is None:
        raise ValueError("a run without evaluations in the score window or without gradient shares")
    return {"score": statistics.mean(window), "share": share, "evaluations": len(window)}


def choose(candidates: dict[float, list[dict]]) -> dict:
    """candidates: beta -> per-seed `run_measures`. Returns the choice and the reasons, by the rule above."""
    summary = {}
    for beta, runs in candidates.items():
        scores = [r["score"] for r in runs]
        shares = [r["share"] for r in runs]
        summary[beta] = {
            "score": statistics.mean(scores),
            "score_sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "share": statistics.mean(shares),
            "eligible": all(s >= MIN_SHARE for s in shares),
        }
    eligible = [b for b, s in summary.items() if s["eligible"]]
    if not eligible:
        beta = max(summary)
        return {"beta": beta, "why": "no candidate reached the minimum VMM share: the largest", "candidates": summary}
    best = max(eligible, key=lambda b: summary[b]["score"])
    pooled = math.sqrt(statistics.mean(summary[b]["score_sd"] ** 2 for b in eligible))
    tied = [b for b in eligible if abs(summary[b]["score"] - summary[best]["score"]) < pooled or b == best]
    beta = min(tied, key=lambda b: (abs(math.log10(summary[b]["share"] / TARGET_SHARE)), b))
    why = (
        "the highest score among the eligible"
        if tied == [best]
        else f"tied within the pooled sd ({pooled:.0f}) with {sorted(tied)}: the share nearest {TARGET_SHARE}"
    )
    return {"beta": beta, "why": why, "pooled_sd": pooled, "tied": sorted(tied), "candidates": summary}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--betas", default="0.1,1,10")
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    candidates, per_run = {}, {}
    for text in args.betas.split(","):
        path = results / f"vmm_beta_{text}.json"
        if not path.is_file():
            print(
                f"choose_beta.py: error: {path} does not exist (run the tuning for beta {text} first)", file=sys.stderr
            )
            raise SystemExit(2)
        data = json.loads(path.read_text())
        runs = {r["seed"]: run_measures(r["curve"]) for r in data["runs"]}
        candidates[float(text)] = list(runs.values())
        per_run[text] = runs
    out = choose(candidates)
    out["runs"] = per_run
    lines = [
        "| beta | seed | score (mean eval_return_marl, 80k-100k] | VMM share (median grad_enc_vmm / grad_enc_vfm) |",
        "|---|---|---|---|",
    ]
    for text, runs in per_run.items():
        for seed, r in sorted(runs.items()):
            lines.append(f"| {text} | {seed} | {r['score']:.1f} | {r['share']:.3g} |")
    lines += ["", f"chosen: beta = {out['beta']:g} ({out['why']})"]
    out["table"] = "\n".join(lines)
    (results / "vmm_beta.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (results / "vmm_beta.md").write_text(out["table"] + "\n")
    print(out["table"])
    return out


if __name__ == "__main__":
    main()
