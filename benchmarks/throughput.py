"""Throughput benchmark (issue #5, "measure first"): where the time of a training step goes.

For each task, with the default config (batch 256, encoders 400-300, critics 400-300), in one run:

1. raw environment steps/s (random actions, the env alone);
2. population rollout steps/s: `Trainer(algo=ea).play_generation()` (every team acts with its policy,
   transitions stored, no learning) with 1 rollout worker (inline) and N worker processes;
3. learner update steps/s of MATD3 and RACE on real transitions (blocks of the two learners
   interleaved, so both see the same machine load), their FLOPs per update (forward + backward,
   `torch.utils.flop_counter`) and the FLOP rate they reach, next to the machine's peak (a float32
   matrix product on one thread, measured in the same run), and a per-section profile from the
   `record_function` labels of `MATD3.update`;
4. end-to-end training steps/s of MATD3 and RACE at one update per env step (`Trainer.train()`, runs
   in the order MATD3, RACE, RACE, MATD3, each timed from its first generation that learns), with a
   breakdown of where the time went (trainer, rollout, env and buffer methods wrapped with timers)
   and the loop overhead: end-to-end time - (env time + update time, both measured in isolation in
   1 and 3).

One PyTorch thread and flush-denormal, as training uses. Wall-clock and CPU time (of the main
thread) are both recorded: on a machine shared with other processes the CPU-time figures are the
steadier ones, and the goals are judged on them. Writes `benchmarks/results/throughput.json` and
`throughput.md` and prints the Markdown.

    python benchmarks/throughput.py                 # about 5-8 minutes on a 2-core machine
    python benchmarks/throughput.py --quick         # smoke test, about 2 minutes
    python benchmarks/throughput.py --device cuda --e2e-workers 8   # learner and buffer on the GPU (see gpu_check.sh)

With `--device cuda` the learners, their optimisers and the replay buffer live on the GPU (as `racemarl train
--device cuda` puts them), timed blocks end with `torch.cuda.synchronize()`, the GPU time per update is measured
with CUDA events, the peak is a float32 matrix product on the GPU (TF32 off) and the profile adds device time
per section; the end-to-end runs use `--e2e-workers` rollout processes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))

from racemarl.acting import rollout
from racemarl.algorithms.matd3 import MATD3
from racemarl.algorithms.race import RaceLearner
from racemarl.config import build_config
from racemarl.data.buffer import ReplayBuffer
from racemarl.envs import make_env
from racemarl.nets.policy import init_heads
from racemarl.train import Trainer

TASKS = "mamujoco/HalfCheetah-6x1,mamujoco/Ant-2x4"
ALGOS = ("matd3", "race")
TD3_REFERENCE_SPS = 140.0  # issue #5: a well-known single-file TD3, HalfCheetah-v5, batch 256, 256x256, this machine
# record_function labels of MATD3.update / RaceLearner (see racemarl/algorithms/matd3.py)
UPDATE_LABELS = ("critic_target", "critic_loss", "pevfa_target", "pevfa_loss", "value_loss", "critic_backward",
                 "critic_optim", "encoder_forward", "actor_loss", "vfm_loss", "vmm_loss", "actor_backward",
                 "actor_optim", "target_update")
GOAL_RATIO, GOAL_PEAK_SHARE, GOAL_OVERHEAD = 0.6, 0.30, 15.0
DEVICE = torch.device("cpu")  # set by --device
E2E_WORKERS = 0  # set by --e2e-workers: rollout worker processes of the end-to-end runs (0 = inline)


def sync() -> None:
    """Wait for the device (timed blocks on a GPU end here); nothing on the CPU."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def setup_torch() -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall-clock and main-thread CPU seconds since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.thread_time() - self.cpu


# ---------------------------------------------------------------------------------------------- timers


