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

The whole-plan loss is JointQuality's (engine/search/sensitivity.py), cached on disk like the
one-group sensitivities; this module is pure: plans in, a plan out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from secateurs.engine.events import EventSink, counted, ignore_events
from secateurs.engine.search.types import Entries


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


def refine(starts: Sequence[Entries], widths: dict[str, list[int]], *, fits: Callable[[Entries], bool],
           loss: Callable[[Entries], float], additive: Callable[[str, int], float], max_evaluations: int = 150,
           on_event: EventSink = ignore_events) -> tuple[Entries, list[Step]]:
    """Local search from the best of `starts` (all of which must fit) over plans that `fits` accepts.

    `widths[g]` lists group g's allowed widths, widest first (only these entries move; a block is
    an entry of widths [1, 0]); `additive(g, w)` is the one-group loss used only to rank moves;
    `loss(plan)` is the measured whole-plan loss minimised.
    """
    evaluations = 0

    def measured(plan: Entries) -> float:
        nonlocal evaluations
        evaluations += 1
        counted(on_event, "refining the plan", min(evaluations, max_evaluations), max_evaluations)
        return loss(plan)

    scored = [(measured(p), p) for p in starts]
    best_loss, best = min(scored, key=lambda t: t[0])
    steps = [Step(widened=None, narrowed=None, loss=best_loss, evaluations=evaluations)]
    while evaluations < max_evaluations:
        moves = _moves(best, widths, fits)
        moves.sort(key=lambda m: _estimate(best, m[0], additive))
        improved: tuple[float, Entries, str, str | None] | None = None
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


def _moves(plan: Entries, widths: dict[str, list[int]], fits: Callable[[Entries], bool]) -> list[tuple[Entries, str, str | None]]:
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


def _fill(plan: Entries, widths: dict[str, list[int]], fits: Callable[[Entries], bool],
          additive: Callable[[str, int], float]) -> Entries:
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


def _estimate(plan: Entries, candidate: Entries, additive: Callable[[str, int], float]) -> float:
    return sum(additive(n, candidate[n]) - additive(n, plan[n]) for n in plan if candidate[n] != plan[n])
