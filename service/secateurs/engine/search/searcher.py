"""The latency-budget searcher as ask/tell: it proposes plans and is told their measurements.

It knows no model and no runtime, only a `SearchProblem`: the entries it chooses a width for,
each entry's loss at each width alone, a plan's predicted costs and its whole-plan loss. Each
round it

    solves    a multiple-choice knapsack over the entries (engine/search/solver.py), linearised
              around the previous answer, for the current aim of every ceiling
    refines   the answer on whole-plan loss at no greater predicted cost (engine/search/refine.py)
    proposes  the plan, and is told what it measured; a plan that missed the budget makes its aim
              an upper bound, one that wasted it a lower bound, and the next aim rescales the
              prediction by measured/predicted, or bisects the bracket once both bounds exist

until a plan lands within `precision` under the budget (then up to `tighten_rounds` more aim for
`tight`), the bracket leaves no new plan, or `max_rounds` pass. `choose` then names the best
candidate and `outcome` says whether the budget was met, and why not.

    searcher = Searcher(problem, spec, trace=calibration_candidates)
    while (proposal := searcher.propose()) is not None:
        searcher.tell(measure(proposal))
    best = searcher.choose(searcher.trace)

engine/search/run.py drives it on a real model; tests/engine/search/test_searcher.py drives it
on a cost table with no runtime at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from secateurs.engine.events import Event, EventSink, ignore_events
from secateurs.engine.search.refine import refine
from secateurs.engine.search.solver import Option, most_saving, solve
from secateurs.engine.search.types import Candidate, Entries, Proposal, SearchPlan, is_block_entry
from secateurs.engine.spec import SearchSpec

Fits = Callable[[Entries], bool]


@dataclass(frozen=True, kw_only=True)
class SearchProblem:
    """Everything the searcher chooses by."""

    whole: Entries  # the unpruned plan: every group at its full width, every block kept (1)
    choices: dict[str, list[int]]  # the entries the searcher chooses a width for, widest first
    entry_loss: Callable[[str, int], float]  # an entry's quality loss at a width, that entry alone
    predict: Callable[[Entries], dict[str, float]]  # predicted "latency_ms", "params", "macs", "size_bytes"
    plan_loss: Callable[[Entries], float]  # the measured quality loss of the whole plan
    ceilings: dict[str, float]  # each budget as a ceiling on a predicted quantity
    # groups whose width no longer matters in a plan (all their layers are in dropped blocks), at full width
    inside_dropped: Callable[[Entries], Entries] = lambda entries: {}
    # the least-pruned uniform plan of the channel groups that fits, or None
    uniform_start: Callable[[Fits], Entries | None] = lambda fits: None
    quality_before: dict[str, Any] = field(default_factory=dict)  # the unpruned model's, for an accuracy limit
    # whether a measured candidate's latency is read by its interleaved ratio (a speedup budget)
    as_ceiling: Callable[[Candidate, str], float] = lambda c, name: c.measured[name]
    # the least `predict` can read for a quantity (its clamp): an aim below it is infeasible
    lowest: dict[str, float] = field(default_factory=dict)


class Searcher:
    """Proposes plans for `problem` under the ceilings of `spec`; told what each one measured."""

    def __init__(self, problem: SearchProblem, spec: SearchSpec, *, trace: list[Candidate] | None = None,
                 on_event: EventSink = ignore_events) -> None:
        self.problem, self.spec, self.on_event = problem, spec, on_event
        self.trace: list[Candidate] = list(trace or [])  # every candidate measured, calibration points too
        self.reason = ""
        self.aims = {n: c * spec.aim for n, c in problem.ceilings.items()}
        # Bracket of aims: an aim that gave a too-slow plan is an upper bound, one that gave a plan
        # wasting the budget a lower bound; once both exist the next aim is bisected between them,
        # which cannot oscillate the way a pure measured/predicted rescaling can.
        self.too_slow: dict[str, float] = {}
        self.too_fast: dict[str, float] = {}
        self.tightening = 0  # rounds spent after a plan within `precision` was found
        self.round = 0
        self.done = False
        self._parent: int | None = None
        self._asked: tuple[Proposal, dict[str, float]] | None = None  # the proposal awaiting tell(), its aims

    # ask / tell

    def propose(self) -> Proposal | None:
        """The next plan to measure, or None when the search is over."""
        spec = self.spec
        rounds = spec.max_rounds + spec.tighten_rounds
        if self.done or self.round >= rounds or (self.round >= spec.max_rounds and not self.tightening):
            self.done = True
            return None
        fraction = self.round / rounds
        self.round += 1
        self._progress(fraction, f"verification round {self.round}")
        plan, feasible, steps = self._plan_for(fraction)
        for _ in range(6):
            seen = self._seen(plan)
            if seen is None:
                break
            # The same plan again: what it measured bounds this aim too, so the bracket
            # narrows and the next aim moves on (plans come in steps: a block is a big one).
            for n in self.aims:
                if seen.shortfall > 0:
                    self.too_slow[n] = min(self.too_slow.get(n, float("inf")), self.aims[n])
                elif seen.slack > (spec.tight if self.tightening else spec.precision):
                    self.too_fast[n] = max(self.too_fast.get(n, 0.0), self.aims[n])
            if not _bisect(self.aims, self.too_slow, self.too_fast):
                break  # no aim left between the bounds
            plan, feasible, steps = self._plan_for(fraction)
        if self._seen(plan) is not None:
            self.done = True  # no aim left between the bounds gives a new plan
            return None
        proposal = Proposal(plan=SearchPlan.from_entries(plan), predicted=self.problem.predict(plan),
                            stage="search" if feasible else "infeasible-check", parent=self._parent,
                            refinement=steps)
        self._asked = (proposal, dict(self.aims))
        return proposal

    def tell(self, candidate: Candidate) -> None:
        """What the last proposal measured; the aims move for the next one."""
        if self._asked is None:
            raise RuntimeError("tell() without a proposal")
        proposal, used = self._asked
        feasible = proposal.stage == "search"
        self._asked = None
        spec = self.spec
        self.trace.append(candidate)
        self._parent = candidate.id
        if not feasible and candidate.shortfall > 0:
            self.reason = ("every prunable group is at its floor (min_channels, or the widest step that still "
                           "saves)" + (" and every removable block is dropped" if self._has_blocks() else "")
                           + "; what remains is in layers that cannot be pruned and per-operator overhead")
            self.done = True
            return
        in_band = any(c.shortfall == 0 and c.slack <= spec.precision for c in self.trace if c.stage == "search")
        if in_band:
            if (candidate.shortfall == 0 and candidate.slack <= spec.tight) or self.tightening >= spec.tighten_rounds:
                self.done = True
                return
            self.tightening += 1
        for n in self.aims:
            if candidate.shortfall > 0:
                self.too_slow[n] = min(self.too_slow.get(n, float("inf")), used[n])
            else:
                self.too_fast[n] = max(self.too_fast.get(n, 0.0), used[n])
            # rescale by measured/predicted so the next prediction lands where we want...
            if n in candidate.measured and candidate.predicted.get(n, 0) > 0:
                wanted = self.problem.ceilings[n] * (1 - (spec.tight if in_band else spec.precision) / 2)
                self.aims[n] = candidate.predicted[n] * wanted / self.problem.as_ceiling(candidate, n)
        # ...unless that leaves the bracket the measurements have established
        if any(not self.too_fast.get(n, 0.0) < self.aims[n] < self.too_slow.get(n, float("inf")) for n in self.aims):
            _bisect(self.aims, self.too_slow, self.too_fast)

    # the choice

    def choose(self, trace: list[Candidate]) -> Candidate:
        """The best of `trace`: within the budget and the accuracy limit and within `precision` of the
        budget, least quality loss; else within them, least loss; else within the budget alone, least
        loss (the accuracy limit cannot be met there); else the smallest miss."""
        within = self.within_floor
        trace = [c for c in trace if c.stage in ("search", "infeasible-check")] or [
            c for c in trace if c.stage == "calibration"]  # the solver proposed only plans already measured
        met = [c for c in trace if c.shortfall == 0 and within(c)]
        in_band = [c for c in met if c.slack <= self.spec.precision]
        fast = [c for c in trace if c.shortfall == 0]
        if in_band or met or fast:
            return min(in_band or met or fast, key=lambda c: c.quality["loss"])
        return min(trace, key=lambda c: c.shortfall)

    def within_floor(self, c: Candidate) -> bool:
        """Whether a candidate's own quality is within spec.max_accuracy_drop of the original's
        (accuracy with labels, else top-1 agreement), on the calibration images."""
        limit, before = self.spec.max_accuracy_drop, self.problem.quality_before
        if limit is None:
            return True
        if before.get("accuracy") is not None and c.quality.get("accuracy") is not None:
            return before["accuracy"] - c.quality["accuracy"] <= limit
        return 1.0 - c.quality["agreement"] <= limit

    def outcome(self, best: Candidate) -> tuple[bool, str]:
        """Whether `best` meets every limit, and the reason when it does not or wastes the budget."""
        spec = self.spec
        met = best.shortfall == 0 and self.within_floor(best)
        if best.shortfall == 0 and not met:
            return False, (f"no plan measured within the budget kept its accuracy drop within "
                           f"{spec.max_accuracy_drop:.2%} (on the calibration images); the least-harmed plan "
                           f"within the budget is returned")
        if not met:
            return False, self.reason or (f"no plan within {spec.max_rounds} verification rounds met every "
                                          f"budget; closest misses by {best.shortfall:.1%}")
        if best.slack > spec.precision:
            missed = [c for c in self.trace if c.stage == "search" and c.shortfall > 0]
            return True, (f"budget met with {best.slack:.0%} to spare: "
                          + ("the closest less-pruned plan measured missed it by "
                             f"{min(c.shortfall for c in missed):.1%}" if missed else
                             f"no plan closer to the budget was found in {len(self.trace)} verification rounds"))
        return True, ""  # met within precision: a floor reached by a later plan does not explain this one

    # solving

    def _plan_for(self, fraction: float) -> tuple[Entries, bool, list[dict[str, Any]]]:
        plan, feasible = self._solve_for(self.aims, self.problem.choices)
        if not feasible:
            return plan, feasible, []
        plan, steps = self._refined(plan, fraction)
        return plan, feasible, steps

    def _solve_for(self, aims: Mapping[str, float], entries: Mapping[str, list[int]]) -> tuple[Entries, bool]:
        whole = self.problem.whole
        plan = dict(whole)
        feasible = True
        # The linearised savings of many entries can add up past what any plan is predicted to reach
        # (the prediction is clamped there); such an aim is infeasible, and the answer the most-saving plan.
        beyond = any(aims[n] < self.problem.lowest.get(n, float("-inf")) for n in aims)
        for _ in range(3):  # re-linearise around the previous answer: widths interact in each layer
            table, required = self._options(plan, aims, entries)
            solution = most_saving(table, len(required)) if beyond else solve(table, required)
            new = dict(whole, **{n: o.width for n, o in solution.choice.items()})
            new.update(self.problem.inside_dropped(new))
            feasible = solution.feasible
            if new == plan:
                break
            plan = new
        return plan, feasible

    def _options(self, reference: Entries, aims: Mapping[str, float],
                 entries: Mapping[str, list[int]]) -> tuple[dict[str, list[Option]], list[float]]:
        """Savings of each option, linearised around `reference` (other entries at their reference
        widths), and the saving each aim requires:

            predicted(plan) ~= C - sum_g saving_g(w_g),
            C = predicted(ref) + sum_g [predicted(ref, g whole) - predicted(ref)]
        """
        predict, whole = self.problem.predict, self.problem.whole
        names = list(aims)
        at_ref = predict(reference)
        constant = dict(at_ref)
        table: dict[str, list[Option]] = {}
        for entry, entry_widths in entries.items():
            at_whole = predict(dict(reference, **{entry: whole[entry]}))
            for n in names:
                constant[n] += at_whole[n] - at_ref[n]
            opts = []
            for w in entry_widths:
                pred = at_ref if w == reference[entry] else predict(dict(reference, **{entry: w}))
                opts.append(Option(width=w, loss=self.problem.entry_loss(entry, w),
                                   savings=tuple(at_whole[n] - pred[n] for n in names)))
            table[entry] = _pareto(opts)
        return table, [constant[n] - aims[n] for n in names]

    def _refined(self, plan: Entries, fraction: float) -> tuple[Entries, list[dict[str, Any]]]:
        """The solver's plan, or a better one of no greater predicted cost (engine/search/refine.py)."""
        problem, spec, choices = self.problem, self.spec, self.problem.choices
        if spec.refine_evaluations <= 0 or not choices:
            return plan, []
        at_plan = problem.predict(plan)
        limits = {n: max(self.aims[n], at_plan[n]) for n in self.aims}

        def fits(p: Entries) -> bool:
            pred = problem.predict(p)
            return all(pred[n] <= limits[n] + 1e-12 for n in limits)

        starts = [plan]
        uniform = problem.uniform_start(lambda p: fits(dict(problem.whole, **p)))
        if uniform is not None:
            starts.append(dict(problem.whole, **uniform))
        channels = {e: w for e, w in choices.items() if not is_block_entry(e)}
        blocks = {e: w for e, w in choices.items() if is_block_entry(e)}
        if channels and blocks:
            # The best plan of each kind alone is a start too: the additive losses can favour a
            # mix that, measured whole, is worse than dropping blocks (or narrowing) alone.
            for kind in (channels, blocks):
                alone, alone_feasible = self._solve_for(self.aims, kind)
                if alone_feasible and fits(alone):
                    starts.append(alone)
        starts = [p for i, p in enumerate(starts) if p not in starts[:i]]
        later = any(c.stage == "search" for c in self.trace)  # later rounds search nearer: fewer evaluations
        best, steps = refine(
            starts, choices, fits=fits, loss=problem.plan_loss, additive=problem.entry_loss,
            max_evaluations=spec.refine_evaluations // 4 if later else spec.refine_evaluations,
            on_event=lambda event: self._progress(fraction, event.message))
        return best, [s.to_dict() for s in steps]

    def _seen(self, plan: Entries) -> Candidate | None:
        typed = SearchPlan.from_entries(plan)
        return next((c for c in self.trace if c.plan == typed), None)

    def _has_blocks(self) -> bool:
        return any(is_block_entry(e) for e in self.problem.choices)

    def _progress(self, fraction: float, message: str) -> None:
        self.on_event(Event(stage="search", kind="progress", progress=fraction, message=message))


def _bisect(aims: dict[str, float], too_slow: dict[str, float], too_fast: dict[str, float]) -> bool:
    """Move each bracketed aim to the middle of its bracket; False when no aim is bracketed."""
    moved = False
    for n in aims:
        if n in too_slow and n in too_fast and too_fast[n] < too_slow[n]:
            aims[n] = (too_slow[n] + too_fast[n]) / 2
            moved = True
        elif n in too_slow and aims[n] >= too_slow[n]:
            aims[n] = too_slow[n] * 0.97
            moved = True
        elif n in too_fast and aims[n] <= too_fast[n]:
            aims[n] = too_fast[n] * 1.03
            moved = True
    return moved


def _pareto(options: list[Option]) -> list[Option]:
    """Drop options that save no more on the first axis than a wider one: the solver then only
    considers the widths where measured latency actually steps down."""
    kept: list[Option] = []
    best_saving = float("-inf")
    for option in sorted(options, key=lambda o: -o.width):
        if not kept or option.savings[0] > best_saving + 1e-12 or len(option.savings) > 1:
            kept.append(option)
            best_saving = max(best_saving, option.savings[0])
    return kept