class Timers:
    """Wall and CPU seconds and calls per name, collected by wrapping methods (`wrap`) inside a block."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def snapshot(self) -> dict:
        return {"wall": dict(self.wall), "cpu": dict(self.cpu), "calls": dict(self.calls)}

    @staticmethod
    def between(a: dict, b: dict) -> dict:
        """What was spent between snapshots a and b."""
        return {kind: {k: v - a[kind].get(k, 0) for k, v in b[kind].items()} for kind in b}

    @contextmanager
    def wrap(self, owner, attr: str, name: str):
        """Time every call of `owner.attr` (a class or an instance) as `name` inside the block."""
        own = vars(owner).get(attr)  # None: inherited (class) or a bound method (instance)
        inner = own if isinstance(owner, type) and own is not None else getattr(owner, attr)

        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t
                self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - c
                self.calls[name] = self.calls.get(name, 0) + 1

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            if own is not None:
                setattr(owner, attr, own)
            else:
                delattr(owner, attr)


# ---------------------------------------------------------------------------------------------- 0. peak


def matmul_peak(size: int, reps: int) -> dict:
    """Best float32 matrix-product rate, GFLOP/s: on one CPU thread, or on the GPU (TF32 off) with --device cuda."""
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    a @ b
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    flops = 2 * size**3
    return {"size": size, "reps": reps, "best_gflops": flops / min(times) / 1e9,
            "median_gflops": flops / statistics.median(times) / 1e9, "load": load()}


# ---------------------------------------------------------------------------------------------- 1. env


def env_steps_per_s(task: str, seconds: float) -> dict:
    env = make_env(task)
    spec = env.spec
    rng = np.random.default_rng(0)
    lows = [np.asarray(x, np.float32) for x in spec.act_low]
    highs = [np.asarray(x, np.float32) for x in spec.act_high]
    env.reset(seed=0)
    steps, episodes = 0, 0
    clock = Clock()
    while clock.read()[0] < seconds:
        res = env.step([rng.uniform(lo, hi).astype(np.float32) for lo, hi in zip(lows, highs)])
        steps += 1
        if res.terminated or res.truncated:
            episodes += 1
            env.reset(seed=episodes)
    wall, cpu = clock.read()
    env.close()
    return {"steps": steps, "seconds": wall, "cpu_seconds": cpu, "sps": steps / wall, "sps_cpu": steps / cpu,
            "load": load()}


# ---------------------------------------------------------------------------------------------- 2. rollouts


def config(task: str, algo: str, overrides: list[str] = (), **top):
    return build_config(None, list(overrides), algo=algo, env={"task": task}, progress=False, **top)


def rollout_steps_per_s(task: str, workers: int, seconds: float, episode_steps: int | None,
                        run_dir: Path) -> tuple[dict, ReplayBuffer]:
    """Population generations (algo ea: every team acts with its policy, no learning)."""
    backend = "inline" if workers <= 1 else "process"
    overrides = [f"rollout.backend={backend}", f"rollout.workers={workers}"]
    if episode_steps:
        overrides.append(f"env.max_episode_steps={episode_steps}")
    cfg = config(task, "ea", overrides, eval_episodes=1)
    with Trainer(cfg, run_dir) as trainer:
        trainer.play_generation()  # warm-up (starts the worker processes)
        steps, gens = 0, 0
        clock = Clock()
        while gens < 1 or clock.read()[0] < seconds:
            _, n = trainer.play_generation()
            steps, gens = steps + n, gens + 1
            trainer.progress.generation += 1
        wall, _ = clock.read()
    return {"workers": workers, "backend": backend, "slots": trainer.n_slots, "generations": gens, "steps": steps,
            "seconds": wall, "sps": steps / wall, "load": load()}, trainer.buffer


# ---------------------------------------------------------------------------------------------- 3. updates


def build_learner(task: str, algo: str):
    cfg = config(task, algo)
    spec = make_env(task).spec
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    learner = (RaceLearner if algo == "race" else MATD3)(spec, cfg, gen)
    population = None
    if algo == "race":
        lay = learner.layout
        population = init_heads(cfg.race.pop_size, spec.n_agents, lay.max_act, cfg.net.embed_dim, lay.row_mask, gen)
    if DEVICE.type != "cpu":  # as Trainer does: the learner and its random draws on the device
        learner.to(DEVICE)
        learner.generator = torch.Generator(DEVICE).manual_seed(cfg.seed)
        population = None if population is None else population.to(DEVICE)
    return cfg, learner, population


def on_device(buffer: ReplayBuffer) -> ReplayBuffer:
    """The rollout benchmark's (CPU) buffer, copied onto DEVICE."""
    if DEVICE.type == "cpu":
        return buffer
    out = ReplayBuffer(buffer.capacity, *buffer.shapes["obs"], buffer.shapes["state"][0], buffer.shapes["action"][0],
                       device=DEVICE)
    out.load_state_dict(buffer.state_dict())
    return out


