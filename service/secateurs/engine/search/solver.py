"""Choose one option per group: least total quality loss with every cost within its limit.

This is a multiple-choice knapsack. We solve it with a dynamic programme over the
primary constraint (latency when there is one), because it is exact up to the
discretisation, handles the staircase shape of measured latency (no convexity is
assumed, unlike a greedy or a pure Lagrangian method) and is fast: groups x options
x bins, about 10^6 steps for a ResNet-50. Further constraints (params, MACs, size
next to a latency budget) are moved into the objective with Lagrange multipliers
found by bisection; that is exact whenever a multiplier makes them hold with equality
and otherwise errs on the safe side (the constraint holds, a little loss is wasted).

Costs are *savings*: how much a group's option reduces each quantity from the
unpruned model (0 for "keep all"); `required` is the saving each constraint needs.
Savings are rounded down into bins, so a solution never claims more than it saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Option:
    """One choice for one group: its width, predicted quality loss and savings per constraint."""

    width: int
    loss: float
    savings: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class Solution:
    choice: dict[str, Option]
    feasible: bool
    loss: float
    savings: tuple[float, ...]


def _totals(choice: Mapping[str, Option], dims: int) -> tuple[float, ...]:
    return tuple(sum(o.savings[k] for o in choice.values()) for k in range(dims))


def _objective(option: Option, weights: Sequence[float]) -> float:
    return option.loss - sum(w * s for w, s in zip(weights, option.savings[1:]))


def _dp(options: Mapping[str, Sequence[Option]], required: float, weights: Sequence[float],
        bins: int) -> dict[str, Option] | None:
    """Minimum of sum(objective) with primary savings >= required, exact for binned savings.

    State = saving reached so far, in bins of required/bins, saturating at `bins`.
    Each step keeps the chosen option and the previous state, so the walk back is exact.
    """
    names = list(options)
    if required <= 0:
        return {n: min(options[n], key=lambda o: _objective(o, weights)) for n in names}
    step = required / bins
    best = np.full(bins + 1, np.inf)
    best[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for name in names:
        new = np.full(bins + 1, np.inf)
        pick = np.full(bins + 1, -1, dtype=np.int64)
        prev = np.full(bins + 1, -1, dtype=np.int64)
        for i, option in enumerate(options[name]):
            shift = min(bins, int(np.floor(max(option.savings[0], 0.0) / step + 1e-9)))
            value = _objective(option, weights)
            cand = np.full(bins + 1, np.inf)
            src = np.full(bins + 1, -1, dtype=np.int64)
            cand[shift:bins] = best[: bins - shift] + value
            src[shift:bins] = np.arange(bins - shift)
            tail = best[bins - shift:]  # every state from which this option reaches the requirement
            j = int(np.argmin(tail))
            cand[bins], src[bins] = tail[j] + value, bins - shift + j
            better = cand < new
            new[better], pick[better], prev[better] = cand[better], i, src[better]
        back.append((pick, prev))
        best = new
    if not np.isfinite(best[bins]):
        return None
    choice: dict[str, Option] = {}
    state = bins
    for name, (pick, prev) in zip(reversed(names), reversed(back)):
        choice[name] = options[name][int(pick[state])]
        state = int(prev[state])
    return {n: choice[n] for n in names}


def solve(options: Mapping[str, Sequence[Option]], required: Sequence[float], *, bins: int = 2000) -> Solution:
    """Minimise total loss subject to total savings[k] >= required[k] for every k.

    When no choice meets every requirement, returns the choice with the largest
    savings on the primary axis (the best reachable point) with feasible=False.
    """
    dims = len(required)
    if dims == 0:
        raise ValueError("at least one constraint is needed")
    choice = _dp(options, required[0], [0.0] * (dims - 1), bins)
    if choice is not None and dims > 1:
        choice = _fit_multipliers(options, required, bins, choice)
    if choice is None:
        return most_saving(options, dims)
    totals = _totals(choice, dims)
    feasible = all(t >= r - 1e-9 * max(1.0, abs(r)) for t, r in zip(totals, required))
    return Solution(choice=choice, feasible=feasible, loss=sum(o.loss for o in choice.values()), savings=totals)


def most_saving(options: Mapping[str, Sequence[Option]], dims: int) -> Solution:
    """The choice with the largest savings on the primary axis (least loss among equals): the best
    reachable point, infeasible."""
    most = {n: max(opts, key=lambda o: (o.savings[0], -o.loss)) for n, opts in options.items()}
    return Solution(choice=most, feasible=False, loss=sum(o.loss for o in most.values()), savings=_totals(most, dims))


def _fit_multipliers(options: Mapping[str, Sequence[Option]], required: Sequence[float], bins: int,
                     choice: dict[str, Option], iterations: int = 25) -> dict[str, Option] | None:
    """Raise each secondary multiplier (bisection) until its constraint holds."""
    dims = len(required)
    weights = [0.0] * (dims - 1)
    loss_scale = sum(abs(o.loss) for opts in options.values() for o in opts) + 1.0
    for _ in range(3):  # a few sweeps: raising one multiplier can change another constraint
        for k in range(1, dims):
            if _totals(choice, dims)[k] >= required[k] - 1e-9:
                continue
            unit = loss_scale / max(1e-12, required[k])
            lo, hi = weights[k - 1] / unit, max(1.0, 2 * weights[k - 1] / unit)
            while True:  # grow until the constraint holds
                weights[k - 1] = hi * unit
                trial = _dp(options, required[0], weights, bins)
                if trial is None:
                    return None
                if _totals(trial, dims)[k] >= required[k] - 1e-9:
                    choice = trial
                    break
                if hi > 1e9:
                    return None
                lo, hi = hi, hi * 4
            for _ in range(iterations):  # then shrink it to the least that works
                mid = (lo + hi) / 2
                weights[k - 1] = mid * unit
                trial = _dp(options, required[0], weights, bins)
                if trial is not None and _totals(trial, dims)[k] >= required[k] - 1e-9:
                    hi, choice = mid, trial
                else:
                    lo = mid
            weights[k - 1] = hi * unit
    return choice
