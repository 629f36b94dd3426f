"""The budget solver against brute force on small synthetic cost tables."""

from __future__ import annotations

import itertools
import random

import pytest

from secateurs.engine.search.solver import Option, solve


def _table(rng: random.Random, groups: int, options: int, dims: int) -> dict[str, list[Option]]:
    table = {}
    for g in range(groups):
        opts = [Option(width=options, loss=0.0, savings=(0.0,) * dims)]
        for w in range(options - 1, 0, -1):
            # staircase latency: savings jump at some widths and stay flat at others
            opts.append(Option(width=w, loss=rng.uniform(0, 1) * (options - w) ** 1.5,
                               savings=tuple(rng.choice([0.5, 1.0, 1.0, 2.0]) * (options - w) * rng.uniform(0.5, 1.5)
                                             for _ in range(dims))))
        table[f"g{g}"] = opts
    return table


def _brute(table, required):
    best = None
    for combo in itertools.product(*table.values()):
        totals = [sum(o.savings[k] for o in combo) for k in range(len(required))]
        if all(t >= r for t, r in zip(totals, required)):
            loss = sum(o.loss for o in combo)
            if best is None or loss < best:
                best = loss
    return best


@pytest.mark.parametrize("seed", range(12))
def test_single_constraint_matches_brute_force(seed):
    rng = random.Random(seed)
    table = _table(rng, groups=5, options=4, dims=1)
    most = sum(max(o.savings[0] for o in opts) for opts in table.values())
    required = (most * rng.uniform(0.2, 0.9),)
    solution = solve(table, required, bins=4000)
    optimum = _brute(table, required)
    assert solution.feasible and solution.savings[0] >= required[0]
    # Binning only ever under-counts savings: the DP can lose a little, never claim an infeasible optimum.
    assert solution.loss == pytest.approx(optimum, rel=0.02, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_two_constraints_are_both_met_near_the_optimum(seed):
    rng = random.Random(100 + seed)
    table = _table(rng, groups=4, options=4, dims=2)
    most = [sum(max(o.savings[k] for o in opts) for opts in table.values()) for k in range(2)]
    required = (most[0] * 0.4, most[1] * 0.6)
    solution = solve(table, required)
    optimum = _brute(table, required)
    assert solution.feasible
    assert all(s >= r for s, r in zip(solution.savings, required))
    assert solution.loss <= optimum * 1.5 + 1e-6  # Lagrangian: feasible, at most a little worse


def test_infeasible_returns_the_best_reachable_point():
    table = _table(random.Random(1), groups=3, options=3, dims=1)
    most = sum(max(o.savings[0] for o in opts) for opts in table.values())
    solution = solve(table, (most * 2,))
    assert not solution.feasible and solution.savings[0] == pytest.approx(most)


def test_no_requirement_prunes_nothing():
    table = _table(random.Random(2), groups=3, options=3, dims=1)
    solution = solve(table, (0.0,))
    assert solution.feasible and solution.loss == 0.0