def flops_per_update(learner, buffer: ReplayBuffer, population, batch_size: int) -> int:
    """Forward + backward FLOPs of the matrix products of one update, averaged over a policy-delay cycle."""
    n = learner.lcfg.policy_delay
    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(n):
            learner.update(buffer.sample(batch_size), population)
    return int(counter.get_total_flops() / n)


def profile_update(learner, buffer: ReplayBuffer, population, batch_size: int, n: int) -> dict:
    """ms per update of each labelled section, from torch.profiler (inflated by the profiler: use the shares)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            learner.update(buffer.sample(batch_size), population)
        sync()
    events = {e.key: e for e in prof.key_averages() if e.key in UPDATE_LABELS}
    out = {k: events[k].cpu_time_total / n / 1e3 for k in UPDATE_LABELS if k in events}
    if DEVICE.type == "cuda":  # the device time of each section's kernels
        out.update({f"{k} (gpu)": getattr(events[k], "device_time_total", 0.0) / n / 1e3
                    for k in UPDATE_LABELS if k in events})
    return out


def update_steps_per_s(task: str, buffer: ReplayBuffer, seconds: float, block: int, profile_n: int) -> dict:
    """MATD3 and RACE updates, blocks of `block` updates of each in turn (ABBA) for about `seconds` in all."""
    learners = {algo: build_learner(task, algo) for algo in ALGOS}
    buffer = on_device(buffer)
    flops, times = {}, {algo: {"wall": [], "cpu": [], "gpu": []} for algo in ALGOS}
    for algo, (cfg, learner, pop) in learners.items():
        for _ in range(2 * cfg.learner.policy_delay):  # warm-up
            learner.update(buffer.sample(cfg.learner.batch_size), pop)
        flops[algo] = flops_per_update(learner, buffer, pop, cfg.learner.batch_size)
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or time.perf_counter() - start < seconds:
        for algo in (ALGOS if rounds % 2 == 0 else ALGOS[::-1]):
            cfg, learner, pop = learners[algo]
            sync()
            clock = Clock()
            if DEVICE.type == "cuda":
                start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start_ev.record()
            for _ in range(block):
                learner.update(buffer.sample(cfg.learner.batch_size), pop)
            if DEVICE.type == "cuda":
                end_ev.record()
            sync()
            wall, cpu = clock.read()
            times[algo]["wall"].append(wall / block)
            times[algo]["cpu"].append(cpu / block)
            if DEVICE.type == "cuda":
                times[algo]["gpu"].append(start_ev.elapsed_time(end_ev) / 1e3 / block)
        rounds += 1
    out = {}
    for algo, (cfg, learner, pop) in learners.items():
        wall, cpu = statistics.median(times[algo]["wall"]), statistics.median(times[algo]["cpu"])
        out[algo] = {"algo": algo, "batch_size": cfg.learner.batch_size, "updates": block * rounds, "blocks": rounds,
                     "ms_per_update": wall * 1e3, "cpu_ms_per_update": cpu * 1e3, "ups": 1 / wall, "ups_cpu": 1 / cpu,
                     "flops_per_update": flops[algo], "gflops": flops[algo] / wall / 1e9,
                     "gflops_cpu": flops[algo] / cpu / 1e9, "device": str(DEVICE),
                     "gpu_ms_per_update": statistics.median(times[algo]["gpu"]) * 1e3 if times[algo]["gpu"] else None,
                     "profile_ms": profile_update(learner, buffer, pop, cfg.learner.batch_size, profile_n)
                     if profile_n else {}, "load": load()}
    return out


def td3_reference_flops(batch_size: int = 256, obs: int = 17, act: int = 6, hidden: int = 256) -> int:
    """FLOPs of one update of a standard TD3 (HalfCheetah-v5 sizes, 256x256 actor and twin critics, policy delay 2),
    averaged over the delay cycle. Counted on a forward/backward of such networks, not a trainer."""
    def mlp(i, o):
        return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, o))

    actor, q1, q2 = mlp(obs, act), mlp(obs + act, 1), mlp(obs + act, 1)
    actor_t, q1_t, q2_t = copy.deepcopy(actor), copy.deepcopy(q1), copy.deepcopy(q2)
    s, s2 = torch.randn(batch_size, obs), torch.randn(batch_size, obs)
    a, r = torch.randn(batch_size, act), torch.randn(batch_size, 1)
    counter = FlopCounterMode(display=False)
    with counter:
        for step in range(2):
            with torch.no_grad():
                a2 = (torch.tanh(actor_t(s2)) + 0.1 * torch.randn(batch_size, act)).clamp(-1, 1)
                sa2 = torch.cat([s2, a2], 1)
                y = r + 0.99 * torch.minimum(q1_t(sa2), q2_t(sa2))
            sa = torch.cat([s, a], 1)
            ((q1(sa) - y).pow(2).mean() + (q2(sa) - y).pow(2).mean()).backward()
            if step == 1:
                (-q1(torch.cat([s, torch.tanh(actor(s))], 1)).mean()).backward()
    return int(counter.get_total_flops() / 2)


# ---------------------------------------------------------------------------------------------- 4. end to end


def slots_of(cfg) -> int:
    return int(cfg.uses_marl) + (cfg.race.pop_size * cfg.race.episodes_per_team if cfg.uses_population else 0)


def end_to_end(task: str, algo: str, timed_steps: int, episode_steps: int, run_dir: Path) -> dict:
    """`Trainer.train()` at one update per env step; timed from the start of the first generation that learns to
    the end of the last generation's logging (the evaluations and checkpoints are outside the window)."""
    probe = config(task, algo)
    # learning starts with the generation after the one that fills a batch (RACE: after one full generation)
    start_steps = max(probe.learner.batch_size, slots_of(probe) * episode_steps) + 1
    overrides = [f"env.max_episode_steps={episode_steps}", f"learner.start_steps={start_steps}", f"device={DEVICE}",
                 "checkpoint_minutes=0"]  # no wall-clock checkpoint inside the timed window either
    if E2E_WORKERS > 1:
        overrides += ["rollout.backend=process", f"rollout.workers={E2E_WORKERS}"]
    cfg = config(task, algo, overrides, total_steps=start_steps + timed_steps, eval_interval=10**12, eval_episodes=1)
    timers = Timers()
    gens: list[dict] = []  # per generation: clocks, env steps and updates at its start and end, timer snapshots
    play, log = Trainer.play_generation, Trainer.log_generation

    def play_marked(self):
        gens.append({"t": time.perf_counter(), "c": time.thread_time(), "env_steps": self.progress.env_steps,
                     "updates": self.progress.updates, "timers": timers.snapshot()})
        return play(self)

    def log_marked(self, fitness):
        out = log(self, fitness)
        gens[-1].update(t_end=time.perf_counter(), c_end=time.thread_time(), env_steps_end=self.progress.env_steps,
                        updates_end=self.progress.updates, timers_end=timers.snapshot())
        return out

    trainer = Trainer(cfg, run_dir)
    env_cls = type(trainer.eval_envs[0])
    wraps = [(Trainer, "play_generation", "play"), (Trainer, "store", "store"), (Trainer, "learn", "learn"),
             (Trainer, "evolve_population", "evolve"), (Trainer, "log_generation", "log"),
             (rollout.SlotActor, "forward", "acting"), (env_cls, "step", "env_step"), (env_cls, "reset", "env_reset"),
             (ReplayBuffer, "add", "buffer_add"), (ReplayBuffer, "sample", "buffer_sample"),
             (trainer.learner, "update", "update")]
    Trainer.play_generation, Trainer.log_generation = play_marked, log_marked
    try:
        with ExitStack() as stack:
            for owner, attr, name in wraps:
                stack.enter_context(timers.wrap(owner, attr, name))
            trainer.train()
    finally:
        Trainer.play_generation, Trainer.log_generation = play, log
    first = next(i for i, g in enumerate(gens) if g["updates_end"] > g["updates"])
    g0, g1 = gens[first], gens[-1]
    return {"algo": algo, "episode_steps": episode_steps, "start_steps": cfg.learner.start_steps,
            "generations": len(gens) - first, "steps": g1["env_steps_end"] - g0["env_steps"],
            "updates": g1["updates_end"] - g0["updates"], "seconds": g1["t_end"] - g0["t"],
            "cpu_seconds": g1["c_end"] - g0["c"], "timers": Timers.between(g0["timers"], g1["timers_end"]),
            "load": load()}


