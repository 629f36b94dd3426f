"""The classical baseline the search is compared with: one L1 ratio for every group.

A uniform plan is also one of the refinement's starting points (engine/search/searcher.py), and
the uniform plan at ratio 0.5 is the channel model's end-to-end calibration point.
"""

from __future__ import annotations

from typing import Callable, Mapping

from secateurs.engine.budget import Measurement
from secateurs.engine.prune.apply import kept_count
from secateurs.engine.prune.groups import GroupInfo
from secateurs.engine.search.types import Candidate, SearchPlan
from secateurs.engine.search.verify import Verifier
from secateurs.engine.spec import SearchSpec

# The uniform plan is corrected once on its measured speedup; within this of the goal it is not.
SAME_SPEEDUP = 0.03


def uniform_plan(groups: list[GroupInfo], ratio: float, spec: SearchSpec) -> dict[str, int]:
    """Every group of `groups` pruned by `ratio`, rounded as the pruning rounds it."""
    return {g.name: (kept_count(g.channels, ratio, round_to=spec.round_to, min_channels=max(spec.min_channels, g.floor),
                                step=g.step)
                     if g.unit == "channels" else max(1, round(g.channels * (1 - ratio)))) for g in groups}


def uniform_fitting(groups: list[GroupInfo], spec: SearchSpec,
                    fits: Callable[[dict[str, int]], bool]) -> dict[str, int] | None:
    """The least-pruned uniform plan that `fits` accepts, or None."""
    ratio = least_uniform_ratio(groups, spec, fits)
    return None if ratio is None else uniform_plan(groups, ratio, spec)


def least_uniform_ratio(groups: list[GroupInfo], spec: SearchSpec,
                        fits: Callable[[dict[str, int]], bool]) -> float | None:
    """Bisection on the uniform ratio (cost falls as it grows); None when even 0.95 does not fit."""
    lo, hi = 0.0, 0.95
    if not fits(uniform_plan(groups, hi, spec)):
        return None
    for _ in range(20):
        mid = (lo + hi) / 2
        if fits(uniform_plan(groups, mid, spec)):
            hi = mid
        else:
            lo = mid
    return hi


def uniform_comparison(verifier: Verifier, best: Candidate, groups: list[GroupInfo], full: Mapping[str, int],
                       baseline: Measurement, predict: Callable[[dict[str, int]], dict[str, float]],
                       index: int) -> Candidate | None:
    """One L1 ratio everywhere, at the chosen plan's measured speedup.

    The ratio is found on the calibrated prediction, then corrected once on the measured speedup
    (proportionally), so both plans are compared at nearly the same measured latency; the report
    gives the speedup each was measured at.
    """
    if "latency_ms" not in best.predicted or not groups:
        return None
    # the steering figure the search chose by (what an earlier run with the same cache chose by too)
    spec, goal = verifier.spec, best.measured.get("steering_speedup", best.measured["speedup"])
    ratio = least_uniform_ratio(groups, spec, lambda plan: predict(plan)["latency_ms"] <= baseline.latency_ms / goal)
    ratio = 0.95 if ratio is None else ratio
    tried: list[Candidate] = []
    for _ in range(2):
        widths = uniform_plan(groups, ratio, spec)  # the classical method drops no block
        plan = SearchPlan(dict(full, **widths))
        if any(c.plan == plan for c in tried):
            break
        candidate = verifier.candidate(plan, predict(widths), parent=None, index=index, stage="uniform",
                                       importance="l1")  # the classical method ranks channels by L1
        candidate.measured["uniform_ratio"] = ratio
        tried.append(candidate)
        got = candidate.measured["speedup"]
        if abs(got / goal - 1) <= SAME_SPEEDUP:
            break
        ratio = min(0.95, max(0.0, ratio * (goal - 1) / max(got - 1, 1e-3)))
    return min(tried, key=lambda c: abs(c.measured["speedup"] - goal))
