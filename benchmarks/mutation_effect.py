"""How much one mutation changes a team's actions.

For each mutation kind (normal, super, reset: the draw `perturb` makes per head row) and each mutation
fraction, mutate one agent head of a team many times and measure, on real observations of the task, the
mean absolute change of that agent's actions (in units of the action half-range) and the share of its
action dimensions pushed into tanh saturation (|a| > 0.99). The encoders are the task's freshly
initialised ones or, with --run, a trained run's (its checkpoint's shared encoders and MARL heads).

    python benchmarks/mutation_effect.py --task mamujoco/HalfCheetah-6x1 --fracs 0.1,0.7 [--run RUN]

Writes benchmarks/results/mutation_effect.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from racemarl.algorithms.evolution import mutate_agent_head  # noqa: E402
from racemarl.algorithms.matd3 import MATD3  # noqa: E402
from racemarl.config import build_config, from_dict  # noqa: E402
from racemarl.envs import make_env  # noqa: E402
from racemarl.nets.policy import init_heads, pad_obs  # noqa: E402

KINDS = {
    "normal": dict(super_mutation_prob=0.0, reset_prob=0.0),
    "super": dict(super_mutation_prob=1.0, reset_prob=0.0),
    "reset": dict(super_mutation_prob=0.0, reset_prob=1.0),
}


def observations(task: str, n: int, seed: int) -> torch.Tensor:
    """`n` observations `[n, N, max_obs]` from random-action episodes of the task."""
    env = make_env(task)
    spec = env.spec
    rng = np.random.default_rng(seed)
    out = []
    obs, _, _ = env.reset(seed=seed)
    while len(out) < n:
        out.append(pad_obs(obs, max(spec.obs_dims)))
        acts = [rng.uniform(lo, hi).astype(np.float32) for lo, hi in zip(spec.act_low, spec.act_high)]
        res = env.step(acts)
        obs = res.obs
        if res.terminated or res.truncated:
            obs, _, _ = env.reset(seed=int(rng.integers(2**31)))
    env.close()
    return torch.from_numpy(np.stack(out)), spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mamujoco/HalfCheetah-6x1")
    ap.add_argument("--fracs", default="0.1,0.7")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--obs", type=int, default=512)
    ap.add_argument("--run", default=None, help="a run directory: use its trained encoders and MARL heads")
    ap.add_argument("--name", default="mutation_effect")
    args = ap.parse_args()
    torch.manual_seed(0)
    obs, spec = observations(args.task, args.obs, seed=0)
    if args.run:
        sd = torch.load(Path(args.run) / "checkpoints" / "latest.pt", weights_only=False)
        cfg = from_dict(sd["config"])
        learner = MATD3(spec, cfg, torch.Generator().manual_seed(0))
        learner.encoders.load_state_dict(
            {k.removeprefix("encoders."): v for k, v in sd["learner"]["model"].items() if k.startswith("encoders.")}
        )
        team = sd["learner"]["model"]["marl_heads"].clone()
        source = f"trained encoders and MARL heads of {args.run}"
    else:
        cfg = build_config(None, [], env={"task": args.task})
        learner = MATD3(spec, cfg, torch.Generator().manual_seed(0))
        team = init_heads(
            1,
            spec.n_agents,
            learner.layout.max_act,
            cfg.net.embed_dim,
            learner.layout.row_mask,
            torch.Generator().manual_seed(1),
        )[0]
        source = "freshly initialised encoders and population heads"
    base = learner.act(obs, team[None].expand(len(obs), *team.shape))  # [B, N, A]
    rng = np.random.default_rng(0)
    rows = []
    for frac in [float(f) for f in args.fracs.split(",")]:
        for kind, probs in KINDS.items():
            rc = replace(cfg.race, mutation_frac=frac, **probs)
            change, saturated = [], []
            for t in range(args.trials):
                agent = t % spec.n_agents
                mutated = team.clone()
                mutate_agent_head(mutated[agent], learner.layout.row_mask[agent], rc, rng)
                a = learner.act(obs, mutated[None].expand(len(obs), *team.shape))
                real = learner.layout.row_mask[agent]
                half = learner.layout.scale[agent, 0, real]
                change.append(float(((a[:, agent, real] - base[:, agent, real]).abs() / half).mean()))
                saturated.append(float((a[:, agent, real].abs() / half > 0.99).float().mean()))
            rows.append(
                {
                    "frac": frac,
                    "kind": kind,
                    "mean_abs_action_change": float(np.mean(change)),
                    "saturated_share": float(np.mean(saturated)),
                }
            )
    base_sat = float(
        (base.abs() / learner.layout.scale.transpose(0, 1) > 0.99)[:, learner.layout.row_mask].float().mean()
    )
    mix = {
        f: sum(
            r["mean_abs_action_change"] * {"normal": 0.9, "super": 0.05, "reset": 0.05}[r["kind"]]
            for r in rows
            if r["frac"] == f
        )
        for f in {r["frac"] for r in rows}
    }
    md = [
        f"Task {args.task}, {source}; {args.obs} observations from random-action episodes, {args.trials} "
        f"mutations of one agent head per cell. Change = mean |a' - a| / half-range of the mutated agent's "
        f"actions; before mutation {100 * base_sat:.1f}% of action dimensions are saturated.",
        "",
        "| mutation_frac | kind | mean action change | saturated after |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {r['frac']} | {r['kind']} | {r['mean_abs_action_change']:.4f} | {100 * r['saturated_share']:.1f}% |"
        for r in rows
    ]
    md += [
        "",
        "Expected change of one mutation with the default mix (90% normal, 5% super, 5% reset): "
        + ", ".join(f"frac {f}: {v:.4f}" for f, v in sorted(mix.items())),
    ]
    out = {
        "command": " ".join(["mutation_effect.py"] + sys.argv[1:]),
        "task": args.task,
        "source": source,
        "rows": rows,
        "saturated_before": base_sat,
        "expected_change": mix,
    }
    (ROOT / "results" / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (ROOT / "results" / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