def pool_runs(runs: list[dict]) -> dict:
    """Sum of several end-to-end runs of one algorithm."""
    out = {k: runs[0][k] for k in ("algo", "episode_steps", "start_steps")}
    for k in ("generations", "steps", "updates", "seconds", "cpu_seconds"):
        out[k] = sum(r[k] for r in runs)
    out["timers"] = {kind: {} for kind in runs[0]["timers"]}
    for r in runs:
        for kind, d in r["timers"].items():
            for k, v in d.items():
                out["timers"][kind][k] = out["timers"][kind].get(k, 0) + v
    out["sps"], out["sps_cpu"] = out["steps"] / out["seconds"], out["steps"] / out["cpu_seconds"]
    out["runs"] = [{k: r[k] for k in ("steps", "updates", "seconds", "cpu_seconds", "load")} for r in runs]
    return out


def overheads(e: dict, env: dict, upd: dict) -> dict:
    """Loop overhead, %: the e2e window minus (env + update time) over (env + update time)."""
    t = e["timers"]
    iso_wall = e["steps"] / env["sps"] + e["updates"] * upd["ms_per_update"] / 1e3
    iso_cpu = e["steps"] / env["sps_cpu"] + e["updates"] * upd["cpu_ms_per_update"] / 1e3
    in_run = sum(t["wall"].get(k, 0.0) for k in ("env_step", "env_reset", "update"))
    return {"isolated_s": iso_wall, "isolated_cpu_s": iso_cpu, "in_run_env_update_s": in_run,
            "overhead_pct": 100 * (e["seconds"] - iso_wall) / iso_wall,
            "overhead_cpu_pct": 100 * (e["cpu_seconds"] - iso_cpu) / iso_cpu,
            "overhead_in_run_pct": 100 * (e["seconds"] - in_run) / in_run,
            "e2e_update_ms": 1e3 * t["wall"].get("update", 0.0) / max(e["updates"], 1),
            "e2e_env_ms": 1e3 * t["wall"].get("env_step", 0.0) / max(e["steps"], 1)}


