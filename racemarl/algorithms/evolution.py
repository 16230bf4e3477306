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

One generation (reference scheme, `race.parents_survive`, see `_reference_generation`): the elites are
cloned into protected slots, tournament winners survive with mutation only, crossover children fill the
unselected slots, and every slot but the protected clones mutates. The MARL team is then copied into
the slot whose team had the worst fitness, never a protected clone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    protected: list[int] = field(default_factory=list)  # slots holding an unmutated elite (never replaced by injection)
    selected: list[int] = field(default_factory=list)  # tournament winners that survive (reference scheme)
    mutated: list[tuple[int, int]] = field(default_factory=list)  # (slot, agent) heads mutated this generation
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


def evolve(
    heads: torch.Tensor, fitness: np.ndarray, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, GenerationReport]:
    """One generation of selection, crossover and mutation. Returns new heads and what happened.

    `cfg.parents_survive` (default) follows the reference code (ERL-Re2 / official RACE `mod_neuro_evo`);
    off, every non-elite slot is replaced by a crossover child and then mutated (this project's first loop).
    """
    pop = heads.shape[0]
    fitness = np.asarray(fitness, dtype=np.float64)
    if fitness.shape != (pop,):
        raise ValueError(f"fitness must have shape ({pop},), got {fitness.shape}")
    step = _reference_generation if cfg.parents_survive else _children_generation
    new, report = step(heads, fitness, row_mask, cfg, rng)
    return new * row_mask[None, :, :, None], report


def _mutate(team: torch.Tensor, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator) -> list[int]:
    """Agent-level: each agent's head mutates with probability `mutation_prob`; row-level: the whole team does.
    Returns the agents whose heads were mutated."""
    if cfg.operators == "agent":
        hit = []
        for i in range(team.shape[0]):
            if rng.random() < cfg.mutation_prob:
                mutate_agent_head(team[i], row_mask[i], cfg, rng)
                hit.append(i)
        return hit
    if rng.random() < cfg.mutation_prob:
        mutate_team_rows(team, row_mask, cfg, rng)
        return list(range(team.shape[0]))
    return []


def mutate_encoders(
    params: dict[str, torch.Tensor], mutated: list[tuple[int, int]], obs_dims, cfg: RaceConfig, rng: np.random.Generator
) -> None:
    """MERL: whole-network mutation. For every (team, agent) in `mutated`, perturb that agent's own encoder in
    place, `params` `{name: [P, N, ...]}`: in each weight matrix (grouped layout `[in, out]`), for every output
    unit a fraction `mutation_frac` of its real inputs (at least one), with one draw per unit of the kind of
    mutation (normal, super, reset), as `perturb` does for head rows. Biases and LayerNorm are not mutated (the
    reference operators mutate weight matrices only); padded inputs of narrower agents stay zero."""
    weights = [name for name, p in params.items() if name.endswith("weight") and p.dim() == 4]
    for team, agent in mutated:
        for name in weights:
            w = params[name][team, agent]  # [in_max, out]
            n_in = obs_dims[agent] if name.startswith("l1.") else w.shape[0]
            _perturb_columns(w, n_in, cfg, rng)


def _perturb_columns(w: torch.Tensor, n_in: int, cfg: RaceConfig, rng: np.random.Generator) -> None:
    """`perturb` for every column (output unit) of `w[:n_in]` at once, each with its own kind of mutation."""
    n_out = w.shape[1]
    k = n_mutated(n_in, cfg.mutation_frac)
    rows = torch.from_numpy(np.argsort(rng.random((n_in, n_out)), axis=0)[:k])  # [k, out]: distinct inputs per unit
    cols = torch.arange(n_out).expand(rows.shape)
    u = rng.random(n_out)
    noise = rng.standard_normal(tuple(rows.shape))
    vals = w[rows, cols].numpy().astype(np.float64)
    strength = np.where(u < cfg.super_mutation_prob, cfg.super_mutation_strength, cfg.mutation_strength)
    new = vals + noise * strength[None, :] * np.abs(vals)
    reset = (u >= cfg.super_mutation_prob) & (u < cfg.super_mutation_prob + cfg.reset_prob)
    new = np.where(reset[None, :], noise, new)
    w[rows, cols] = torch.from_numpy(np.clip(new, -WEIGHT_CLIP, WEIGHT_CLIP).astype(np.float32))


