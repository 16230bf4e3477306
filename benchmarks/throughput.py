"""Throughput benchmark (issue #5, "measure first"): where the time of a training step goes, in float32 and in
bfloat16 side by side.

For each task, with the default config (batch 256, encoders 400-300, critics 400-300), in one run:

1. raw environment steps/s (random actions, the env alone);
2. population rollout steps/s: `Trainer(algo=ea).play_generation()` (every team acts with its policy,
   transitions stored, no learning) with 1 rollout worker (inline) and N worker processes;
3. learner update steps/s of every (algo, precision) pair: MATD3 and RACE, each with `precision=fp32` and
   `precision=bf16` (`--precisions`; the precision is always passed explicitly, never `auto`), on real
   transitions, the timed blocks of all the task's learners interleaved in A B C D D C B A order, so every
   learner sees the same machine load; their FLOPs per update (forward + backward, `torch.utils.flop_counter`)
   and the FLOP rate they reach as a share of both of the machine's peaks (a float32 and a bfloat16 matrix
   product, on one thread or on the GPU, measured before the first task and after each), and a per-section
   profile from the `record_function` labels of `MATD3.update`;
4. end-to-end training steps/s of every (algo, precision) pair at one update per env step (`Trainer.train()`, two
   runs per pair in the same mirrored order as 3, each timed from its first generation that learns), with a
   breakdown of where the time went (trainer, rollout, env and buffer methods wrapped with timers) and the loop
   overhead: end-to-end time - (env time + update time, both measured in isolation in 1 and 3).

The report: per (algo, precision) ms/update (wall, CPU), GFLOP/update, GFLOP/s, the shares of the fp32 and the
bf16 peak, end-to-end env steps/s; per algo the bf16/fp32 speed-up of the update and of end to end; the goals
(RACE/MATD3 end to end, peak share, loop overhead) per precision, the peak share against that precision's peak.

One PyTorch thread and flush-denormal, as training uses. Wall-clock and CPU time (of the main
thread) are both recorded: on a machine shared with other processes the CPU-time figures are the
steadier ones, and the goals are judged on them. Writes `benchmarks/results/throughput.json` and
`throughput.md` and prints the Markdown.

    python benchmarks/throughput.py                 # about 10-15 minutes on a 2-core machine
    python benchmarks/throughput.py --quick         # smoke test, about 4 minutes (6 on a loaded 2-core machine)
    python benchmarks/throughput.py --precisions fp32   # float32 only (half the update and end-to-end time)
    python benchmarks/throughput.py --device cuda --e2e-workers 8   # learner and buffer on the GPU (see gpu_check.sh)

With `--device cuda` the learners, their optimisers and the replay buffer live on the GPU (as `racemarl train
--device cuda` puts them), timed blocks end with `torch.cuda.synchronize()`, the GPU time per update is measured
with CUDA events, the peaks are a float32 (TF32 off) and a bfloat16 matrix product on the GPU and the profile adds
device time per section; the end-to-end runs use `--e2e-workers` rollout processes.
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
from racemarl.precision import resolve_precision
from racemarl.train import Trainer

TASKS = "mamujoco/HalfCheetah-6x1,mamujoco/Ant-2x4"
ALGOS = ("matd3", "race")
PRECISIONS = ("fp32", "bf16")  # what --precisions may name (explicit values only: the JSON says what was measured)
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # both peaks are measured whatever --precisions says
TD3_REFERENCE_SPS = 140.0  # issue #5: a well-known single-file TD3, HalfCheetah-v5, batch 256, 256x256, this machine
# record_function labels of MATD3.update / RaceLearner (see racemarl/algorithms/matd3.py)
UPDATE_LABELS = (
    "critic_target",
    "critic_loss",
    "pevfa_target",
    "pevfa_loss",
    "value_loss",
    "critic_backward",
    "critic_optim",
    "encoder_forward",
    "actor_loss",
    "vfm_loss",
    "vmm_loss",
    "actor_backward",
    "actor_optim",
    "target_update",
)
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


def matmul_peak(size: int, reps: int, precision: str = "fp32") -> dict:
    """Best matrix-product rate of `precision` (fp32: float32, bf16: bfloat16 tensors), GFLOP/s: on one CPU
    thread, or on the GPU with --device cuda (float32 with TF32 off, set in `main`). Timed in wall-clock and,
    on the CPU, in CPU time of the thread (`best_gflops_cpu`, the denominator of the updates' CPU-time rates: on a
    loaded machine the wall-clock peak is lower by the time spent waiting for a core); on the GPU the CPU-time
    figure is the wall-clock one."""
    dtype = PEAK_DTYPES[precision]
    a, b = (torch.randn(size, size, device=DEVICE, dtype=dtype) for _ in range(2))
    a @ b
    sync()
    walls, cpus = [], []
    for _ in range(reps):
        clock = Clock()
        a @ b
        sync()
        wall, cpu = clock.read()
        walls.append(wall)
        cpus.append(cpu if DEVICE.type == "cpu" else wall)
    flops = 2 * size**3
    return {
        "precision": precision,
        "dtype": str(dtype),
        "size": size,
        "reps": reps,
        "best_gflops": flops / min(walls) / 1e9,
        "median_gflops": flops / statistics.median(walls) / 1e9,
        "best_gflops_cpu": flops / min(cpus) / 1e9,
        "load": load(),
    }


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
    return {
        "steps": steps,
        "seconds": wall,
        "cpu_seconds": cpu,
        "sps": steps / wall,
        "sps_cpu": steps / cpu,
        "load": load(),
    }


# ---------------------------------------------------------------------------------------------- 2. rollouts


def config(task: str, algo: str, overrides: list[str] = (), **top):
    return build_config(None, list(overrides), algo=algo, env={"task": task}, progress=False, **top)


def rollout_steps_per_s(
    task: str, workers: int, seconds: float, episode_steps: int | None, run_dir: Path
) -> tuple[dict, ReplayBuffer]:
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
    return {
        "workers": workers,
        "backend": backend,
        "slots": trainer.n_slots,
        "generations": gens,
        "steps": steps,
        "seconds": wall,
        "sps": steps / wall,
        "load": load(),
    }, trainer.buffer


# ---------------------------------------------------------------------------------------------- 3. updates


def label(algo: str, precision: str) -> str:
    """The key of an (algo, precision) pair in the results: "matd3/fp32", "race/bf16", ..."""
    return f"{algo}/{precision}"


def pairs(precisions: list[str]) -> list[tuple[str, str]]:
    """Every (algo, precision) pair, by algo then precision: the rows of the report and the timing order."""
    return [(algo, prec) for algo in ALGOS for prec in precisions]


def build_learner(task: str, algo: str, precision: str):
    cfg = config(task, algo, [f"precision={precision}"])
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
    out = ReplayBuffer(
        buffer.capacity, *buffer.shapes["obs"], buffer.shapes["state"][0], buffer.shapes["action"][0], device=DEVICE
    )
    out.load_state_dict(buffer.state_dict())
    return out


def flops_per_update(learner, buffer: ReplayBuffer, population, batch_size: int) -> int:
    """Forward + backward FLOPs of the matrix products of one update, averaged over a policy-delay cycle (the discrete
    learners update every part at every update: a cycle of one)."""
    n = learner.lcfg.policy_delay if hasattr(learner, "lcfg") else 1
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
        out.update(
            {f"{k} (gpu)": getattr(events[k], "device_time_total", 0.0) / n / 1e3 for k in UPDATE_LABELS if k in events}
        )
    return out


def update_steps_per_s(
    task: str, buffer: ReplayBuffer, precisions: list[str], seconds: float, block: int, profile_n: int
) -> dict:
    """Updates of every (algo, precision) learner, blocks of `block` updates of each in turn, in mirrored order
    (A B C D, D C B A, ...), for about `seconds` in all. Keyed by `label(algo, precision)`."""
    learners = {label(*key): (key, *build_learner(task, *key)) for key in pairs(precisions)}
    buffer = on_device(buffer)
    flops, times = {}, {lab: {"wall": [], "cpu": [], "gpu": []} for lab in learners}
    for lab, (_, cfg, learner, pop) in learners.items():
        for _ in range(2 * cfg.learner.policy_delay):  # warm-up
            learner.update(buffer.sample(cfg.learner.batch_size), pop)
        flops[lab] = flops_per_update(learner, buffer, pop, cfg.learner.batch_size)
    order = list(learners)
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or time.perf_counter() - start < seconds:
        for lab in order if rounds % 2 == 0 else order[::-1]:
            _, cfg, learner, pop = learners[lab]
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
            times[lab]["wall"].append(wall / block)
            times[lab]["cpu"].append(cpu / block)
            if DEVICE.type == "cuda":
                times[lab]["gpu"].append(start_ev.elapsed_time(end_ev) / 1e3 / block)
        rounds += 1
    out = {}
    for lab, ((algo, prec), cfg, learner, pop) in learners.items():
        wall, cpu, gpu = (statistics.median(times[lab][k]) if times[lab][k] else None for k in ("wall", "cpu", "gpu"))
        out[lab] = {
            "algo": algo,
            "precision": prec,
            "resolved_precision": learner.precision,
            "batch_size": cfg.learner.batch_size,
            "updates": block * rounds,
            "blocks": rounds,
            "ms_per_update": wall * 1e3,
            "cpu_ms_per_update": cpu * 1e3,
            "ups": 1 / wall,
            "ups_cpu": 1 / cpu,
            "flops_per_update": flops[lab],
            "gflops": flops[lab] / wall / 1e9,
            "gflops_cpu": flops[lab] / cpu / 1e9,
            "device": str(DEVICE),
            "gpu_ms_per_update": None if gpu is None else gpu * 1e3,
            "profile_ms": profile_update(learner, buffer, pop, cfg.learner.batch_size, profile_n) if profile_n else {},
            "load": load(),
        }
    return out


def add_peak_shares(upd: dict, peaks: dict[str, dict]) -> None:
    """Each update's FLOP rate as a share of every peak, each clock over the same clock's peak: `{p}_peak_share`
    (wall GFLOP/s over the wall-clock peak) and `{p}_peak_share_cpu` (CPU time over the CPU-time peak)."""
    for u in upd.values():
        for p, peak in peaks.items():
            u[f"{p}_peak_share"] = u["gflops"] / peak["best_gflops"]
            u[f"{p}_peak_share_cpu"] = u["gflops_cpu"] / peak["best_gflops_cpu"]


def td3_reference_flops(batch_size: int = 256, obs: int = 17, act: int = 6, hidden: int = 256) -> int:
    """FLOPs of one update of a standard TD3 (HalfCheetah-v5 sizes, 256x256 actor and twin critics, policy delay 2),
    averaged over the delay cycle. Counted on a forward/backward of such networks, not a trainer."""

    def mlp(i, o):
        return nn.Sequential(
            nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, o)
        )

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


def end_to_end(task: str, algo: str, precision: str, timed_steps: int, episode_steps: int, run_dir: Path) -> dict:
    """`Trainer.train()` at one update per env step; timed from the start of the first generation that learns to
    the end of the last generation's logging (the evaluations and checkpoints are outside the window)."""
    probe = config(task, algo)
    # learning starts with the generation after the one that fills a batch (RACE: after one full generation)
    start_steps = max(probe.learner.batch_size, slots_of(probe) * episode_steps) + 1
    overrides = [
        f"env.max_episode_steps={episode_steps}",
        f"learner.start_steps={start_steps}",
        f"device={DEVICE}",
        f"precision={precision}",
        "checkpoint_minutes=0",
    ]  # no wall-clock checkpoint inside the timed window either
    if E2E_WORKERS > 1:
        overrides += ["rollout.backend=process", f"rollout.workers={E2E_WORKERS}"]
    cfg = config(task, algo, overrides, total_steps=start_steps + timed_steps, eval_interval=10**12, eval_episodes=1)
    timers = Timers()
    gens: list[dict] = []  # per generation: clocks, env steps and updates at its start and end, timer snapshots
    play, log = Trainer.play_generation, Trainer.log_generation

    def play_marked(self):
        gens.append(
            {
                "t": time.perf_counter(),
                "c": time.thread_time(),
                "env_steps": self.progress.env_steps,
                "updates": self.progress.updates,
                "timers": timers.snapshot(),
            }
        )
        return play(self)

    def log_marked(self, *args, **kwargs):
        out = log(self, *args, **kwargs)
        gens[-1].update(
            t_end=time.perf_counter(),
            c_end=time.thread_time(),
            env_steps_end=self.progress.env_steps,
            updates_end=self.progress.updates,
            timers_end=timers.snapshot(),
        )
        return out

    trainer = Trainer(cfg, run_dir)
    env_cls = type(trainer.eval_envs[0])
    wraps = [
        (Trainer, "play_generation", "play"),
        (trainer.family, "store", "store"),
        (Trainer, "learn", "learn"),
        (Trainer, "evolve_population", "evolve"),
        (Trainer, "log_generation", "log"),
        (rollout.SlotActor, "forward", "acting"),
        (env_cls, "step", "env_step"),
        (env_cls, "reset", "env_reset"),
        (ReplayBuffer, "add", "buffer_add"),
        (ReplayBuffer, "sample", "buffer_sample"),
        (trainer.learner, "update", "update"),
    ]
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
    return {
        "algo": algo,
        "precision": precision,
        "resolved_precision": trainer.cfg.precision,
        "episode_steps": episode_steps,
        "start_steps": cfg.learner.start_steps,
        "generations": len(gens) - first,
        "steps": g1["env_steps_end"] - g0["env_steps"],
        "updates": g1["updates_end"] - g0["updates"],
        "seconds": g1["t_end"] - g0["t"],
        "cpu_seconds": g1["c_end"] - g0["c"],
        "timers": Timers.between(g0["timers"], g1["timers_end"]),
        "load": load(),
    }


