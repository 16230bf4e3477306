"""Will a run fit in memory? An estimate made before any work, from the config and the task's sizes.

`estimate(cfg, spec)` adds up the large allocations of a run: the population of heads (and of encoders when each
team has its own), the copies the evolution and the rollouts make of it, the replay buffer (transitions on
continuous tasks, whole episodes on discrete ones), one generation of played episodes before they are stored,
the environments (one per slot of a generation and per evaluation episode) and a learner batch with its
activations. It is a lower bound: the networks, the simulators' own state and Python come on top. `check` refuses a
run whose estimate exceeds the memory available to this process (MemAvailable, or a cgroup limit when lower),
and, for what lives on a GPU, the device's free memory. RACEMARL_SKIP_MEMORY_CHECK=1 turns the check off.
"""

from __future__ import annotations

import os
from pathlib import Path

F32 = 4
ENV_BYTES = 256 * 1024  # the least one environment instance takes (Python objects, arrays); simulators take more
SAFETY = 0.9  # leave a tenth of the available memory to everything else on the machine


class MemoryEstimateError(ValueError):
    """The run cannot fit in memory (one line: what it needs, what is available, what to lower)."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def estimate(cfg, spec) -> dict[str, int]:
    """Bytes of the run's large allocations by part, as {(part, the config keys that set it): bytes}."""
    n, max_obs, max_act = spec.n_agents, max(spec.obs_dims), max(spec.act_dims)
    joint_act, state = sum(spec.act_dims), spec.state_dim
    pop = cfg.race.pop_size if cfg.uses_population else 0
    slots = int(cfg.uses_marl) + pop * cfg.race.episodes_per_team
    limit = spec.episode_limit
    parts: dict[str, int] = {}
    if spec.discrete:
        d = cfg.discrete
        embed = d.rnn_hidden
        per_step = n * (max_obs + max_act + 2) + state + 2  # obs, avail, action, mask per agent; state, reward, flags
        parts["replay buffer (discrete.buffer_episodes)"] = d.buffer_episodes * (limit + 1) * per_step * F32
        parts["learner batch (discrete.batch_episodes)"] = (
            d.batch_episodes
            * (limit + 1)
            * (per_step + 4 * n * (d.rnn_hidden + max(d.critic_hidden, default=0) + max_act))
            * F32
        )
    else:
        lc = cfg.learner
        embed = cfg.net.embed_dim
        row = 2 * n * max_obs + 2 * state + joint_act + 2
        parts["replay buffer (learner.buffer_size)"] = min(lc.buffer_size, max(cfg.total_steps, 1)) * row * F32
        hidden = cfg.net.encoder_hidden + cfg.net.embed_dim + sum(cfg.net.critic_hidden)
        parts["learner batch (learner.batch_size)"] = lc.batch_size * (row + 6 * n * hidden) * F32
    if pop:
        heads = n * max_act * (embed + 1) * F32
        # the population, its next generation and the per-slot team copies sent to the rollouts
        parts["population (race.pop_size, race.episodes_per_team)"] = pop * heads * (2 + cfg.race.episodes_per_team)
        if cfg.team_encoders:
            enc = n * (max_obs * cfg.net.encoder_hidden + cfg.net.encoder_hidden * embed + 2 * embed) * F32
            parts["population encoders (race.pop_size)"] = pop * enc * 3
    step_bytes = (2 * n * max_obs + 2 * state + joint_act + 4) * F32
    parts["one generation's episodes (race.pop_size, env.max_episode_steps)"] = slots * limit * step_bytes
    parts["environments (race.pop_size, eval_episodes)"] = (slots + cfg.eval_episodes) * ENV_BYTES
    return parts


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, or the cgroup's limit minus its use when that is lower."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return avail


def _device_free(device) -> int | None:
    if getattr(device, "type", "cpu") != "cuda":
        return None
    try:
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    except Exception:  # noqa: BLE001 - no reading: no check
        return None


def check(cfg, spec, device=None, available: int | None = None) -> dict[str, int]:
    """Raise MemoryEstimateError when the run's estimate does not fit; return the estimate."""
    parts = estimate(cfg, spec)
    if os.environ.get("RACEMARL_SKIP_MEMORY_CHECK") == "1":
        return parts
    total = sum(parts.values())
    avail = available_bytes() if available is None else available
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
    detail = ", ".join(f"{name} {_gb(b)}" for name, b in largest)
    if avail is not None and total > SAFETY * avail:
        raise MemoryEstimateError(
            f"this run needs at least {_gb(total)} of memory ({detail}); {_gb(avail)} are available. Lower the "
            f"settings named there (RACEMARL_SKIP_MEMORY_CHECK=1 skips this check)"
        )
    free = _device_free(device)
    on_device = sum(b for name, b in parts.items() if name.startswith(("replay buffer", "learner batch")))
    if free is not None and on_device > SAFETY * free:
        raise MemoryEstimateError(
            f"this run's replay buffer and batches need at least {_gb(on_device)} on {device}; {_gb(free)} are free "
            "there. Lower learner.buffer_size / discrete.buffer_episodes or the batch size, or use --device cpu"
        )
    return parts