def breakdown(e: dict, upd: dict) -> dict:
    """Wall seconds of the e2e window by activity; the update split by the profile's shares of its sections."""
    t = e["timers"]["wall"]
    play, store, acting = t.get("play", 0.0), t.get("store", 0.0), t.get("acting", 0.0)
    env = t.get("env_step", 0.0) + t.get("env_reset", 0.0)
    update, sample = t.get("update", 0.0), t.get("buffer_sample", 0.0)
    learn, evolve, log = t.get("learn", 0.0), t.get("evolve", 0.0), t.get("log", 0.0)
    out = {
        "acting (policy forward)": acting,
        "env stepping (+ resets)": env,
        "rollout bookkeeping (plan, actions, records)": play - store - acting - env,
        "buffer add (store)": store,
        "buffer sample": sample,
    }
    prof = upd.get("profile_ms") or {}
    total = sum(prof.values())
    if total > 0:
        for k in UPDATE_LABELS:
            out[f"update: {k}"] = update * prof[k] / total if k in prof else None
    else:
        out["update"] = update
    out["learn bookkeeping (loss sums)"] = learn - update - sample
    out["evolution"] = evolve
    out["logging (TensorBoard scalars)"] = log
    out["loop remainder (progress bar, eval check)"] = e["seconds"] - play - learn - evolve - log
    return out


# ---------------------------------------------------------------------------------------------- report