def pool_runs(runs: list[dict]) -> dict:
    """Sum of several end-to-end runs of one algorithm."""
    out = {k: runs[0][k] for k in ("algo", "precision", "resolved_precision", "episode_steps", "start_steps")}
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
    return {
        "isolated_s": iso_wall,
        "isolated_cpu_s": iso_cpu,
        "in_run_env_update_s": in_run,
        "overhead_pct": 100 * (e["seconds"] - iso_wall) / iso_wall,
        "overhead_cpu_pct": 100 * (e["cpu_seconds"] - iso_cpu) / iso_cpu,
        "overhead_in_run_pct": 100 * (e["seconds"] - in_run) / in_run,
        "e2e_update_ms": 1e3 * t["wall"].get("update", 0.0) / max(e["updates"], 1),
        "e2e_env_ms": 1e3 * t["wall"].get("env_step", 0.0) / max(e["steps"], 1),
    }


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


def goals(t: dict, precisions: list[str]) -> list[dict]:
    """The goals per precision; the peak share of a learner against the peak of its own precision."""
    e, u = t["e2e"], t["update"]
    out = []
    for p in precisions:
        race, matd3 = label("race", p), label("matd3", p)
        ratio = e[race]["sps_cpu"] / e[matd3]["sps_cpu"]
        flop_ratio = u[matd3]["flops_per_update"] / u[race]["flops_per_update"]
        out.append(
            {
                "goal": f"{p}: RACE end-to-end steps/s >= {GOAL_RATIO}x MATD3's (CPU time)",
                "precision": p,
                "value": round(ratio, 3),
                "wall_value": round(e[race]["sps"] / e[matd3]["sps"], 3),
                "met": ratio >= GOAL_RATIO,
                "flop_ratio": round(flop_ratio, 3),
                "why": (
                    f"MATD3/RACE FLOPs per update = {flop_ratio:.3f}: at equal FLOP rates the update ratio is "
                    "that, and env + acting (a smaller share per step for RACE) move the end-to-end ratio "
                    "only slightly above it"
                ),
            }
        )
    for algo, p in pairs(precisions):
        x = u[label(algo, p)]
        out.append(
            {
                "goal": f"{algo} {p}: update FLOP rate >= {GOAL_PEAK_SHARE:.0%} of the {p} peak (CPU time)",
                "precision": p,
                "value": round(x[f"{p}_peak_share_cpu"], 3),
                "wall_value": round(x[f"{p}_peak_share"], 3),
                "met": x[f"{p}_peak_share_cpu"] >= GOAL_PEAK_SHARE,
            }
        )
    for algo, p in pairs(precisions):
        x = e[label(algo, p)]
        out.append(
            {
                "goal": f"{algo} {p}: loop overhead <= {GOAL_OVERHEAD:.0f}% over env + update in isolation (CPU time)",
                "precision": p,
                "value": round(x["overhead_cpu_pct"], 1),
                "wall_value": round(x["overhead_pct"], 1),
                "met": x["overhead_cpu_pct"] <= GOAL_OVERHEAD,
            }
        )
    return out


