"""Tests for racemarl.algorithms.evolution: elitism, agent/row crossover, mutation, MARL injection, tournaments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from racemarl.algorithms.evolution import (
    agent_crossover,
    evolve,
    inject,
    mutate_agent_head,
    mutate_team_rows,
    n_elites,
    n_mutated,
    row_crossover,
    tournament,
)
from racemarl.config import RaceConfig

torch.set_num_threads(1)

ACT_DIMS = (1, 2, 2)  # agent 0's second head row is padding
N, A, D = 3, 2, 8  # heads are [P, N, A, D + 1]
ROW_MASK = torch.tensor([[True, False], [True, True], [True, True]])


def population(pop: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    heads = torch.rand(pop, N, A, D + 1, generator=g) * 2 - 1
    return heads * ROW_MASK[None, :, :, None]


def cfg_with(**kw) -> RaceConfig:
    """Most tests here check the operators under the simpler scheme (every non-elite slot a child);
    the reference scheme has its own tests below."""
    cfg = RaceConfig()
    kw = {"parents_survive": False, **kw}
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b)


# ----------------------------------------------------------------------------- elitism


@pytest.mark.parametrize("operators", ["agent", "row"])
@pytest.mark.parametrize("elite_fraction, expected", [(0.2, 1), (0.34, 2)])
def test_elites_survive_bit_identical(operators, elite_fraction, expected):
    pop = 6
    fitness = np.array([3.0, 10.0, -1.0, 7.0, 0.0, 2.0])
    top = [1, 3][:expected]
    cfg = cfg_with(elite_fraction=elite_fraction, mutation_prob=1.0, operators=operators)
    assert n_elites(pop, elite_fraction) == expected
    rng = np.random.default_rng(0)
    for gen in range(20):
        heads = population(pop, gen)
        new, report = evolve(heads, fitness, ROW_MASK, cfg, rng)
        assert new.shape == heads.shape
        assert report.elites == top
        assert sorted(report.children) == sorted(set(range(pop)) - set(top))
        assert len(report.parents) == len(report.children)
        for e in top:
            assert same(new[e], heads[e])  # elites keep their slot, bit for bit
        for c in report.children:
            assert not same(new[c], heads[c])  # mutation_prob=1: every child is new
        assert torch.count_nonzero(new[:, 0, 1]) == 0  # padding rows stay zero


def test_evolve_rejects_wrong_fitness_shape():
    with pytest.raises(ValueError):
        evolve(population(4, 0), np.zeros(3), ROW_MASK, RaceConfig(), np.random.default_rng(0))


# ----------------------------------------------------------------------------- crossover


def test_agent_crossover_exchanges_whole_agent_heads():
    a, b = population(2, 1)
    rng = np.random.default_rng(1)
    swaps = np.zeros(N)
    draws = 400
    for _ in range(draws):
        c1, c2, _ = agent_crossover(a, b, rng)
        for i in range(N):
            kept = same(c1[i], a[i]) and same(c2[i], b[i])
            swapped = same(c1[i], b[i]) and same(c2[i], a[i])
            # each child head i is one parent's head i, and the two children hold each parent's head i once
            assert kept != swapped
            swaps[i] += swapped
    freq = swaps / draws
    assert np.all((freq > 0.4) & (freq < 0.6)), freq  # each agent swaps with probability 1/2


def test_row_crossover_takes_each_row_from_one_parent_independently():
    a, b = population(2, 2)
    rng = np.random.default_rng(2)
    mixed_within_agent = False
    for _ in range(200):
        c1, c2, _ = row_crossover(a, b, rng)
        for i in range(N):
            src = []
            for r in range(ACT_DIMS[i]):
                kept = same(c1[i, r], a[i, r]) and same(c2[i, r], b[i, r])
                swapped = same(c1[i, r], b[i, r]) and same(c2[i, r], a[i, r])
                assert kept != swapped
                src.append(swapped)
            mixed_within_agent |= len(set(src)) > 1
    assert mixed_within_agent  # rows of one agent can come from different parents (unlike agent crossover)


# ----------------------------------------------------------------------------- mutation


def changed_entries(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return (new != old).sum(-1)  # per row


@pytest.mark.parametrize("frac, expected_per_row", [(0.25, 2), (0.5, 4), (0.05, 1)])
def test_agent_mutation_changes_fraction_of_each_row_and_never_bias_or_elites(frac, expected_per_row):
    """All teams identical, so crossover children equal the parent and every difference is mutation."""
    pop = 5
    base = population(1, 3)[0]
    heads = base.expand(pop, *base.shape).clone()
    fitness = np.array([1.0, 5.0, 2.0, 4.0, 3.0])  # elite: team 1
    cfg = cfg_with(
        elite_fraction=0.2,
        mutation_prob=1.0,
        mutation_frac=frac,
        mutate_bias=False,
        super_mutation_prob=0.2,
        reset_prob=0.2,
    )
    assert n_mutated(D, frac) == expected_per_row  # frac * d = 0.4 < 1 still mutates one weight
    rng = np.random.default_rng(3)
    for _ in range(10):
        new, report = evolve(heads, fitness, ROW_MASK, cfg, rng)
        assert report.elites == [1]
        assert same(new[1], heads[1])
        for c in report.children:
            per_row = changed_entries(new[c], heads[c])  # [N, A]
            assert torch.all(per_row[ROW_MASK] == expected_per_row), per_row
            assert torch.all(per_row[~ROW_MASK] == 0)
            assert same(new[c, :, :, D], heads[c, :, :, D])  # bias column untouched
            assert torch.count_nonzero(new[c, 0, 1]) == 0
            assert torch.all(torch.isfinite(new[c]))


def test_agent_mutation_probability_per_agent():
    pop = 11
    base = population(1, 4)[0]
    heads = base.expand(pop, *base.shape).clone()
    fitness = np.arange(pop, dtype=float)
    cfg = cfg_with(elite_fraction=0.0, mutation_prob=0.3, mutation_frac=0.5)
    rng = np.random.default_rng(4)
    mutated, total = 0, 0
    for _ in range(40):
        new, _ = evolve(heads, fitness, ROW_MASK, cfg, rng)
        for c in range(pop):
            for i in range(N):
                changed = not same(new[c, i], heads[c, i])
                # an agent's head is either untouched or every real row of it is mutated
                rows = changed_entries(new[c, i], heads[c, i])[ROW_MASK[i]]
                assert torch.all(rows > 0) if changed else torch.all(rows == 0)
                mutated += changed
                total += 1
    assert 0.25 < mutated / total < 0.35  # independently per agent with mutation_prob


def test_mutate_agent_head_direct_with_bias():
    rng = np.random.default_rng(5)
    cfg = cfg_with(mutation_frac=0.05, mutate_bias=True, super_mutation_prob=0.0, reset_prob=0.0)
    head = population(1, 5)[0, 1]
    bias_hits = 0
    for _ in range(300):
        h = head.clone()
        mutate_agent_head(h, ROW_MASK[1], cfg, rng)
        per_row = changed_entries(h, head)
        assert torch.all(per_row == 1)  # n_mutated(9, 0.05) = 1, over d + 1 columns
        bias_hits += int((h[:, D] != head[:, D]).sum())
        # normal mutation: w + N(0, 1) * strength * |w|, small relative change
        rel = ((h - head).abs() / head.abs().clamp(min=1e-12)).max()
        assert rel < 1.0
    # the bias is one of 9 candidate columns: hit about 600 / 9 = 67 times
    assert 35 < bias_hits < 100


def test_row_mutation_fraction_of_all_real_weights():
    rng = np.random.default_rng(6)
    cfg = cfg_with(mutation_frac=0.1, mutate_bias=False)
    team = population(1, 6)[0]
    real = int(ROW_MASK.sum()) * D  # 5 real rows * 8 weights
    for _ in range(50):
        t = team.clone()
        mutate_team_rows(t, ROW_MASK, cfg, rng)
        diff = t != team
        assert int(diff.sum()) == n_mutated(real, 0.1) == 4
        assert not diff[..., D].any()
        assert not diff[0, 1].any()


def test_row_operators_evolve_keeps_elites_and_mutates_team():
    pop = 6
    base = population(1, 7)[0]
    heads = base.expand(pop, *base.shape).clone()
    fitness = np.array([0.0, 1.0, 9.0, 2.0, 3.0, 4.0])
    cfg = cfg_with(operators="row", elite_fraction=0.2, mutation_prob=1.0, mutation_frac=0.1, mutate_bias=True)
    new, report = evolve(heads, fitness, ROW_MASK, cfg, np.random.default_rng(7))
    assert report.elites == [2]
    assert same(new[2], heads[2])
    real = int(ROW_MASK.sum()) * (D + 1)
    for c in report.children:
        assert int((new[c] != heads[c]).sum()) == n_mutated(real, 0.1)  # team-wide count, not per row
    assert torch.count_nonzero(new[:, 0, 1]) == 0


# ----------------------------------------------------------------------------- injection


def test_inject_copies_marl_heads_into_worst_non_elite_slot():
    pop = 6
    fitness = np.array([5.0, 1.0, 9.0, 3.0, 0.5, 7.0])
    heads = population(pop, 8)
    marl = torch.nn.Parameter(population(1, 9)[0])
    cfg = cfg_with(elite_fraction=0.34)
    new, report = evolve(heads, fitness, ROW_MASK, cfg, np.random.default_rng(8))
    before = new.clone()
    slot = inject(new, marl, fitness, report)
    assert slot == 4 and report.injected_slot == 4
    assert same(new[4], marl.detach())
    assert not new.requires_grad
    for j in range(pop):
        if j != 4:
            assert same(new[j], before[j])


def test_inject_never_hits_an_elite():
    rng = np.random.default_rng(9)
    cfg = cfg_with(elite_fraction=0.4)
    marl = population(1, 10)[0]
    for trial in range(30):
        pop = int(rng.integers(3, 9))
        fitness = rng.normal(size=pop)
        if trial % 3 == 0:
            fitness[:] = 1.0  # ties everywhere
        new, report = evolve(population(pop, trial), fitness, ROW_MASK, cfg, rng)
        slot = inject(new, marl, fitness, report)
        assert slot not in report.elites
        assert fitness[slot] == min(fitness[c] for c in report.children)
        assert same(new[slot], marl)


# ----------------------------------------------------------------------------- the reference scheme


def _reference(**kw) -> RaceConfig:
    return cfg_with(parents_survive=True, **kw)


def test_reference_scheme_keeps_selected_parents_and_clones_elites():
    """mutation off: the tournament winners stay bit-identical in their slots, each elite is cloned into a
    protected slot, and crossover only rewrites the unselected slots, from an elite clone and a winner."""
    rng = np.random.default_rng(11)
    crossed = from_winner = 0
    for trial in range(40):
        pop = int(rng.integers(5, 10))  # int(0.2 * pop) = 1 elite
        heads = population(pop, 100 + trial)
        fitness = rng.normal(size=pop)
        new, report = evolve(heads, fitness, ROW_MASK, _reference(mutation_prob=0.0), rng)
        (elite,) = report.elites
        assert elite == int(np.argmax(fitness))
        assert len(report.protected) == 1 and same(new[report.protected[0]], heads[elite])
        for s in report.selected:
            assert same(new[s], heads[s])  # a surviving parent is not replaced
        untouched = set(report.selected) | {elite} | set(report.protected)
        assert set(report.children) == set(range(pop)) - untouched
        for c, (pa, pb) in zip(report.children, report.parents):
            # a child's parents are the elite's clone and a tournament winner, and each of its agent heads is a
            # copy of that agent's head in one of the two
            assert pa == elite and pb in report.selected
            assert set(report.sources[c]) <= {pa, pb}
            for i in range(N):
                assert same(new[c, i], heads[report.sources[c, i], i])
            crossed += len(set(report.sources[c])) > 1
            from_winner += pb != elite and pb in set(report.sources[c])
    assert crossed > 0 and from_winner > 0  # crossover mixes the two, and winners other than the elite pass genes on


def test_reference_scheme_with_row_operators_mixes_rows_within_an_agent():
    """race.operators=row under the default (reference) scheme: each row of a child's agent head comes from one of
    its two parents, and some agent ends with rows of both (agent crossover would keep an agent's rows together)."""
    rng = np.random.default_rng(21)
    mixed = False
    for trial in range(40):
        heads = population(6, 200 + trial)
        new, report = evolve(heads, rng.normal(size=6), ROW_MASK, _reference(mutation_prob=0.0, operators="row"), rng)
        for c, (pa, pb) in zip(report.children, report.parents):
            for i in range(N):
                rows = [r for r in range(A) if ROW_MASK[i, r]]
                from_a = [same(new[c, i, r], heads[pa, i, r]) for r in rows]
                from_b = [same(new[c, i, r], heads[pb, i, r]) for r in rows]
                assert all(x or y for x, y in zip(from_a, from_b))
                mixed |= any(x and not y for x, y in zip(from_a, from_b)) and any(
                    y and not x for x, y in zip(from_a, from_b)
                )
    assert mixed


def test_reference_scheme_mutates_everything_but_the_elite_clone_and_never_biases():
    pop = 6
    base = population(1, 12)[0]
    heads = base.expand(pop, *base.shape).clone()  # identical teams: every difference is mutation
    fitness = np.array([0.0, 1.0, 9.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(12)
    for _ in range(10):
        new, report = evolve(heads, fitness, ROW_MASK, _reference(mutation_prob=1.0, mutation_frac=0.5), rng)
        assert RaceConfig().mutate_bias is False  # the reference never mutates biases
        for slot in range(pop):
            if slot in report.protected:
                assert same(new[slot], heads[slot])
            else:  # selected winners and the elite's own slot mutate too
                assert not same(new[slot], heads[slot])
            assert same(new[slot, :, :, D], heads[slot, :, :, D])


def test_reference_injection_spares_the_protected_clone():
    rng = np.random.default_rng(13)
    marl = population(1, 14)[0]
    for trial in range(30):
        pop = int(rng.integers(3, 8))
        fitness = rng.normal(size=pop)
        new, report = evolve(population(pop, trial), fitness, ROW_MASK, _reference(), rng)
        slot = inject(new, marl, fitness, report)
        assert slot not in report.protected
        assert fitness[slot] == min(fitness[i] for i in range(pop) if i not in report.protected)


# ----------------------------------------------------------------------------- tournament


def test_tournament_returns_fittest_contender():
    fitness = np.array([0.3, 2.0, -1.0, 0.9, 1.5])  # ranks: 1 > 4 > 3 > 0 > 2
    by_rank = [1, 4, 3, 0, 2]
    rng = np.random.default_rng(10)
    # a large tournament almost surely contains the best team
    wins = [tournament(fitness, 40, rng) for _ in range(200)]
    assert all(w == 1 for w in wins)
    # size 3 with replacement over 5 teams: P(rank r wins) = ((5 - r)^3 - (4 - r)^3) / 125
    draws = 4000
    counts = np.bincount([tournament(fitness, 3, rng) for _ in range(draws)], minlength=5)
    freq = counts[by_rank] / draws
    expected = np.array([(5 - r) ** 3 - (4 - r) ** 3 for r in range(5)]) / 125
    np.testing.assert_allclose(freq, expected, atol=0.03)
    # size 1: uniform
    counts = np.bincount([tournament(fitness, 1, rng) for _ in range(draws)], minlength=5)
    np.testing.assert_allclose(counts / draws, 0.2, atol=0.03)


# ----------------------------------------------------------------------------- MERL: whole-network mutation


def test_merl_encoder_mutation_touches_only_mutated_agents_real_weights():
    from racemarl.algorithms.evolution import mutate_encoders
    from racemarl.nets.policy import AgentEncoders

    obs_dims = (3, 5)
    enc = AgentEncoders(obs_dims, hidden=6, embed_dim=4)
    params = {k: v.detach()[None].repeat(2, *([1] * v.dim())) for k, v in enc.named_parameters()}  # 2 teams
    before = {k: v.clone() for k, v in params.items()}
    cfg = cfg_with(mutation_frac=0.5, super_mutation_prob=0.0, reset_prob=0.0)
    mutate_encoders(params, [(1, 0)], obs_dims, cfg, np.random.default_rng(0))
    for name, v in params.items():
        assert torch.equal(v[0], before[name][0])  # team 0 untouched
        assert torch.equal(v[1, 1], before[name][1, 1])  # agent 1 of team 1 untouched
        if not name.endswith("weight") or v.dim() != 4:
            assert torch.equal(v[1, 0], before[name][1, 0])  # biases and LayerNorm never mutated
    l1 = params["l1.weight"][1, 0] != before["l1.weight"][1, 0]  # [in_max=5, out=6]
    assert torch.all(l1[:3].sum(0) == n_mutated(3, 0.5))  # per output unit, a fraction of agent 0's 3 real inputs
    assert not l1[3:].any() and torch.count_nonzero(params["l1.weight"][1, 0, 3:]) == 0  # padding stays zero
    l2 = params["l2.weight"][1, 0] != before["l2.weight"][1, 0]
    assert torch.all(l2.sum(0) == n_mutated(6, 0.5))


def test_evolve_reports_the_mutated_agents():
    heads = population(5, 30)
    cfg = cfg_with(parents_survive=True, mutation_prob=1.0)
    new, report = evolve(heads, np.arange(5.0), ROW_MASK, cfg, np.random.default_rng(30))
    expected = {(s, i) for s in range(5) if s not in report.protected for i in range(N)}
    assert set(report.mutated) == expected
    _, report = evolve(heads, np.arange(5.0), ROW_MASK, cfg_with(mutation_prob=0.0), np.random.default_rng(31))
    assert report.mutated == []
