"""What the VMM term does on MA-MuJoCo: is the MI bound saturated, and how much gradient reaches the encoders?

RACE's VMM loss is -beta * E[w(s) I_JSD(z_i; s)] with the separable JSD bound of `racemarl.nets.mi`: per sample
I_t = -sp(-T(s_t, z_t)) - mean_{k != t} sp(T(s_t, z_k)) + log 4, at most log 4. Its gradient with respect to a score
is sigmoid(-T) on the joint (same-sample) pair and sigmoid(T) on the others: the "gates" below. When the critic
separates the pairs well, both gates go to 0, the bound to log 4, and the gradient on the encoders with them.

Measured on one batch (256 transitions) per probe, all in float32:
- `mi`: the bound (mean over agents and samples), `mi_share`: mi / log 4;
- `t_joint`, `t_other`: mean joint and other-pair scores; `gate_joint`, `gate_other`: mean sigmoid(-T_joint) and
  sigmoid(T_other) (the factors on every score's gradient);
- `top1`: share of samples whose own state scores highest among the batch's 256 states (how well z_i identifies s);
- `grad_vfm`, `grad_actor`, `grad_vmm_unit`: the gradient norm on the shared encoders of L_VFM, of the MARL actor
  term and of L_VMM with beta = 1 (`Learner.encoder_grad_norms`); `beta_for_10pct` = 0.1 * grad_vfm / grad_vmm_unit,
  the beta at which VMM would put a tenth of VFM's gradient on the encoders.

Experiments:
- `critic_only`: a fresh learner on random-action transitions; only the MI critic trains (the encoders stay at
  their initialisation), probed as it learns: how fast the bound saturates and the gradient gate closes.
- `control_independent`: the same, but each batch's states are shuffled against the observations, so that z_i and s
  are independent (true MI 0): the bound must stay near 0 (the estimator does not saturate by construction); its
  gradient columns are left empty (the learner's loss sees the unshuffled batch).
- `run:NAME` (with `--run RUN`, repeatable): a trained run's learner, buffer and population, from its latest
  checkpoint (copied to a temporary folder: a live run is not disturbed).

    python benchmarks/vmm_probe.py                         # the two fresh-learner experiments
    python benchmarks/vmm_probe.py --run ~/runs/race_s1    # also a trained run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from update_speed import build, random_transitions  # noqa: E402

from racemarl.envs import make_env  # noqa: E402
from racemarl.nets.mi import LOG4, jsd_mi_per_sample  # noqa: E402


def probe(learner, batch, population, shuffle: torch.Tensor | None = None) -> dict:
    """The bound's saturation and the encoder gradients on one batch (see the module docstring)."""
    state = batch.state if shuffle is None else batch.state[shuffle]
    with torch.no_grad():
        z = learner.encoders(batch.obs)
        scores = learner.mi_critic(state, z).float()  # [N, B, B]
        mi = jsd_mi_per_sample(scores)
        joint = scores.diagonal(dim1=-2, dim2=-1)  # [N, B]
        b = scores.shape[-1]
        off = ~torch.eye(b, dtype=torch.bool)
        other = scores[:, off]  # [N, B * (B - 1)]
        # scores[i, l, k] = T(s_k, z_l): for sample t (a column), its own state's row should win
        top1 = (scores.argmax(-2) == torch.arange(b)).float().mean()
    beta = learner.vmm_beta
    # the learner's own losses (unshuffled): reported only where the batch is the learner's own
    grads = learner.encoder_grad_norms(batch, population) if shuffle is None else {"actor": math.nan}
    out = {
        "mi": float(mi.mean()),
        "mi_share": float(mi.mean()) / LOG4,
        "t_joint": float(joint.mean()),
        "t_other": float(other.mean()),
        "gate_joint": float(torch.sigmoid(-joint).mean()),
        "gate_other": float(torch.sigmoid(other).mean()),
        "top1": float(top1),
        "grad_actor": grads["actor"],
        "grad_vfm": grads.get("vfm", math.nan),
        "grad_vmm_unit": grads.get("vmm", math.nan) / beta if beta > 0 else math.nan,
    }
    out["beta_for_10pct"] = 0.1 * out["grad_vfm"] / out["grad_vmm_unit"]
    return out