def speedups(t: dict, precisions: list[str]) -> dict:
    """bf16 over fp32 per algo (> 1: bf16 is faster): update (time per update) and end to end (env steps/s)."""
    if not {"fp32", "bf16"} <= set(precisions):
        return {}
    u, e = t["update"], t["e2e"]
    out = {}
    for algo in ALGOS:
        a, b = label(algo, "fp32"), label(algo, "bf16")
        out[algo] = {
            "update_cpu": u[a]["cpu_ms_per_update"] / u[b]["cpu_ms_per_update"],
            "update_wall": u[a]["ms_per_update"] / u[b]["ms_per_update"],
            "e2e_cpu": e[b]["sps_cpu"] / e[a]["sps_cpu"],
            "e2e_wall": e[b]["sps"] / e[a]["sps"],
        }
    return out


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    peaks = {p: res["peak"][p]["best_gflops_cpu"] for p in PEAK_DTYPES}  # CPU time (on a GPU: wall)
    names = {p: str(PEAK_DTYPES[p]).removeprefix("torch.") for p in PEAK_DTYPES}
    m, st = res["machine"], res["settings"]
    precisions = res["precisions"]
    keys = pairs(precisions)
    wk = st["workers"]
    where = f"on the GPU ({m['gpu']})" if m["gpu"] else "on one thread"
    p0 = res["peak"]["fp32"]
    lines = [
        "# Throughput benchmark",
        "",
        "Generated by `benchmarks/throughput.py`; do not edit by hand.",
        "",
        (
            f"Command: `{res['command']}` ({res['benchmark_seconds']:.0f} s). Machine: {m['cpu']}, {m['cores']} cores"
            + (f", GPU {m['gpu']}" if m["gpu"] else "")
            + f", torch {m['torch']}, 1 PyTorch thread, learners on "
            f"{m['device']}. 1-minute load average during the run: {m['load_min']}-{m['load_max']}: "
            "other processes shared the machine, so wall-clock figures include waiting for a core; CPU-time "
            "figures (main thread) are the steadier ones and the goals are judged on them."
        ),
        "",
        (
            f"Precisions measured: {', '.join(f'`precision={p}`' for p in precisions)}, passed explicitly to every "
            f"learner and trainer (`precision=auto` would pick {m['auto_precision']} here). bf16: the forward passes "
            "under bfloat16 autocast, float32 weights and optimiser (see `racemarl/precision.py`)."
        ),
        "",
        (
            f"Peaks: {p0['size']}x{p0['size']} matrix products {where}"
            + (" (float32 with TF32 off)" if m["gpu"] else "")
            + f", best of {p0['reps']} products, measured "
            f"{len(p0['samples'])} times over the run (before the first task and after each), the best of those: "
            + "; ".join(
                f"{names[p]} **{peaks[p]:.1f} GFLOP/s**"
                + ("" if m["gpu"] else f" in CPU time, {res['peak'][p]['best_gflops']:.1f} wall-clock")
                + " (the measurements gave "
                + ", ".join(f"{x['best_gflops_cpu']:.0f}" for x in res["peak"][p]["samples"])
                + ")"
                for p in PEAK_DTYPES
            )
            + "."
        ),
        "",
        "## Steps per second",
        "",
        f"| task | env alone | rollout, 1 worker | rollout, {wk} workers |",
        "|---|---|---|---|",
    ]
    for task, t in res["tasks"].items():
        r1, rn = t["rollout"][0], t["rollout"][-1]
        lines.append(
            f"| {task} | {t['env']['sps']:.0f} ({t['env']['sps_cpu']:.0f}) | {r1['sps']:.0f} | {rn['sps']:.0f} |"
        )
    lines += [
        "",
        "| task | algo | precision | updates/s | end-to-end env steps/s | RACE / MATD3 end-to-end |",
        "|---|---|---|---|---|---|",
    ]
    for task, t in res["tasks"].items():
        u, e = t["update"], t["e2e"]
        for algo, p in keys:
            x, y = u[label(algo, p)], e[label(algo, p)]
            m0 = e[label("matd3", p)]
            ratio = f"{y['sps'] / m0['sps']:.2f} ({y['sps_cpu'] / m0['sps_cpu']:.2f})" if algo == "race" else "-"
            lines.append(
                f"| {task} | {algo} | {p} | {x['ups']:.1f} ({x['ups_cpu']:.1f}) | "
                f"{y['sps']:.1f} ({y['sps_cpu']:.1f}) | {ratio} |"
            )
    ep = st["rollout_episode_steps"]
    order = ", ".join(f"{a} {p}" for a, p in keys + keys[::-1])
    lines += [
        "",
        (
            "Wall-clock figures, CPU-time figures in brackets. Rollouts: `algo=ea` generations "
            f"(5 teams, one episode each of at most {ep} steps, no learning, transitions stored; the {wk}-worker "
            "figure uses `rollout.backend=process`). Updates: the blocks of all the task's learners interleaved in "
            "mirrored order, medians. "
            f"End-to-end: `Trainer.train()` with `env.max_episode_steps={st['e2e_episode_steps']}` (a RACE generation "
            f"is then {6 * st['e2e_episode_steps']} updates, not 6000), one update per env step, "
            + (
                f"{res['settings']['e2e_workers']} rollout worker processes"
                if res["settings"]["e2e_workers"] > 1
                else "default inline rollouts"
            )
            + f"; two runs per (algo, precision) in the order {order}, each timed from its first "
            "generation that learns to its last generation's logging (evaluation and checkpoints are outside)."
        ),
        "",
        "## Learner updates (batch 256)",
        "",
        (
            "| task | algo | precision | ms/update (wall) | ms/update (CPU) | GFLOP/update | GFLOP/s | "
            "share of fp32 peak | share of bf16 peak |" + (" GPU ms/update |" if m["gpu"] else "")
        ),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if m["gpu"] else ""),
    ]
    for task, t in res["tasks"].items():
        for algo, p in keys:
            u = t["update"][label(algo, p)]
            lines.append(
                f"| {task} | {algo} | {p} | {u['ms_per_update']:.1f} | {u['cpu_ms_per_update']:.1f} | "
                f"{u['flops_per_update'] / 1e9:.3f} | {u['gflops']:.1f} ({u['gflops_cpu']:.1f}) | "
                f"{u['fp32_peak_share']:.0%} ({u['fp32_peak_share_cpu']:.0%}) | "
                f"{u['bf16_peak_share']:.0%} ({u['bf16_peak_share_cpu']:.0%}) |"
                + (f" {_f(u['gpu_ms_per_update'])} |" if m["gpu"] else "")
            )
    lines.append("")
    lines.append(
        "Wall-clock figures, CPU-time figures in brackets; a peak share is the update's GFLOP/s over the "
        "peak's GFLOP/s in the same clock (wall over wall, CPU time over CPU time; the peaks in the header). "
        "FLOPs count every matrix product, whatever its dtype (under bf16 the value networks' last layers "
        "and the MI scores stay float32)."
    )
    for task, t in res["tasks"].items():
        for algo, sp in t["bf16_speedup"].items():
            lines += [
                "",
                (
                    f"{task} {algo}: bf16 / fp32 speed-up {sp['update_cpu']:.2f}x per update and "
                    f"{sp['e2e_cpu']:.2f}x end to end (CPU time; wall {sp['update_wall']:.2f}x and "
                    f"{sp['e2e_wall']:.2f}x)."
                ),
            ]
    ref = res["td3_reference"]
    text = (
        f"Reference (issue #5): a well-known single-file PyTorch TD3 runs about {ref['sps']:.0f} env steps/s with "
        f"learning on single-agent HalfCheetah-v5 (batch 256, 256x256 networks) on this machine. Its update is "
        f"{ref['flops_per_update'] / 1e9:.3f} GFLOP (same counter, policy delay 2), so at that speed its matrix "
        f"products run at about {ref['gflops_at_reference_sps']:.1f} GFLOP/s "
        f"({ref['gflops_at_reference_sps'] / peaks['fp32']:.0%} of this run's fp32 peak in CPU time)."
    )
    for task, t in res["tasks"].items():
        for p in precisions:
            e, u = t["e2e"][label("matd3", p)], t["update"][label("matd3", p)]
            f = u["flops_per_update"]
            text += (
                f" MATD3 {p} on {task}: {e['sps']:.1f} env steps/s end to end with {f / 1e9:.2f} GFLOP per "
                f"update ({f / ref['flops_per_update']:.1f}x TD3's), i.e. {e['sps'] * f / 1e9:.1f} GFLOP/s end "
                "to end."
            )
    lines += ["", text, "", "## End-to-end breakdown (wall seconds per 1000 env steps)", ""]
    labs = [label(*k) for k in keys]
    for task, t in res["tasks"].items():
        e = t["e2e"]
        per_k = {lab: 1000 / e[lab]["steps"] for lab in labs}
        lines += [
            f"### {task}",
            "",
            "| activity | " + " | ".join(f"{a} {p}" for a, p in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]

        def row(name: str, cells, lines: list[str] = lines) -> None:
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

        names = list(dict.fromkeys(k for lab in labs for k in e[lab]["breakdown"]))  # sections of any learner
        for k in names:
            row(
                k,
                [
                    _f(None if e[lab]["breakdown"].get(k) is None else e[lab]["breakdown"][k] * per_k[lab])
                    for lab in labs
                ],
            )
        for name, key in (
            ("**total (window)**", "seconds"),
            ("env + update measured in isolation", "isolated_s"),
            ("env + update measured in this run", "in_run_env_update_s"),
        ):
            row(name, [f"{e[lab][key] * per_k[lab]:.2f}" for lab in labs])
        row(
            "update ms in this run / in isolation",
            [f"{e[lab]['e2e_update_ms']:.1f} / {t['update'][lab]['ms_per_update']:.1f}" for lab in labs],
        )
        for name, key in (
            ("loop overhead vs isolation, CPU time", "overhead_cpu_pct"),
            ("loop overhead vs isolation, wall", "overhead_pct"),
            ("loop overhead vs this run's env + update, wall", "overhead_in_run_pct"),
        ):
            row(f"**{name}**", [f"{e[lab][key]:.1f}%" for lab in labs])
        lines.append("")
    lines += [
        (
            "Update rows split the update time measured in the run by the shares of the `record_function` sections "
            "in a torch.profiler run of the same learner (backward passes are per optimiser step, not per loss: the "
            "critic step backpropagates critic + PeVFA + value losses at once, the actor step actor + VFM + VMM). "
            "Loop overhead = window - (env steps / env-alone steps/s + updates x isolated time per update), over "
            "the latter; acting and rollout bookkeeping count as overhead."
        ),
        "",
        "## Goals",
        "",
        "| task | goal | value (CPU time) | value (wall) | met |",
        "|---|---|---|---|---|",
    ]
    for task, t in res["tasks"].items():
        for g in t["goals"]:
            lines.append(f"| {task} | {g['goal']} | {g['value']} | {g['wall_value']} | {'yes' if g['met'] else 'no'} |")
    for task, t in res["tasks"].items():
        for g in t["goals"]:
            if "why" in g:
                lines += [
                    "",
                    (
                        f"{task}, {g['precision']}: RACE / MATD3 end to end {g['value']} (CPU) / "
                        f"{g['wall_value']} (wall); {g['why']}."
                    ),
                ]
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def notes(res: dict) -> list[str]:
    out = []
    for task, t in res["tasks"].items():
        for algo, p in pairs(res["precisions"]):
            prof = t["update"][label(algo, p)]["profile_ms"]
            if prof:
                total = sum(prof.values())
                top = sorted(prof.items(), key=lambda kv: -kv[1])[:4]
                out.append(
                    f"{task} {algo} {p}: largest update sections (profile shares) "
                    + ", ".join(f"{k} {v / total:.0%}" for k, v in top)
                    + "."
                )
        r1, rn = t["rollout"][0], t["rollout"][-1]
        out.append(
            f"{task}: {rn['workers']} rollout worker processes give {rn['sps'] / r1['sps']:.2f}x the rollout "
            f"steps/s of one inline worker (this machine has {os.cpu_count()} cores, shared)."
        )
    return out


def parse_precisions(text: str) -> list[str]:
    out = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in out if x not in PRECISIONS]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)} "
            f"(explicit values, not auto), not {text!r}"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument(
        "--precisions",
        type=parse_precisions,
        default=list(PRECISIONS),
        help="learner precisions measured in sections 3 and 4, comma-separated (default fp32,bf16)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: short durations and episodes")
    ap.add_argument("--env-seconds", type=float, default=3.0)
    ap.add_argument("--rollout-seconds", type=float, default=4.0, help="per worker count (at least one generation)")
    ap.add_argument("--workers", type=int, default=2, help="rollout worker processes of the second rollout measurement")
    ap.add_argument(
        "--update-seconds",
        type=float,
        default=16.0,
        help="per precision: the timed blocks of all learners take this x the number of precisions",
    )
    ap.add_argument(
        "--profile-updates", type=int, default=8, help="updates profiled for the per-section split (0: none)"
    )
    ap.add_argument(
        "--e2e-steps", type=int, default=600, help="env steps timed per end-to-end run (2 runs per (algo, precision))"
    )
    ap.add_argument("--e2e-episode-steps", type=int, default=100)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument(
        "--device", default="cpu", help="where the learners and the buffer live: cpu (default), cuda, cuda:N"
    )
    ap.add_argument(
        "--e2e-workers",
        type=int,
        default=0,
        help="rollout worker processes of the end-to-end runs (0 = inline, in the driver)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/throughput.json, "
        "throughput-quick.json with --quick); the .md goes next to it",
    )
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
    precisions, keys = args.precisions, pairs(args.precisions)
    default_name = "throughput" + ("-gpu" if DEVICE.type == "cuda" else "") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"{default_name}.json"
    setup_torch()
    started = time.perf_counter()
    loads = [load()]
    argv_used = argv if argv is not None else sys.argv[1:]
    res: dict = {
        "command": " ".join(["python benchmarks/throughput.py", *argv_used]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "precisions": precisions,
        "tasks": {},
    }
    res["settings"]["rollout_episode_steps"] = rollout_episode_steps or 1000
    peak_reps = 3 if args.quick else 8

    def measure_peaks() -> dict[str, dict]:
        say(f"peaks: {args.peak_size}x{args.peak_size} float32 and bfloat16 matmul")
        return {p: matmul_peak(args.peak_size, peak_reps, p) for p in PEAK_DTYPES}

    peaks = [measure_peaks()]
    ref_flops = td3_reference_flops()
    res["td3_reference"] = {
        "sps": TD3_REFERENCE_SPS,
        "flops_per_update": ref_flops,
        "gflops_at_reference_sps": ref_flops * TD3_REFERENCE_SPS / 1e9,
    }
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for ti, task in enumerate(args.tasks.split(",")):
            t: dict = {}
            say(f"[{task}] env alone")
            t["env"] = env_steps_per_s(task, args.env_seconds)
            t["rollout"], buffer = [], None
            for w in (1, args.workers):
                say(f"[{task}] rollouts, {w} worker(s)")
                r, buf = rollout_steps_per_s(
                    task, w, args.rollout_seconds, rollout_episode_steps, Path(tmp) / f"roll{ti}_{w}"
                )
                t["rollout"].append(r)
                buffer = buffer or buf  # the inline run's transitions feed the update benchmark
            say(f"[{task}] updates: " + ", ".join(label(*k) for k in keys))
            t["update"] = update_steps_per_s(
                task, buffer, precisions, args.update_seconds * len(precisions), 5, args.profile_updates
            )
            del buffer, buf
            runs: dict[str, list] = {label(*k): [] for k in keys}
            order = keys + keys[::-1]  # mirrored: every pair's two runs straddle the same stretch of the run
            for i, (algo, p) in enumerate(order):
                say(f"[{task}] {algo} {p} end to end ({i + 1}/{len(order)})")
                runs[label(algo, p)].append(
                    end_to_end(
                        task, algo, p, args.e2e_steps, args.e2e_episode_steps, Path(tmp) / f"e2e{ti}_{i}_{algo}_{p}"
                    )
                )
            t["e2e"] = {}
            for lab, lab_runs in runs.items():
                e = pool_runs(lab_runs)
                e.update(overheads(e, t["env"], t["update"][lab]))
                e["breakdown"] = breakdown(e, t["update"][lab])
                t["e2e"][lab] = e
            res["tasks"][task] = t
            loads.append(load())
            peaks.append(measure_peaks())  # the peaks again: the load of the machine varies
    # the machine's peaks: the best of the measurements spread over the run
    res["peak"] = {}
    for p in PEAK_DTYPES:
        samples = [x[p] for x in peaks]
        res["peak"][p] = {
            **max(samples, key=lambda x: x["best_gflops"]),
            "samples": samples,
            "best_gflops_cpu": max(x["best_gflops_cpu"] for x in samples),
        }
    for t in res["tasks"].values():
        add_peak_shares(t["update"], res["peak"])
        t["goals"] = goals(t, precisions)
        t["bf16_speedup"] = speedups(t, precisions)
    res["machine"] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(DEVICE),
        "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        "auto_precision": resolve_precision("auto", DEVICE),
        "python": platform.python_version(),
        "load_min": min(loads),
        "load_max": max(loads),
    }
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