def goals(t: dict, peak: float) -> list[dict]:
    e, u = t["e2e"], t["update"]
    ratio = e["race"]["sps_cpu"] / e["matd3"]["sps_cpu"]
    flop_ratio = u["matd3"]["flops_per_update"] / u["race"]["flops_per_update"]
    out = [{"goal": f"RACE end-to-end steps/s >= {GOAL_RATIO}x MATD3's (CPU time)", "value": round(ratio, 3),
            "wall_value": round(e["race"]["sps"] / e["matd3"]["sps"], 3), "met": ratio >= GOAL_RATIO,
            "flop_ratio": round(flop_ratio, 3),
            "why": (f"MATD3/RACE FLOPs per update = {flop_ratio:.3f}: at equal FLOP rates the update ratio is that, "
                    "and env + acting (a smaller share per step for RACE) move the end-to-end ratio only slightly "
                    "above it")}]
    for algo in ALGOS:
        share = t["update"][algo]["gflops_cpu"] / peak
        out.append({"goal": f"{algo} update FLOP rate >= {GOAL_PEAK_SHARE:.0%} of peak (CPU time)",
                    "value": round(share, 3), "wall_value": round(t["update"][algo]["gflops"] / peak, 3),
                    "met": share >= GOAL_PEAK_SHARE})
    for algo in ALGOS:
        ov = e[algo]["overhead_cpu_pct"]
        out.append({"goal": f"{algo} loop overhead <= {GOAL_OVERHEAD:.0f}% over env + update in isolation (CPU time)",
                    "value": round(ov, 1), "wall_value": round(e[algo]["overhead_pct"], 1), "met": ov <= GOAL_OVERHEAD})
    return out


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    peak = res["peak"]["best_gflops"]
    m, st = res["machine"], res["settings"]
    wk = st["workers"]
    lines = ["# Throughput benchmark", "",
             "Generated by `benchmarks/throughput.py`; do not edit by hand.", "",
             (f"Command: `{res['command']}` ({res['benchmark_seconds']:.0f} s). Machine: {m['cpu']}, {m['cores']} cores, "
              f"torch {m['torch']}, 1 PyTorch thread. 1-minute load average during the run: {m['load_min']}-{m['load_max']}: "
              "other processes shared the machine, so wall-clock figures include waiting for a core; CPU-time "
              "figures (main thread) are the steadier ones and the goals are judged on them."), "",
             (f"Peak: float32 {res['peak']['size']}x{res['peak']['size']} matrix product on one thread, best of "
              f"{res['peak']['reps']} products, measured {len(res['peak']['samples'])} times over the run (before the "
              f"first task and after each): **{peak:.1f} GFLOP/s** (the best; the measurements gave "
              + ", ".join(f"{x['best_gflops']:.0f}" for x in res["peak"]["samples"]) + ")."), "",
             "## Steps per second", "",
             (f"| task | env alone | rollout, 1 worker | rollout, {wk} workers | MATD3 updates/s | RACE updates/s | "
              "MATD3 end-to-end | RACE end-to-end | RACE / MATD3 end-to-end |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        r1, rn = t["rollout"][0], t["rollout"][-1]
        u, e = t["update"], t["e2e"]
        lines.append(
            f"| {task} | {t['env']['sps']:.0f} ({t['env']['sps_cpu']:.0f}) | {r1['sps']:.0f} | {rn['sps']:.0f} | "
            f"{u['matd3']['ups']:.1f} ({u['matd3']['ups_cpu']:.1f}) | {u['race']['ups']:.1f} ({u['race']['ups_cpu']:.1f}) | "
            f"{e['matd3']['sps']:.1f} ({e['matd3']['sps_cpu']:.1f}) | {e['race']['sps']:.1f} ({e['race']['sps_cpu']:.1f}) | "
            f"{e['race']['sps'] / e['matd3']['sps']:.2f} ({e['race']['sps_cpu'] / e['matd3']['sps_cpu']:.2f}) |")
    ep = st["rollout_episode_steps"]
    lines += ["", ("Wall-clock figures, CPU-time figures in brackets. Rollouts: `algo=ea` generations "
              f"(5 teams, one episode each of at most {ep} steps, no learning, transitions stored; the {wk}-worker "
              "figure uses `rollout.backend=process`). Updates: MATD3 and RACE blocks interleaved, medians. "
              f"End-to-end: `Trainer.train()` with `env.max_episode_steps={st['e2e_episode_steps']}` (a RACE generation "
              f"is then {6 * st['e2e_episode_steps']} updates, not 6000), one update per env step, default inline "
              "rollouts; two runs per algorithm in the order MATD3, RACE, RACE, MATD3, each timed from its first "
              "generation that learns to its last generation's logging (evaluation and checkpoints are outside)."), "",
              "## Learner updates (batch 256)", "",
              "| task | algo | ms/update (wall) | ms/update (CPU) | GFLOP/update | GFLOP/s (CPU) | share of peak (CPU) |",
              "|---|---|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        for algo in ALGOS:
            u = t["update"][algo]
            lines.append(f"| {task} | {algo} | {u['ms_per_update']:.1f} | {u['cpu_ms_per_update']:.1f} | "
                         f"{u['flops_per_update'] / 1e9:.3f} | {u['gflops']:.1f} ({u['gflops_cpu']:.1f}) | "
                         f"{u['gflops'] / peak:.0%} ({u['gflops_cpu'] / peak:.0%}) |")
    ref = res["td3_reference"]
    text = (f"Reference (issue #5): a well-known single-file PyTorch TD3 runs about {ref['sps']:.0f} env steps/s with "
            f"learning on single-agent HalfCheetah-v5 (batch 256, 256x256 networks) on this machine. Its update is "
            f"{ref['flops_per_update'] / 1e9:.3f} GFLOP (same counter, policy delay 2), so at that speed its matrix "
            f"products run at about {ref['gflops_at_reference_sps']:.1f} GFLOP/s "
            f"({ref['gflops_at_reference_sps'] / peak:.0%} of this run's peak).")
    for task, t in res["tasks"].items():
        e, u = t["e2e"]["matd3"], t["update"]["matd3"]
        text += (f" MATD3 on {task}: {e['sps']:.1f} env steps/s end to end with {u['flops_per_update'] / 1e9:.2f} GFLOP "
                 f"per update ({u['flops_per_update'] / ref['flops_per_update']:.1f}x TD3's), i.e. "
                 f"{e['sps'] * u['flops_per_update'] / 1e9:.1f} GFLOP/s end to end.")
    lines += ["", text, "", "## End-to-end breakdown (wall seconds per 1000 env steps)", ""]
    for task, t in res["tasks"].items():
        e = t["e2e"]
        per_k = {a: 1000 / e[a]["steps"] for a in ALGOS}
        lines += [f"### {task}", "", "| activity | MATD3 | RACE |", "|---|---|---|"]
        for k in e["race"]["breakdown"]:
            cells = [_f(None if e[a]["breakdown"].get(k) is None else e[a]["breakdown"][k] * per_k[a]) for a in ALGOS]
            lines.append(f"| {k} | {cells[0]} | {cells[1]} |")
        rows = [("**total (window)**", "seconds"), ("env + update measured in isolation", "isolated_s"),
                ("env + update measured in this run", "in_run_env_update_s")]
        for label, key in rows:
            lines.append(f"| {label} | {e['matd3'][key] * per_k['matd3']:.2f} | {e['race'][key] * per_k['race']:.2f} |")
        lines.append(f"| update ms in this run / in isolation | {e['matd3']['e2e_update_ms']:.1f} / "
                     f"{t['update']['matd3']['ms_per_update']:.1f} | {e['race']['e2e_update_ms']:.1f} / "
                     f"{t['update']['race']['ms_per_update']:.1f} |")
        for label, key in (("loop overhead vs isolation, CPU time", "overhead_cpu_pct"),
                           ("loop overhead vs isolation, wall", "overhead_pct"),
                           ("loop overhead vs this run's env + update, wall", "overhead_in_run_pct")):
            lines.append(f"| **{label}** | {e['matd3'][key]:.1f}% | {e['race'][key]:.1f}% |")
        lines.append("")
    lines += [("Update rows split the update time measured in the run by the shares of the `record_function` sections "
               "in a torch.profiler run of the same learner (backward passes are per optimiser step, not per loss: the "
               "critic step backpropagates critic + PeVFA + value losses at once, the actor step actor + VFM + VMM). "
               "Loop overhead = window - (env steps / env-alone steps/s + updates x isolated time per update), over "
               "the latter; acting and rollout bookkeeping count as overhead."), "", "## Goals", "",
              "| task | goal | value (CPU time) | value (wall) | met |", "|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        for g in t["goals"]:
            lines.append(f"| {task} | {g['goal']} | {g['value']} | {g['wall_value']} | {'yes' if g['met'] else 'no'} |")
    for task, t in res["tasks"].items():
        g = t["goals"][0]
        lines.append("")
        lines.append(f"{task}: RACE / MATD3 end to end {g['value']} (CPU) / {g['wall_value']} (wall); {g['why']}.")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def notes(res: dict) -> list[str]:
    out = []
    for task, t in res["tasks"].items():
        for algo in ALGOS:
            prof = t["update"][algo]["profile_ms"]
            if prof:
                total = sum(prof.values())
                top = sorted(prof.items(), key=lambda kv: -kv[1])[:4]
                out.append(f"{task} {algo}: largest update sections (profile shares) "
                           + ", ".join(f"{k} {v / total:.0%}" for k, v in top) + ".")
        r1, rn = t["rollout"][0], t["rollout"][-1]
        out.append(f"{task}: {rn['workers']} rollout worker processes give {rn['sps'] / r1['sps']:.2f}x the rollout "
                   f"steps/s of one inline worker (this machine has {os.cpu_count()} cores, shared).")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--quick", action="store_true", help="smoke test: short durations and episodes")
    ap.add_argument("--env-seconds", type=float, default=3.0)
    ap.add_argument("--rollout-seconds", type=float, default=4.0, help="per worker count (at least one generation)")
    ap.add_argument("--workers", type=int, default=2, help="rollout worker processes of the second rollout measurement")
    ap.add_argument("--update-seconds", type=float, default=16.0, help="MATD3 and RACE blocks together")
    ap.add_argument("--profile-updates", type=int, default=8, help="updates profiled for the per-section split (0: none)")
    ap.add_argument("--e2e-steps", type=int, default=600, help="env steps timed per end-to-end run (2 runs per algorithm)")
    ap.add_argument("--e2e-episode-steps", type=int, default=100)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="where the learners and the buffer live: cpu (default), cuda, cuda:N")
    ap.add_argument("--e2e-workers", type=int, default=0,
                    help="rollout worker processes of the end-to-end runs (0 = inline, in the driver)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput.json, "
                                                "throughput-quick.json with --quick); the .md goes next to it")
    args = ap.parse_args(argv)
    global DEVICE, E2E_WORKERS
    from racemarl.device import resolve_device

    DEVICE, E2E_WORKERS = resolve_device(args.device), args.e2e_workers
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as training computes them
    rollout_episode_steps = None
    if args.quick:
        args.env_seconds, args.rollout_seconds, args.update_seconds = 0.5, 0.0, 2.0
        args.profile_updates, args.e2e_steps, args.e2e_episode_steps, args.peak_size = 4, 100, 50, 1024
        rollout_episode_steps = 100
    default_name = "throughput" + ("-gpu" if DEVICE.type == "cuda" else "") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"{default_name}.json"
    setup_torch()
    started = time.perf_counter()
    loads = [load()]
    argv_used = argv if argv is not None else sys.argv[1:]
    res: dict = {"command": " ".join(["python benchmarks/throughput.py", *argv_used]),
                 "settings": {k: v for k, v in vars(args).items() if k != "out"}, "tasks": {}}
    res["settings"]["rollout_episode_steps"] = rollout_episode_steps or 1000
    say(f"peak: {args.peak_size}x{args.peak_size} float32 matmul")
    peak_reps = 3 if args.quick else 8
    peaks = [matmul_peak(args.peak_size, peak_reps)]
    ref_flops = td3_reference_flops()
    res["td3_reference"] = {"sps": TD3_REFERENCE_SPS, "flops_per_update": ref_flops,
                            "gflops_at_reference_sps": ref_flops * TD3_REFERENCE_SPS / 1e9}
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for ti, task in enumerate(args.tasks.split(",")):
            t: dict = {}
            say(f"[{task}] env alone")
            t["env"] = env_steps_per_s(task, args.env_seconds)
            t["rollout"], buffer = [], None
            for w in (1, args.workers):
                say(f"[{task}] rollouts, {w} worker(s)")
                r, buf = rollout_steps_per_s(task, w, args.rollout_seconds, rollout_episode_steps,
                                             Path(tmp) / f"roll{ti}_{w}")
                t["rollout"].append(r)
                buffer = buffer or buf  # the inline run's transitions feed the update benchmark
            say(f"[{task}] MATD3 and RACE updates")
            t["update"] = update_steps_per_s(task, buffer, args.update_seconds, 5, args.profile_updates)
            del buffer, buf
            runs: dict[str, list] = {a: [] for a in ALGOS}
            for i, algo in enumerate(("matd3", "race", "race", "matd3")):
                say(f"[{task}] {algo} end to end ({i + 1}/4)")
                runs[algo].append(end_to_end(task, algo, args.e2e_steps, args.e2e_episode_steps,
                                             Path(tmp) / f"e2e{ti}_{i}_{algo}"))
            t["e2e"] = {}
            for algo in ALGOS:
                e = pool_runs(runs[algo])
                e.update(overheads(e, t["env"], t["update"][algo]))
                e["breakdown"] = breakdown(e, t["update"][algo])
                t["e2e"][algo] = e
            res["tasks"][task] = t
            loads.append(load())
            peaks.append(matmul_peak(args.peak_size, peak_reps))  # the peak again: the load of the machine varies
    # the machine's peak: the best of the measurements spread over the run
    res["peak"] = {**max(peaks, key=lambda x: x["best_gflops"]), "samples": peaks}
    peak = res["peak"]["best_gflops"]
    for t in res["tasks"].values():
        t["goals"] = goals(t, peak)
    res["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "device": str(DEVICE),
                      "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
                      "python": platform.python_version(), "load_min": min(loads), "load_max": max(loads)}
    res["benchmark_seconds"] = time.perf_counter() - started
    res["notes"] = notes(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    say(f"wrote {out} and {out.with_suffix('.md')} in {res['benchmark_seconds']:.0f} s")
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
