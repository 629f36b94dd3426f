"""Budgets: what the compressed model must satisfy, and how far a measurement misses.

`budget_shortfall` is 0 when every budget holds and otherwise the largest relative
miss, so near-misses can be ranked and the report can show the closest failures.
`budget_slack` says how much of a budget was left unused: a plan far under its
latency budget while accuracy was given away is a miss of another kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from secateurs.errors import InvalidRequest

PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits on the compressed model; every one given must hold.

    latency_ms: at `percentile`, on the target. speedup: baseline latency / compressed
    latency at the same percentile, measured interleaved. size_bytes: ONNX file size.
    params, macs: counts. max_accuracy_drop: accuracy points (0.01 = 1 point) lost
    (fidelity, top-1 agreement with the original, when there are no labels).
    """

    latency_ms: float | None = None
    speedup: float | None = None
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    max_accuracy_drop: float | None = None
    percentile: float = 50.0

    def is_empty(self) -> bool:
        return all(v is None for v in (self.latency_ms, self.speedup, self.size_bytes, self.params, self.macs))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What a model was measured at. `speedup` is the baseline/candidate ratio measured
    interleaved in one process (1.0 for the baseline itself)."""

    latency_ms: float
    speedup: float
    size_bytes: int
    params: int
    macs: int


def validate_budget(budget: Budget) -> None:
    """Field-level checks, then cross-field ones, with the field at fault."""
    def positive(name: str, value: float | None) -> None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise InvalidRequest(f"budget.{name} must be a positive number, got {value!r}", field=f"budget.{name}")

    for name in ("latency_ms", "size_bytes", "params", "macs"):
        positive(name, getattr(budget, name))
    if budget.speedup is not None and (not math.isfinite(budget.speedup) or budget.speedup <= 1.0):
        raise InvalidRequest(f"budget.speedup must be greater than 1, got {budget.speedup!r}",
                             field="budget.speedup")
    if budget.max_accuracy_drop is not None and not 0 <= budget.max_accuracy_drop < 1:
        raise InvalidRequest(f"budget.max_accuracy_drop must be in [0, 1) (0.01 = one point), "
                             f"got {budget.max_accuracy_drop!r}", field="budget.max_accuracy_drop")
    if budget.percentile not in PERCENTILES:
        raise InvalidRequest(f"budget.percentile must be one of {', '.join(f'{q:g}' for q in PERCENTILES)}, "
                             f"got {budget.percentile!r}",
                             field="budget.percentile")
    if budget.is_empty() and budget.max_accuracy_drop is not None:
        raise InvalidRequest("budget.max_accuracy_drop limits a budget; give latency_ms, speedup, size_bytes, "
                             "params or macs too", field="budget.max_accuracy_drop")


def latency_ceiling(budget: Budget, baseline_latency_ms: float) -> float | None:
    """The tightest latency the budget allows (a speedup budget in milliseconds)."""
    limits = [v for v in (budget.latency_ms,
                          baseline_latency_ms / budget.speedup if budget.speedup else None) if v]
    return min(limits) if limits else None


def _ratios(measured: Measurement, budget: Budget) -> list[float]:
    """measured / allowed for every budget given (> 1 is a miss)."""
    out = []
    if budget.latency_ms is not None:
        out.append(measured.latency_ms / budget.latency_ms)
    if budget.speedup is not None:
        out.append(budget.speedup / measured.speedup)
    for name in ("size_bytes", "params", "macs"):
        limit = getattr(budget, name)
        if limit is not None:
            out.append(getattr(measured, name) / limit)
    return out


def budget_shortfall(measured: Measurement, budget: Budget) -> float:
    """0 when every budget holds, else the largest relative excess over a limit."""
    return max([0.0] + [r - 1.0 for r in _ratios(measured, budget)])


def budget_slack(measured: Measurement, budget: Budget) -> float:
    """How far under its tightest limit a plan is (0 = exactly at the budget; negative = a miss)."""
    ratios = _ratios(measured, budget)
    return 1.0 - max(ratios) if ratios else 0.0