def train_critic_only(learner, buffer, population, steps: int, at: list[int], batch_size: int, independent: bool):
    """Only the MI critic ascends the bound (encoders fixed); probes at the steps in `at`."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    probe_batch = buffer.sample(batch_size)
    perm = torch.randperm(batch_size, generator=gen) if independent else None
    for step in range(steps + 1):
        if step in at:
            rows.append({"step": step, **probe(learner, probe_batch, population, perm)})
            print(f"  step {step:5d}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items() if k != "step"))
        if step == steps:
            break
        b = buffer.sample(batch_size)
        with torch.no_grad():
            z = learner.encoders(b.obs)
        state = b.state[torch.randperm(batch_size, generator=gen)] if independent else b.state
        loss = -jsd_mi_per_sample(learner.mi_critic(state, z)).mean()
        learner.opt_mi.zero_grad(set_to_none=True)
        loss.backward()
        learner.opt_mi.step()
    return rows


def trained(run: Path, batches: int, batch_size: int) -> dict:
    """Probe a trained run's learner on `batches` batches of its own buffer (means), from a copy of the run."""
    from racemarl.config import from_dict, load_yaml
    from racemarl.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run.name
        copy.mkdir()
        shutil.copy2(run / "config.yaml", copy / "config.yaml")
        shutil.copytree(run / "checkpoints", copy / "checkpoints", ignore=shutil.ignore_patterns("*.tmp*"))
        for f in ("metrics.csv",):
            if (run / f).exists():
                shutil.copy2(run / f, copy / f)
        cfg = from_dict(load_yaml(copy / "config.yaml"))
        cfg.precision = "fp32"  # probe in float32 whatever the run trained in
        trainer = Trainer(cfg, copy, resume=True)
        try:
            learner, population = trainer.learner, trainer.population
            rows = [probe(learner, trainer.buffer.sample(batch_size), population) for _ in range(batches)]
            steps = trainer.progress.env_steps
        finally:
            trainer.close()
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {"env_steps": steps, "vmm_beta": cfg.race.vmm_beta, "batches": batches, **mean}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mamujoco/HalfCheetah-6x1")
    ap.add_argument("--steps", type=int, default=1000, help="MI-critic steps of the fresh-learner experiments")
    ap.add_argument("--transitions", type=int, default=20000, help="random-action transitions of the fresh buffer")
    ap.add_argument("--run", action="append", default=[], help="a trained run to probe (repeatable)")
    ap.add_argument("--batches", type=int, default=8, help="batches averaged per trained run")
    ap.add_argument("--out", default=str(ROOT / "results" / "vmm_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    spec = make_env(args.task).spec
    at = sorted({0, 10, 30, 100, 300, args.steps} & set(range(args.steps + 1)))
    res: dict = {
        "command": " ".join(["python benchmarks/vmm_probe.py", *(argv if argv is not None else sys.argv[1:])]),
        "task": args.task,
        "log4": LOG4,
        "experiments": {},
    }
    for name, independent in (("critic_only", False), ("control_independent", True)):
        print(name)
        cfg, learner, pop = build(args.task, "race", ["precision=fp32"], spec)
        buffer = random_transitions(args.task, args.transitions, spec, learner.max_obs, learner.layout.joint_dim)
        res["experiments"][name] = train_critic_only(
            learner, buffer, pop, args.steps, at, cfg.learner.batch_size, independent
        )
    for run in args.run:
        path = Path(run).expanduser()
        print(f"run {path}")
        res["experiments"][f"run:{path.name}"] = r = trained(path, args.batches, 256)
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()))
    res["table"] = table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(f"Command: `{res['command']}`\n\n{res['table']}\n")
    print(res["table"])
    return res


COLS = ("mi_share", "t_joint", "t_other", "gate_joint", "gate_other", "top1", "grad_vfm", "grad_actor",
        "grad_vmm_unit", "beta_for_10pct")  # fmt: skip


def table(res: dict) -> str:
    lines = ["| experiment | step | " + " | ".join(COLS) + " |", "|---|---|" + "---|" * len(COLS)]
    for name, rows in res["experiments"].items():
        for r in rows if isinstance(rows, list) else [rows]:
            step = r.get("step", r.get("env_steps"))
            lines.append(f"| {name} | {step} | " + " | ".join(f"{r[c]:.3g}" for c in COLS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
