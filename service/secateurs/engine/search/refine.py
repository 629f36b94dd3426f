"""Joint refinement of a solved plan, on quality measured for the whole plan at once.

The knapsack adds up losses measured one group at a time. Deep in pruning they are
not additive: two groups that each cost little alone can cost a lot together (the
residual stream and the convolutions that read it), so the solver's plan can be worse,
measured, than a plain uniform one. Here the loss of a whole plan is measured the way
one group's is (every pruned channel zeroed, BatchNorm recalibrated on real data, the
outputs compared with the original; accuracy after BatchNorm recalibration is what
ranks pruned candidates well before fine-tuning, as EagleEye showed), and a local
search trades width between groups at constant predicted cost:

    start     the solver's plan and the uniform plan of the same predicted cost;
              keep the one with the lower measured loss
    move      widen group j one step, narrow group i just enough to fit again
              (or only widen, when the budget has room), then spend what the
              narrowing freed widening other groups; moves ranked by their
              additive estimate, best first
    accept    the best improving move of a sweep; stop when a sweep finds none or
              the evaluation budget is spent

Each whole-plan quality is cached on disk like the one-group sensitivities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from secateurs.engine.prune.blocks import bypassed, dropped_in
from secateurs.engine.prune.groups import GraphContext, GroupInfo
from secateurs.engine.latency.cache import MeasurementCache, cache_key
from secateurs.engine.search.sensitivity import Calibration, Quality, cached_quality, masked

Plan = dict[str, int]


@dataclass(frozen=True, kw_only=True)
class Step:
    """One accepted change of the refinement (for the report's search trace)."""

    widened: str | None
    narrowed: str | None
    loss: float
    evaluations: int

    def to_dict(self) -> dict:
        return {"widened": self.widened, "narrowed": self.narrowed, "loss": self.loss,
                "evaluations": self.evaluations}


class JointQuality:
    """Measured quality of a whole plan (every group at its width at once), cached."""

    def __init__(self, ctx: GraphContext, groups: Sequence[GroupInfo], calib: Calibration,
                 reference: Sequence[torch.Tensor], *, cache: MeasurementCache, model_id: str) -> None:
        self.ctx, self.calib, self.reference, self.cache, self.model_id = ctx, calib, reference, cache, model_id
        self.groups = {g.name: g for g in groups}
        self.data_id = calib.identity()
        self.evaluations = 0  # measured here, not read from the cache

    def __call__(self, plan: Plan) -> Quality:
        """Quality with every group at its width and the plan's dropped blocks bypassed."""
        pruned = sorted((n, w) for n, w in plan.items() if n in self.groups and w < self.groups[n].channels)
        dropped = sorted(dropped_in(plan))
        parts: list = [pruned, dropped] if dropped else [pruned]  # without blocks, the key of a channels-only plan
        quality, measured = cached_quality(
            self.ctx.model, self.calib, self.reference,
            lambda: [masked(self.ctx, name, self.groups[name], width) for name, width in pruned]
            + ([bypassed(self.ctx.model, dropped)] if dropped else []),
            cache=self.cache, kind="joint-quality",
            key=cache_key("joint-quality", self.model_id, self.data_id, self.ctx.criterion, *parts))
        self.evaluations += measured
        return quality


def refine(starts: Sequence[Plan], widths: dict[str, list[int]], *, fits: Callable[[Plan], bool],
           loss: Callable[[Plan], float], additive: Callable[[str, int], float], max_evaluations: int = 150,
           on_progress: Callable[[int, int], None] | None = None) -> tuple[Plan, list[Step]]:
    """Local search from the best of `starts` (all of which must fit) over plans that `fits` accepts.

    `widths[g]` lists group g's allowed widths, widest first (only these entries move; a block is
    an entry of widths [1, 0]); `additive(g, w)` is the one-group loss used only to rank moves;
    `loss(plan)` is the measured whole-plan loss minimised.
    """
    evaluations = 0

    def measured(plan: Plan) -> float:
        nonlocal evaluations
        evaluations += 1
        if on_progress:
            on_progress(min(evaluations, max_evaluations), max_evaluations)
        return loss(plan)

    scored = [(measured(p), p) for p in starts]
    best_loss, best = min(scored, key=lambda t: t[0])
    steps = [Step(widened=None, narrowed=None, loss=best_loss, evaluations=evaluations)]
    while evaluations < max_evaluations:
        moves = _moves(best, widths, fits)
        moves.sort(key=lambda m: _estimate(best, m[0], additive))
        improved: tuple[float, Plan, str, str | None] | None = None
        for plan, widened, narrowed in moves:
            if evaluations >= max_evaluations:
                break
            plan = _fill(plan, widths, fits, additive)  # only for the moves measured: it costs predictions
            value = measured(plan)
            if value < (improved[0] if improved else best_loss) - 1e-9:
                improved = (value, plan, widened, narrowed)
        if improved is None:
            break
        best_loss, best = improved[0], improved[1]
        steps.append(Step(widened=improved[2], narrowed=improved[3], loss=best_loss, evaluations=evaluations))
    return best, steps


def _moves(plan: Plan, widths: dict[str, list[int]], fits: Callable[[Plan], bool]) -> list[tuple[Plan, str, str | None]]:
    """Every plan one step wider in one group, narrowed in at most one other group just enough to fit.
    A width off the grid (a uniform start) moves to its neighbours on the grid."""
    out = []
    for wide in widths:
        wider = [w for w in widths[wide] if w > plan[wide]]
        if not wider:
            continue
        widened = dict(plan, **{wide: min(wider)})
        if fits(widened):
            out.append((widened, wide, None))
            continue
        for narrow in widths:
            if narrow == wide:
                continue
            for w in sorted((w for w in widths[narrow] if w < plan[narrow]), reverse=True):
                candidate = dict(widened, **{narrow: w})
                if fits(candidate):
                    out.append((candidate, wide, narrow))
                    break
    return out


def _fill(plan: Plan, widths: dict[str, list[int]], fits: Callable[[Plan], bool],
          additive: Callable[[str, int], float]) -> Plan:
    """Widen groups one step at a time while the plan still fits, the step that recovers the most
    (additive estimate) first: a budget left unused is quality given away."""
    plan = dict(plan)
    while True:
        steps = []
        for name, choices in widths.items():
            width = plan[name]
            wider = [w for w in choices if w > width]
            if wider and fits(candidate := dict(plan, **{name: min(wider)})):
                steps.append((additive(name, min(wider)) - additive(name, width), candidate))
        if not steps:
            return plan
        plan = min(steps, key=lambda t: t[0])[1]


def _estimate(plan: Plan, candidate: Plan, additive: Callable[[str, int], float]) -> float:
    return sum(additive(n, candidate[n]) - additive(n, plan[n]) for n in plan if candidate[n] != plan[n])
