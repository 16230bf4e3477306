"""Evolution of the population's linear team heads: selection, crossover, mutation, MARL injection.

A population is a tensor `[P, N, A, d+1]` (team, agent, head row, weights + bias) with a row mask
`[N, A]` marking real action dimensions. All functions maximise fitness. Only heads evolve; the
shared encoders are never touched here.

Agent-level operators (RACE, `operators="agent"`), following the poster's definitions:
- crossover(W_a, W_b): draw an agent subset d; child 1 = W_a with the heads of agents in d taken
  whole from W_b, child 2 = W_b with those heads taken from W_a.
- mutation(W): for each agent independently (probability `mutation_prob`) perturb that agent's head.
Row-level operators (ERL-style ablation, `operators="row"`): the team is one genome of head rows;
crossover takes every row from either parent, mutation perturbs weights anywhere in the team.

One generation: the top `elite_fraction` teams are kept unchanged; every other slot receives a
child of two tournament-selected parents, then mutation. The MARL team is then copied into the slot
whose team had the worst fitness among the non-elites.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from racemarl.config import RaceConfig

WEIGHT_CLIP = 1e6


@dataclass
class GenerationReport:
    elites: list[int]
    parents: list[tuple[int, int]]  # per child slot, in `children` order
    children: list[int]
    sources: np.ndarray  # [P, N]: the old team each new team's agent i descends from
    injected_slot: int | None = None


def n_elites(pop_size: int, elite_fraction: float) -> int:
    return int(elite_fraction * pop_size)


def tournament(fitness: np.ndarray, size: int, rng: np.random.Generator) -> int:
    """Index of the fittest of `size` teams drawn uniformly (with replacement)."""
    contenders = rng.integers(0, len(fitness), size=size)
    return int(contenders[np.argmax(fitness[contenders])])


Children = tuple[torch.Tensor, torch.Tensor, np.ndarray]


def agent_crossover(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator) -> Children:
    """Exchange whole agent heads between teams a, b `[N, A, d+1]`; each agent swaps with prob 1/2.

    Returns the two children and, per agent, whether child 1 took that agent from b.
    """
    swap = rng.random(a.shape[0]) < 0.5
    mask = torch.from_numpy(swap)[:, None, None]
    return torch.where(mask, b, a), torch.where(mask, a, b), swap


def row_crossover(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator) -> Children:
    """ERL-style: every head row (of any agent) comes from either parent. An agent's own parameters
    beyond the head (unshared encoders) follow its first row."""
    swap = rng.random(a.shape[:2]) < 0.5
    mask = torch.from_numpy(swap)[:, :, None]
    return torch.where(mask, b, a), torch.where(mask, a, b), swap[:, 0]


def perturb(w: torch.Tensor, positions: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator) -> None:
    """Mutate `w[positions]` in place with one draw of the kind of mutation (normal, super, reset)."""
    vals = w[positions]
    noise = torch.from_numpy(rng.standard_normal(vals.shape).astype(np.float32))
    u = rng.random()
    if u < cfg.super_mutation_prob:
        vals = vals + noise * cfg.super_mutation_strength * vals.abs()
    elif u < cfg.super_mutation_prob + cfg.reset_prob:
        vals = noise
    else:
        vals = vals + noise * cfg.mutation_strength * vals.abs()
    w[positions] = vals.clamp(-WEIGHT_CLIP, WEIGHT_CLIP)


def n_mutated(n_cols: int, frac: float) -> int:
    """Weights perturbed per row: `frac` of them, at least one (the official code could pick none)."""
    return max(1, round(frac * n_cols))


def mutate_agent_head(head: torch.Tensor, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator) -> None:
    """Agent-level mutation of one head `[A, d+1]` in place: in every real row, perturb a fraction of weights."""
    n_cols = head.shape[1] if cfg.mutate_bias else head.shape[1] - 1
    k = n_mutated(n_cols, cfg.mutation_frac)
    for r in torch.nonzero(row_mask).flatten().tolist():
        cols = torch.from_numpy(rng.choice(n_cols, size=k, replace=False))
        row = head[r]
        perturb(row, cols, cfg, rng)


def mutate_team_rows(team: torch.Tensor, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator) -> None:
    """Row-level (ERL-style) mutation of a team `[N, A, d+1]`: a fraction of all its real weights."""
    n_cols = team.shape[-1] if cfg.mutate_bias else team.shape[-1] - 1
    real = torch.nonzero(row_mask)  # [R, 2]
    flat = team[real[:, 0], real[:, 1], :n_cols].reshape(-1)
    pos = torch.from_numpy(rng.choice(flat.numel(), size=n_mutated(flat.numel(), cfg.mutation_frac), replace=False))
    perturb(flat, pos, cfg, rng)
    team[real[:, 0], real[:, 1], :n_cols] = flat.view(len(real), n_cols)


def evolve(heads: torch.Tensor, fitness: np.ndarray, row_mask: torch.Tensor, cfg: RaceConfig,
           rng: np.random.Generator) -> tuple[torch.Tensor, GenerationReport]:
    """One generation of selection, crossover and mutation. Returns new heads and what happened."""
    pop = heads.shape[0]
    fitness = np.asarray(fitness, dtype=np.float64)
    if fitness.shape != (pop,):
        raise ValueError(f"fitness must have shape ({pop},), got {fitness.shape}")
    order = np.argsort(-fitness, kind="stable")
    elites = [int(i) for i in order[: n_elites(pop, cfg.elite_fraction)]]
    children = [i for i in range(pop) if i not in elites]
    crossover = agent_crossover if cfg.operators == "agent" else row_crossover
    new = heads.clone()
    sources = np.repeat(np.arange(pop)[:, None], heads.shape[1], axis=1)
    parents: list[tuple[int, int]] = []
    for c in range(0, len(children), 2):
        pa, pb = tournament(fitness, cfg.tournament_size, rng), tournament(fitness, cfg.tournament_size, rng)
        kid_a, kid_b, swap = crossover(heads[pa], heads[pb], rng)
        lineage = (np.where(swap, pb, pa), np.where(swap, pa, pb))
        for slot, kid, src in zip(children[c : c + 2], (kid_a, kid_b), lineage):
            new[slot] = kid
            sources[slot] = src
            parents.append((pa, pb))
    for slot in children:
        if cfg.operators == "agent":
            for i in range(new.shape[1]):
                if rng.random() < cfg.mutation_prob:
                    mutate_agent_head(new[slot, i], row_mask[i], cfg, rng)
        elif rng.random() < cfg.mutation_prob:
            mutate_team_rows(new[slot], row_mask, cfg, rng)
    report = GenerationReport(elites=elites, parents=parents, children=children, sources=sources)
    return new * row_mask[None, :, :, None], report


def follow_sources(params: torch.Tensor, sources: np.ndarray) -> torch.Tensor:
    """Rearrange per-agent team parameters `[P, N, ...]` (e.g. unshared encoders) the way evolution
    rearranged the heads: new team p's agent i gets old team `sources[p, i]`'s agent i."""
    agents = np.arange(sources.shape[1])[None, :]
    return params[torch.from_numpy(sources), torch.from_numpy(np.broadcast_to(agents, sources.shape).copy())]


def inject(heads: torch.Tensor, marl_heads: torch.Tensor, fitness: np.ndarray, report: GenerationReport) -> int:
    """Copy the MARL team into the slot whose team was the worst non-elite this generation."""
    candidates = report.children or list(range(heads.shape[0]))
    slot = min(candidates, key=lambda i: fitness[i])
    heads[slot] = marl_heads.detach()
    report.injected_slot = slot
    return slot
