"""CPU update rate of MATD3 and RACE (on a discrete task: FACMAC and RACE-discrete) under two configs, measured side
by side: by default float32 against bfloat16 (`precision=fp32` vs `precision=bf16`, issue 19; earlier: issue 11's CPU
lead).

The learners of both variants are built from the same seed, fed the same buffer (random-action transitions of
the task; on a discrete task, whole episodes that the first variant's teams played, with the run's own sampling of
`discrete.batch_episodes` episodes per update), and timed in interleaved blocks (A B B A ...), so both see the same machine load; CPU time of the
main thread (steadier than wall time on a shared machine) and wall time are both reported. Also: FLOPs per
update (forward + backward matrix products, `torch.utils.flop_counter`), the FLOP rate and its share of both of the
machine's peaks (the best float32 and the best bfloat16 2048^3 matrix product on one thread, in CPU time, each
measured in the same run, before and after the timed blocks), and the CPU time of the target computation
(`critic_target`: target encoder pass + smoothed target policy + target critic, under the variant's precision;
continuous tasks only).

    python benchmarks/update_speed.py                                  # precision=fp32 vs bf16, HalfCheetah-6x1
    python benchmarks/update_speed.py --task smax/3m --out benchmarks/results/update_speed_smax_3m.json
    python benchmarks/update_speed.py --a net.fast_tanh=false --b net.fast_tanh=true --seconds 60
    python benchmarks/update_speed.py --a torch_threads=1 --b torch_threads=2 --out benchmarks/results/update_speed_threads.json

A variant with `torch_threads` above 1 runs its blocks with that many intra-op threads: compare its wall time (the
CPU time is the main thread's only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from racemarl.algorithms.matd3 import MATD3  # noqa: E402
from racemarl.algorithms.race import RaceLearner  # noqa: E402
from racemarl.config import build_config  # noqa: E402
from racemarl.data.buffer import ReplayBuffer  # noqa: E402
from racemarl.envs import is_discrete_task, make_env  # noqa: E402
from racemarl.nets.policy import init_heads  # noqa: E402

sys.path.insert(0, str(ROOT))
from throughput import flops_per_update  # noqa: E402


def cpu_peak(size: int = 2048, reps: int = 6, dtype: torch.dtype = torch.float32) -> float:
    """Best matrix-product rate of `dtype` on this thread in GFLOP/s of CPU time (comparable with the updates' rate)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(_cpu_time(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best / 1e9


def _cpu_time(fn) -> float:
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def random_transitions(task: str, n: int, spec, max_obs: int, joint: int, seed: int = 0) -> ReplayBuffer:
    from racemarl.nets.policy import pad_obs

    env = make_env(task)
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(n, spec.n_agents, max_obs, spec.state_dim, joint, seed=seed)
    o, s, _ = env.reset(seed=seed)
    rows = {k: [] for k in ReplayBuffer.FIELDS}
    for _ in range(n):
        a = [rng.uniform(lo, hi).astype(np.float32) for lo, hi in zip(spec.act_low, spec.act_high)]
        res = env.step(a)
        rows["obs"].append(pad_obs(o, max_obs))
        rows["state"].append(np.asarray(s, np.float32))
        rows["action"].append(np.concatenate(a))
        rows["reward"].append(res.reward)
        rows["next_obs"].append(pad_obs(res.obs, max_obs))
        rows["next_state"].append(np.asarray(res.state, np.float32))
        rows["terminated"].append(float(res.terminated))
        o, s = res.obs, res.state
        if res.terminated or res.truncated:
            o, s, _ = env.reset(seed=int(rng.integers(2**31)))
    env.close()
    buf.add(**{k: np.asarray(v, np.float32) for k, v in rows.items()})
    return buf


def build(task: str, algo: str, overrides: list[str], spec):
    cfg = build_config(None, list(overrides), algo=algo, env={"task": task}, progress=False)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    learner = (RaceLearner if algo == "race" else MATD3)(spec, cfg, gen)
    pop = None
    if algo == "race":
        lay = learner.layout
        pop = init_heads(cfg.race.pop_size, spec.n_agents, lay.max_act, cfg.net.embed_dim, lay.row_mask, gen)
    return cfg, learner, pop


def build_discrete(task: str, algo: str, overrides: list[str], run_dir: Path):
    """A discrete task's learner and population, inside a Trainer (its episode buffer, its batch of episodes)."""
    from racemarl.train import Trainer

    cfg = build_config(None, list(overrides), algo=algo, env={"task": task}, progress=False, total_steps=10**9)
    trainer = Trainer(cfg, run_dir)
    return cfg, trainer


def target_ms(learner, buffer, batch_size: int, n: int = 10) -> float:
    """CPU ms of the target computation of `MATD3.update` (the `critic_target` section)."""
    batches = [buffer.sample(batch_size) for _ in range(n)]
    t = time.thread_time()
    with torch.no_grad(), learner.amp():
        for b in batches:
            z = learner.encoders_targ(b.next_obs)
            a = learner.smoothed_policy(z, learner.marl_heads_targ)
            learner.critic_values(learner.critic_targ, b.next_obs, b.next_state, a).min(0)
    return (time.thread_time() - t) / n * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mamujoco/HalfCheetah-6x1")
    ap.add_argument("--a", default="precision=fp32", help="comma-separated --set overrides of variant A")
    ap.add_argument("--b", default="precision=bf16", help="comma-separated --set overrides of variant B")
    ap.add_argument("--seconds", type=float, default=40.0, help="timed blocks of all four learners together")
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "results" / "update_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    variants = {"A": [x for x in args.a.split(",") if x], "B": [x for x in args.b.split(",") if x]}
    discrete = is_discrete_task(args.task)
    algos = ("facmac", "race") if discrete else ("matd3", "race")
    trainers = []
    if discrete:  # whole episodes, played by the first variant's RACE teams, shared by every learner
        tmp_dir = tempfile.TemporaryDirectory(prefix="update_speed_")  # the trainers' run folders, removed at the end
        tmp = Path(tmp_dir.name)
        built = {
            (v, a): build_discrete(args.task, a, ov, tmp / f"{v}_{a}") for v, ov in variants.items() for a in algos
        }
        trainers = [t for _, t in built.values()]
        source = built[("A", "race")][1]
        while len(source.buffer) < 4 * source.cfg.discrete.batch_episodes:
            source.play_generation()
        buffer = source.buffer
        learners = {k: (cfg, t.learner, t.population) for k, (cfg, t) in built.items()}
        batch = {k: cfg.discrete.batch_episodes for k, (cfg, _) in built.items()}
    else:
        spec = make_env(args.task).spec
        learners = {(v, algo): build(args.task, algo, ov, spec) for v, ov in variants.items() for algo in algos}
        any_learner = next(iter(learners.values()))[1]
        buffer = random_transitions(args.task, 5000, spec, any_learner.max_obs, any_learner.layout.joint_dim)
        batch = {k: cfg.learner.batch_size for k, (cfg, _, _) in learners.items()}
    peaks = {"fp32": [cpu_peak()], "bf16": [cpu_peak(dtype=torch.bfloat16)]}
    flops, targets = {}, {k: [] for k in learners}
    for key, (_, learner, pop) in learners.items():
        for _ in range(4):
            learner.update(buffer.sample(batch[key]), pop)
        flops[key] = flops_per_update(learner, buffer, pop, batch[key])
    times = {k: {"cpu": [], "wall": []} for k in learners}
    order = list(learners)
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or time.perf_counter() - start < args.seconds:
        for key in order if rounds % 2 == 0 else order[::-1]:
            cfg, learner, pop = learners[key]
            torch.set_num_threads(cfg.torch_threads)  # the variant's intra-op threads (default 1)
            w, c = time.perf_counter(), time.thread_time()
            for _ in range(args.block):
                learner.update(buffer.sample(batch[key]), pop)
            times[key]["cpu"].append((time.thread_time() - c) / args.block)
            times[key]["wall"].append((time.perf_counter() - w) / args.block)
            torch.set_num_threads(1)
            if not discrete:
                targets[key].append(target_ms(learner, buffer, batch[key], 3))
        rounds += 1
    peaks["fp32"].append(cpu_peak())
    peaks["bf16"].append(cpu_peak(dtype=torch.bfloat16))
    peak, peak16 = max(peaks["fp32"]), max(peaks["bf16"])
    res = {
        "command": " ".join(["python benchmarks/update_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "task": args.task,
        "variants": variants,
        "peak_gflops": peak,
        "peak_gflops_bf16": peak16,
        "peaks": peaks,
        "rounds": rounds,
        "block": args.block,
        "load": os.getloadavg(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": {},
    }
    lines = [
        f"| variant | algo | CPU ms/update | updates/s (CPU) | wall ms/update | GFLOP/update | GFLOP/s (CPU) | "
        f"share of fp32 peak ({peak:.0f} GFLOP/s) | share of bf16 peak ({peak16:.0f} GFLOP/s) | critic_target CPU ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (v, algo), t in times.items():
        cpu, wall = statistics.median(t["cpu"]), statistics.median(t["wall"])
        f = flops[(v, algo)]
        r = {
            "variant": v,
            "overrides": variants[v],
            "algo": algo,
            "cpu_ms_per_update": cpu * 1e3,
            "wall_ms_per_update": wall * 1e3,
            "ups_cpu": 1 / cpu,
            "flops_per_update": f,
            "gflops_cpu": f / cpu / 1e9,
            "peak_share": f / cpu / 1e9 / peak,
            "peak_share_bf16": f / cpu / 1e9 / peak16,
            "critic_target_cpu_ms": statistics.median(targets[(v, algo)]) if targets[(v, algo)] else None,
            "blocks": len(t["cpu"]),
        }
        res["results"][f"{v}/{algo}"] = r
        lines.append(
            f"| {v}: {','.join(variants[v]) or 'defaults'} | {algo} | {r['cpu_ms_per_update']:.1f} | "
            f"{r['ups_cpu']:.1f} | {r['wall_ms_per_update']:.1f} | {f / 1e9:.2f} | {r['gflops_cpu']:.1f} | "
            f"{r['peak_share']:.0%} | {r['peak_share_bf16']:.0%} | "
            + ("-" if r["critic_target_cpu_ms"] is None else f"{r['critic_target_cpu_ms']:.1f}")
            + " |"
        )
    for trainer in trainers:
        trainer.close()
    if discrete:
        tmp_dir.cleanup()
    for algo in algos:
        a, b = res["results"].get(f"A/{algo}"), res["results"].get(f"B/{algo}")
        if a and b:
            res[f"speedup_{algo}"] = a["cpu_ms_per_update"] / b["cpu_ms_per_update"]
            lines.append(f"\n{algo}: B is {res[f'speedup_{algo}']:.2f}x as fast as A (CPU time per update)")
    res["table"] = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(res["command"])
    print(res["table"])
    print(f"load average {res['load']}, {rounds} rounds of {args.block} updates per learner")
    return res


if __name__ == "__main__":
    main()