def _reference_generation(
    heads: torch.Tensor, fitness: np.ndarray, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, GenerationReport]:
    """The reference scheme:

    1. elites = the top `elite_fraction`; `pop - elites` tournament draws, duplicates removed, are the
       selected teams; every other team is unselected.
    2. Each elite is cloned into an unselected slot (a selected one if none is left); the clone is protected.
    3. The remaining unselected slots are paired (one repeated if their number is odd); in each pair one slot
       takes a copy of a random protected elite clone, the other a copy of a random selected team, and the
       two exchange genes by crossover.
    4. Every slot except the protected clones mutates (`_mutate`): the selected teams and the elites in
       their own slots survive with mutation only.
    """
    pop, n_agents = heads.shape[:2]
    order = np.argsort(-fitness, kind="stable")
    elites = [int(i) for i in order[: n_elites(pop, cfg.elite_fraction)]]
    draws = [tournament(fitness, cfg.tournament_size, rng) for _ in range(pop - len(elites))]
    selected = list(dict.fromkeys(draws))  # duplicates removed, first-drawn order
    unselected = [i for i in range(pop) if i not in selected and i not in elites]
    unselected = [unselected[j] for j in rng.permutation(len(unselected))]
    new = heads.clone()
    sources = np.repeat(np.arange(pop)[:, None], n_agents, axis=1)
    protected: list[int] = []
    for e in elites:
        slot = unselected.pop(0) if unselected else selected.pop(0)
        new[slot], sources[slot] = heads[e], e
        protected.append(slot)
    crossover = agent_crossover if cfg.operators == "agent" else row_crossover
    if len(unselected) % 2:
        unselected.append(unselected[int(rng.integers(len(unselected)))])
    parents: list[tuple[int, int]] = []
    children: list[int] = []
    for i, j in zip(unselected[0::2], unselected[1::2]):
        pa = protected[int(rng.integers(len(protected)))] if protected else int(order[0])
        pb = selected[int(rng.integers(len(selected)))] if selected else pa
        kid_a, kid_b, swap = crossover(new[pa].clone(), new[pb].clone(), rng)
        src_a, src_b = sources[pa].copy(), sources[pb].copy()
        new[i], new[j] = kid_a, kid_b
        sources[i], sources[j] = np.where(swap, src_b, src_a), np.where(swap, src_a, src_b)
        for slot in (i, j):  # a slot repeated to even the pairs keeps its last pair's genes: report that pair
            pair = (int(sources[pa][0]), int(sources[pb][0]))
            if slot in children:
                parents[children.index(slot)] = pair
            else:
                children.append(slot)
                parents.append(pair)
    mutated = [
        (slot, i) for slot in range(pop) if slot not in protected for i in _mutate(new[slot], row_mask, cfg, rng)
    ]
    report = GenerationReport(
        elites=elites,
        parents=parents,
        children=children,
        sources=sources,
        protected=protected,
        selected=selected,
        mutated=mutated,
    )
    return new, report


def _children_generation(
    heads: torch.Tensor, fitness: np.ndarray, row_mask: torch.Tensor, cfg: RaceConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, GenerationReport]:
    """Elites keep their slots unchanged; every other slot gets a crossover child of two tournament
    winners, which then mutates (`race.parents_survive=false`)."""
    pop = heads.shape[0]
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
    mutated = [(slot, i) for slot in children for i in _mutate(new[slot], row_mask, cfg, rng)]
    report = GenerationReport(
        elites=elites, parents=parents, children=children, sources=sources, protected=elites, mutated=mutated
    )
    return new, report


def follow_sources(params: torch.Tensor, sources: np.ndarray) -> torch.Tensor:
    """Rearrange per-agent team parameters `[P, N, ...]` (e.g. unshared encoders) the way evolution
    rearranged the heads: new team p's agent i gets old team `sources[p, i]`'s agent i."""
    agents = np.arange(sources.shape[1])[None, :]
    return params[torch.from_numpy(sources), torch.from_numpy(np.broadcast_to(agents, sources.shape).copy())]


def inject(heads: torch.Tensor, marl_heads: torch.Tensor, fitness: np.ndarray, report: GenerationReport) -> int:
    """Copy the MARL team into the slot whose team had the worst fitness this generation, never a protected
    elite."""
    candidates = [i for i in range(heads.shape[0]) if i not in report.protected] or list(range(heads.shape[0]))
    slot = min(candidates, key=lambda i: fitness[i])
    heads[slot] = marl_heads.detach()
    report.injected_slot = slot
    return slot
