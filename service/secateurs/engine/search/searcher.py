"""Latency-budget search: per-group widths chosen from measured latency, verified end to end.

    analyse   groups, the layers each one widens or narrows, and the layer shapes
    measure   the baseline end to end; every layer alone over a grid of widths (cached)
    score     each group's quality loss at each width (cached)
    solve     multiple-choice knapsack over groups (engine/search/solver.py)
    refine    local search on the quality of the whole plan, measured (engine/search/refine.py)
    blocks    with depth pruning, every removable residual block (engine/prune/blocks.py) is one
              more entry of the plan, kept or dropped: its saving is its layers' latency
              scaled by one end-to-end point per stage of alike blocks, its loss the
              quality lost without it; the solver and the refinement trade blocks and
              channels under the same budget
    verify    prune, export, measure interleaved with the baseline; if the plan misses
              the budget or wastes it, rescale the aim by measured/predicted and solve
              again, a bounded number of rounds

Every candidate measured is a row of the trace (id, parent, stage, widths, predicted,
measured, quality, start, end), from which the report is rendered. A budget that
cannot be met ends with budget_met=False, the best reachable point and the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from secateurs.engine.prune.blocks import BlockInfo, block_key, dropped_in, find_blocks
from secateurs.engine.budget import Budget, Measurement, latency_ceiling
from secateurs.engine.events import CancelCheck, check_cancel
from secateurs.engine.prune.groups import GroupInfo, describe_groups, prepare
from secateurs.engine.prune.importance import accumulate_gradients
from secateurs.engine.latency.cache import MeasurementCache
from secateurs.engine.search.costmodel import GroupLayers
from secateurs.engine.latency.layers import LayerLatencyModel, collect_layers
from secateurs.engine.latency.target import LatencyTarget, open_target
from secateurs.engine.prune.apply import kept_count
from secateurs.engine.search.refine import JointQuality, refine
from secateurs.engine.search.sensitivity import (Calibration, Quality, block_importance, group_widths, measure_quality,
                                          channels_last, model_identity, quality_at, reference_outputs,
                                          sensitivity)
from secateurs.engine.size import count_macs, count_params, file_bytes
from secateurs.engine.search.solver import Option, solve
from secateurs.engine.spec import SearchSpec
from secateurs.engine.search.verify import Candidate, MeasuringTarget, Verifier, measurement, steering_protocol

RATIO_GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    widths: dict[str, int]
    ratios: dict[str, float]
    model: nn.Module
    budget_met: bool
    reason: str
    baseline: Measurement
    final: Measurement
    quality_before: dict[str, Any]
    quality_after: dict[str, Any]
    trace: list[Candidate]
    uniform: dict[str, Any] | None
    latency_model: dict[str, Any]
    groups: list[dict[str, Any]]
    cache: dict[str, int]
    dropped: list[str] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    chosen: int = 0  # the trace id of the candidate returned


def search(model: nn.Module, example: torch.Tensor, baseline_onnx: Path, spec: SearchSpec, calib: Calibration,
           *, latency_target: LatencyTarget | None = None,
           on_progress: Callable[[float, str, dict], None] | None = None,
           cancel: CancelCheck | None = None) -> SearchResult:
    """Find per-group widths meeting `spec.budget` with the least predicted quality loss.

    latency_target: where every latency figure is measured (engine/latency/target.py);
    None: opened from spec.target for this search."""
    def progress(fraction: float, message: str, **data: Any) -> None:
        check_cancel(cancel)
        if on_progress:
            on_progress(fraction, message, data)

    owned = latency_target is None
    latency_target = latency_target or open_target(spec.target, seed=spec.seed)
    cache = MeasurementCache(Path(spec.cache_dir) / "measurements.sqlite" if spec.cache_dir else None)
    shape = tuple(example.shape)
    target = MeasuringTarget(spec, shape, cache, latency_target)
    q = spec.budget.percentile
    try:
        # analyse
        ctx = prepare(copy.deepcopy(model), example, criterion=spec.importance)
        channels_last(ctx.model)  # the analysis copy: what sensitivity and refinement evaluate, faster so
        if spec.importance == "taylor":  # the criterion's gradients, from the job's calibration batches
            accumulate_gradients(ctx.model, calib.inputs, model)
        groups = [g for g in describe_groups(ctx, example, min_channels=spec.min_channels) if g.prunable]
        layers = collect_layers(ctx.model, example)
        members = GroupLayers(ctx, groups, layers)
        full = {g.name: g.channels for g in groups}
        blocks = find_blocks(model, example) if spec.depth != "off" else []
        block_layers = {b.name: [n for n in layers if n.startswith(b.name + ".")] for b in blocks}
        channel_groups = groups if spec.depth != "only" else []
        whole = dict(full, **{block_key(b.name): 1 for b in blocks})  # the unpruned plan

        # baseline, end to end
        model_id = model_identity(model, spec.arch, shape)
        target.model_id = model_id
        progress(0.02, "measuring the baseline")
        base_backend = target.backend(baseline_onnx, module=model)
        target.baseline_source = (baseline_onnx, model)
        # it steers (the aims), so it may be an earlier job's; the decisive figure has a fresh baseline of its own
        base_key = target.key("baseline")
        base_ms = cache.get(base_key, kind="e2e")
        if base_ms is None:
            base_ms = target.measure([base_backend], steering_protocol(spec.protocol), cancel)[0].percentile(q)
            cache.put(base_key, "e2e", base_ms)
        baseline = Measurement(latency_ms=base_ms, speedup=1.0,
                               size_bytes=file_bytes(baseline_onnx), params=count_params(model),
                               macs=count_macs(model, example))
        ceilings = _ceilings(spec.budget, baseline)
        reference = reference_outputs(model, calib)
        quality_before = measure_quality(model, calib, reference).to_dict()

        # latency of every layer alone over a grid of widths
        latency_model = None
        if "latency_ms" in ceilings:
            progress(0.05, "measuring layers in isolation")
            latency_model = LayerLatencyModel(
                layers, target.layer_ms, round_to=spec.round_to,
                on_progress=lambda d, t: progress(0.05 + 0.3 * d / max(t, 1), f"layer latency {d}/{t}"))

        # quality loss of each group at each width, and of each block dropped
        widths = {g.name: group_widths(g, RATIO_GRID, round_to=spec.round_to, min_channels=spec.min_channels)
                  for g in groups}
        scores: dict[str, dict[int, Quality]] = sensitivity(
            ctx, channel_groups, widths, calib, cache=cache, model_id=model_id,
            on_progress=lambda d, t: progress(0.35 + 0.3 * d / max(t, 1), f"sensitivity {d}/{t}"))
        if blocks:
            progress(0.62, f"importance of {len(blocks)} removable blocks")
            kept = Quality(loss=0.0, agreement=1.0, kl=0.0, accuracy=quality_before.get("accuracy"))
            for name, dropped_quality in block_importance(model, blocks, calib, cache=cache,
                                                          model_id=model_id).items():
                scores[block_key(name)] = {1: kept, 0: dropped_quality}
        # the entries the solver chooses a width for; the other groups stay whole
        choices = {g.name: widths[g.name] for g in channel_groups} | {block_key(b.name): [1, 0] for b in blocks}

        trace: list[Candidate] = []
        scale = 1.0
        block_scale: dict[str, float] = {}  # block name -> end-to-end saving over its layers' isolated time
        joint = JointQuality(ctx, groups, calib, reference, cache=cache, model_id=model_id)
        verifier = Verifier(model, example, spec, target, calib, reference, joint, cancel)

        def calibration_point(plan: dict[str, int], isolated: float) -> float:
            """Measured change over isolated-layer change for one plan, measured end to end."""
            candidate = verifier.candidate(plan, {}, parent=None, index=len(trace), stage="calibration")
            measured = baseline.latency_ms / candidate.measured["speedup"] - baseline.latency_ms
            ratio = min(5.0, max(0.05, measured / isolated)) if isolated < 0 and measured < 0 else 1.0
            candidate.predicted = {"latency_ms": baseline.latency_ms + ratio * isolated}
            trace.append(candidate)
            return ratio

        if latency_model is not None and channel_groups:
            # One end-to-end point turns the isolated-layer sum into the model's latency: the
            # uniform plan at ratio 0.5, measured interleaved with the baseline.
            progress(0.35, "calibrating the layer model end to end")
            probe = _uniform_plan(channel_groups, 0.5, spec)
            scale = calibration_point(dict(whole, **probe), latency_model.delta(members.layer_widths(probe)))
        if latency_model is not None and blocks:
            # A dropped block also saves what its layers alone do not show (adds, activations,
            # per-operator overhead), and that part weighs differently at each resolution and
            # width: one end-to-end point per family of alike blocks (a stage), all of it dropped.
            families = _families(blocks, lambda b: sum(latency_model.full[n] for n in block_layers[b.name]))
            for i, family in enumerate(families):
                progress(0.36, f"calibrating block removal end to end ({i + 1}/{len(families)})")
                probe = dict(whole, **{block_key(b.name): 0 for b in family})
                ratio = calibration_point(probe, -sum(latency_model.full[n] for b in family
                                                      for n in block_layers[b.name]))
                block_scale.update({b.name: ratio for b in family})

        def block_saving(name: str) -> float:
            """Predicted milliseconds saved by dropping block `name` alone."""
            return block_scale.get(name, 1.0) * sum(latency_model.full[n] for n in block_layers[name])

        base_params, base_macs = members.params_macs(full)

        predicted: dict[tuple, dict[str, float]] = {}

        def predict(plan: dict[str, int]) -> dict[str, float]:
            # the solver and the refinement ask for the same plans thousands of times
            key = tuple(sorted(plan.items()))
            if key not in predicted:
                predicted[key] = _predicted(plan)
            return dict(predicted[key])

        def _predicted(plan: dict[str, int]) -> dict[str, float]:
            channels = {n: plan.get(n, w) for n, w in full.items()}
            removed = {n for b in dropped_in(plan) for n in block_layers[b]}
            params, macs = members.params_macs(channels, removed=removed)
            out = {"params": baseline.params + params - base_params, "macs": baseline.macs + macs - base_macs}
            out["size_bytes"] = baseline.size_bytes + 4 * (params - base_params)
            if latency_model is not None:
                kept_layers = {n: w for n, w in members.layer_widths(channels).items() if n not in removed}
                # Extrapolated far (every block dropped, every group at its floor) the linear model
                # can promise any speedup; no plan here removes 95% of the latency.
                out["latency_ms"] = max(0.05 * baseline.latency_ms,
                                        baseline.latency_ms + scale * latency_model.delta(kept_layers)
                                        - sum(block_saving(b) for b in dropped_in(plan)))
            return out

        def _inside_dropped(plan: dict[str, int]) -> dict[str, int]:
            """Groups whose every layer is in a dropped block, back at full width: their width no
            longer matters, and pruning them would be counted twice."""
            removed = {n for b in dropped_in(plan) for n in block_layers[b]}
            return {g: full[g] for g, m in members.members.items()
                    if removed and g in full and m and all(layer in removed for layer, _, _ in m)}

        def options(reference: dict[str, int], aims: dict[str, float],
                    entries: dict[str, list[int]]) -> tuple[dict, list[float]]:
            """Savings of each option, linearised around `reference` (other groups at their
            reference widths), and the saving each aim requires:

                predicted(plan) ~= C - sum_g saving_g(w_g),
                C = predicted(ref) + sum_g [predicted(ref, g whole) - predicted(ref)]
            """
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
                    opts.append(Option(width=w, loss=max(scores[entry][w].loss, 0.0),
                                       savings=tuple(at_whole[n] - pred[n] for n in names)))
                table[entry] = _pareto(opts)
            return table, [constant[n] - aims[n] for n in names]

        def solve_for(aims: dict[str, float], entries: dict[str, list[int]] = choices) -> tuple[dict[str, int], bool]:
            plan = dict(whole)
            feasible = True
            for _ in range(3):  # re-linearise around the previous answer: widths interact in each layer
                table, required = options(plan, aims, entries)
                solution = solve(table, required)
                new = dict(whole, **{n: o.width for n, o in solution.choice.items()})
                new.update(_inside_dropped(new))
                feasible = solution.feasible
                if new == plan:
                    break
                plan = new
            return plan, feasible


        def refined(plan: dict[str, int], aims: dict[str, float], fraction: float) -> tuple[dict[str, int], list]:
            """The solver's plan, or a better one of no greater predicted cost (engine/search/refine.py)."""
            if spec.refine_evaluations <= 0 or not choices:
                return plan, []
            at_plan = predict(plan)
            limits = {n: max(aims[n], at_plan[n]) for n in aims}

            def fits(p: dict[str, int]) -> bool:
                pred = predict(p)
                return all(pred[n] <= limits[n] + 1e-12 for n in limits)

            starts = [plan]
            uniform = _uniform_fitting(channel_groups, spec, lambda p: fits(dict(whole, **p)))
            if uniform is not None:
                starts.append(dict(whole, **uniform))
            if blocks and channel_groups:
                # The best plan of each kind alone is a start too: the additive losses can favour a
                # mix that, measured whole, is worse than dropping blocks (or narrowing) alone.
                for kind in ({g.name: choices[g.name] for g in channel_groups},
                             {k: w for k, w in choices.items() if k not in full}):
                    alone, alone_feasible = solve_for(aims, kind)
                    if alone_feasible and fits(alone):
                        starts.append(alone)
            starts = [p for i, p in enumerate(starts) if p not in starts[:i]]
            best, steps = refine(
                starts, choices, fits=fits, loss=lambda p: joint(p).loss,
                additive=lambda g, w: _loss_at(scores[g], w), max_evaluations=spec.refine_evaluations if not
                any(c.stage == "search" for c in trace) else spec.refine_evaluations // 4,  # later rounds: nearer
                on_progress=lambda d, t: progress(fraction, f"refining the plan {d}/{t}"))
            return best, [s.to_dict() for s in steps]

        def plan_for(aims: dict[str, float], fraction: float) -> tuple[dict[str, int], bool, list]:
            plan, feasible = solve_for(aims)
            if not feasible:
                return plan, feasible, []
            plan, steps = refined(plan, aims, fraction)
            return plan, feasible, steps

        aims = {n: c * spec.aim for n, c in ceilings.items()}
        parent = None
        reason = ""
        # Bracket of aims: an aim that gave a too-slow plan is an upper bound, one that gave a plan
        # wasting the budget a lower bound; once both exist the next aim is bisected between them,
        # which cannot oscillate the way a pure measured/predicted rescaling can.
        too_slow: dict[str, float] = {}
        too_fast: dict[str, float] = {}
        tightening = 0  # rounds spent after a plan within `precision` was found
        rounds = spec.max_rounds + spec.tighten_rounds
        for round_ in range(rounds):
            if round_ >= spec.max_rounds and not tightening:
                break
            fraction = 0.65 + 0.3 * round_ / rounds
            progress(fraction, f"verification round {round_ + 1}")
            plan, feasible, steps = plan_for(aims, fraction)
            for _ in range(6):
                seen = next((c for c in trace if c.widths == plan), None)
                if seen is None:
                    break
                # The same plan again: what it measured bounds this aim too, so the bracket
                # narrows and the next aim moves on (plans come in steps: a block is a big one).
                for n in aims:
                    if seen.shortfall > 0:
                        too_slow[n] = min(too_slow.get(n, float("inf")), aims[n])
                    elif seen.slack > (spec.tight if tightening else spec.precision):
                        too_fast[n] = max(too_fast.get(n, 0.0), aims[n])
                if not _bisect(aims, too_slow, too_fast):
                    break  # no aim left between the bounds
                plan, feasible, steps = plan_for(aims, fraction)
            if any(c.widths == plan for c in trace):
                break  # no aim left between the bounds gives a new plan
            used = dict(aims)
            candidate = verifier.candidate(plan, predict(plan), parent=parent, index=len(trace),
                                           stage="search" if feasible else "infeasible-check")
            candidate.refinement = steps
            trace.append(candidate)
            parent = candidate.id
            if not feasible and candidate.shortfall > 0:
                reason = ("every prunable group is at its floor (min_channels, or the widest step that still "
                          "saves)" + (" and every removable block is dropped" if blocks else "")
                          + "; what remains is in layers that cannot be pruned and per-operator overhead")
                break
            in_band = any(c.shortfall == 0 and c.slack <= spec.precision for c in trace if c.stage == "search")
            if in_band:
                if (candidate.shortfall == 0 and candidate.slack <= spec.tight) or tightening >= spec.tighten_rounds:
                    break
                tightening += 1
            for n in aims:
                if candidate.shortfall > 0:
                    too_slow[n] = min(too_slow.get(n, float("inf")), used[n])
                else:
                    too_fast[n] = max(too_fast.get(n, 0.0), used[n])
                # rescale by measured/predicted so the next prediction lands where we want...
                if n in candidate.measured and candidate.predicted.get(n, 0) > 0:
                    wanted = ceilings[n] * (1 - (spec.tight if in_band else spec.precision) / 2)
                    aims[n] = candidate.predicted[n] * wanted / _as_ceiling_quantity(candidate, n, spec.budget,
                                                                                    baseline)
            # ...unless that leaves the bracket the measurements have established
            if any(not too_fast.get(n, 0.0) < aims[n] < too_slow.get(n, float("inf")) for n in aims):
                _bisect(aims, too_slow, too_fast)
        within = _floor(spec, quality_before)
        best = verifier.decide(trace, lambda t: _choose(t, spec.precision, within))
        best_model = verifier.models[best.id]
        met = best.shortfall == 0 and within(best)
        if best.shortfall == 0 and not within(best):
            reason = (f"no plan measured within the budget kept its accuracy drop within {spec.max_accuracy_drop:.2%} "
                      f"(on the calibration images); the least-harmed plan within the budget is returned")
        elif not met and not reason:
            reason = (f"no plan within {spec.max_rounds} verification rounds met every budget; closest misses by "
                      f"{best.shortfall:.1%}")
        elif met and best.slack > spec.precision:
            missed = [c for c in trace if c.stage == "search" and c.shortfall > 0]
            reason = (f"budget met with {best.slack:.0%} to spare: "
                      + ("the closest less-pruned plan measured missed it by "
                         f"{min(c.shortfall for c in missed):.1%}" if missed else
                         f"no plan closer to the budget was found in {len(trace)} verification rounds"))

        final = measurement(best.measured)
        uniform = _uniform_comparison(verifier, best, channel_groups, baseline, predict, len(trace))
        if uniform is not None:
            trace.append(uniform)
        def error(c: Candidate) -> float:  # against the interleaved ratio, robust to drift between runs
            measured = baseline.latency_ms / c.measured["speedup"]
            return abs(c.predicted["latency_ms"] - measured) / measured

        errors = [error(c) for c in trace if "latency_ms" in c.predicted and c.stage != "calibration"]
        latency_summary = {
            "kind": "isolated layers, rank-1 width interaction, scaled by end-to-end calibration points (one for "
                    "channels, one per family of alike blocks)",
            "scale": scale,
            "block_scales": block_scale,
            "layers": len(layers), "prediction_errors": errors,
            "mean_abs_error": sum(errors) / len(errors) if errors else None,
            "steps": _steps(latency_model, members, groups, widths, scale) if latency_model else {},
        }
        group_rows = [{"name": g.name, "unit": g.unit, "channels": g.channels, "chosen": best.widths[g.name],
                       "ratio": 1 - best.widths[g.name] / g.channels,
                       "sensitivity": {str(w): scores[g.name][w].loss for w in widths[g.name] if g.name in scores}}
                      for g in groups]
        dropped = dropped_in(best.widths)
        block_rows = [_block_row(b, b.name in dropped, scores[block_key(b.name)][0],
                                 block_saving(b.name) / baseline.latency_ms if latency_model else None)
                      for b in blocks]
        return SearchResult(
            widths=best.widths, ratios={n: 1 - best.widths[n] / c for n, c in full.items()}, model=best_model,
            dropped=dropped, blocks=block_rows, chosen=best.id,
            budget_met=met, reason=reason, baseline=baseline, final=final, quality_before=quality_before,
            quality_after=best.quality, trace=trace, uniform=uniform.to_dict() if uniform else None,
            latency_model=latency_summary, groups=group_rows, cache=cache.counts())
    finally:
        cache.close()
        if owned:
            latency_target.close()


def _block_row(block: BlockInfo, dropped: bool, without: Quality, latency_share: float | None) -> dict[str, Any]:
    """A removable block in the report: whether the plan drops it, the quality lost without it
    alone, and its share of the baseline latency (its layers measured in isolation, scaled by the
    end-to-end measurement of dropping its whole stage of alike blocks)."""
    return {**block.to_dict(), "dropped": dropped, "loss": without.loss, "accuracy_without": without.accuracy,
            "latency_share": latency_share}


def _families(blocks: list[BlockInfo], isolated_ms: Callable[[BlockInfo], float],
              most: int = 2) -> list[list[BlockInfo]]:
    """Blocks grouped by kind, shape and size (a stage of alike blocks), most latency first; past
    `most` families the rest share one calibration point, so a model of many unlike blocks
    costs a bounded number of end-to-end measurements."""
    by_family: dict[tuple, list[BlockInfo]] = {}
    for b in blocks:
        by_family.setdefault((b.kind, b.shape, b.params), []).append(b)
    families = sorted(by_family.values(), key=lambda f: -sum(isolated_ms(b) for b in f))
    if len(families) > most:
        families = families[:most - 1] + [[b for f in families[most - 1:] for b in f]]
    return families


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


def _choose(trace: list[Candidate], precision: float,
            within: Callable[[Candidate], bool] = lambda c: True) -> Candidate:
    """Best candidate: within the budget (and the accuracy limit) and within `precision` of it,
    least quality loss; else within them, least loss; else within the budget alone, least loss
    (the accuracy limit cannot be met there); else the smallest miss."""
    trace = [c for c in trace if c.stage in ("search", "infeasible-check")] or [
        c for c in trace if c.stage == "calibration"]  # the solver proposed only plans already measured
    met = [c for c in trace if c.shortfall == 0 and within(c)]
    in_band = [c for c in met if c.slack <= precision]
    fast = [c for c in trace if c.shortfall == 0]
    if in_band or met or fast:
        return min(in_band or met or fast, key=lambda c: c.quality["loss"])
    return min(trace, key=lambda c: c.shortfall)


def _floor(spec: SearchSpec, before: dict[str, Any]) -> Callable[[Candidate], bool]:
    """Whether a candidate's own quality is within spec.max_accuracy_drop of the original's
    (accuracy with labels, else top-1 agreement), on the calibration images."""
    if spec.max_accuracy_drop is None:
        return lambda c: True

    def within(c: Candidate) -> bool:
        if before.get("accuracy") is not None and c.quality.get("accuracy") is not None:
            return before["accuracy"] - c.quality["accuracy"] <= spec.max_accuracy_drop
        return 1.0 - c.quality["agreement"] <= spec.max_accuracy_drop

    return within


def _ceilings(budget: Budget, baseline: Measurement) -> dict[str, float]:
    """Each budget as a ceiling on a predicted quantity (a speedup becomes milliseconds)."""
    out: dict[str, float] = {}
    latency = latency_ceiling(budget, baseline.latency_ms)
    if latency is not None:
        out["latency_ms"] = latency
    for name in ("size_bytes", "params", "macs"):
        if getattr(budget, name) is not None:
            out[name] = float(getattr(budget, name))
    return out


def _as_ceiling_quantity(candidate: Candidate, name: str, budget: Budget, baseline: Measurement) -> float:
    """The measured value to compare with a ceiling; for a speedup budget, the interleaved ratio
    expressed in baseline milliseconds (robust to drift between measurements)."""
    if name == "latency_ms" and budget.speedup is not None:
        by_ratio = baseline.latency_ms / candidate.measured["speedup"]
        return max(by_ratio, candidate.measured["latency_ms"]) if budget.latency_ms is not None else by_ratio
    return candidate.measured[name]


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


def _steps(model: LayerLatencyModel, members: GroupLayers, groups: list[GroupInfo],
           widths: dict[str, list[int]], scale: float) -> dict[str, list[list[float]]]:
    """Per group: [width, predicted saving in ms] over its grid (where the staircase steps)."""
    full = {g.name: g.channels for g in groups}
    out = {}
    for g in groups:
        out[g.name] = [[w, -scale * model.delta(members.layer_widths(dict(full, **{g.name: w})))]
                       for w in widths[g.name]]
    return out


def _uniform_plan(groups: list[GroupInfo], ratio: float, spec: SearchSpec) -> dict[str, int]:
    return {g.name: (kept_count(g.channels, ratio, round_to=spec.round_to, min_channels=spec.min_channels,
                                step=g.step)
                     if g.unit == "channels" else max(1, round(g.channels * (1 - ratio)))) for g in groups}


def _loss_at(known: dict[int, Any], width: int) -> float:
    """A group's one-group loss at `width` (a uniform plan's widths can fall between those measured)."""
    return max(quality_at(known, width).loss, 0.0)


def _uniform_fitting(groups: list[GroupInfo], spec: SearchSpec,
                     fits: Callable[[dict[str, int]], bool]) -> dict[str, int] | None:
    """The least-pruned uniform plan that `fits` accepts, or None."""
    ratio = _least_uniform_ratio(groups, spec, fits)
    return None if ratio is None else _uniform_plan(groups, ratio, spec)


def _least_uniform_ratio(groups: list[GroupInfo], spec: SearchSpec,
                         fits: Callable[[dict[str, int]], bool]) -> float | None:
    """Bisection on the uniform ratio (cost falls as it grows); None when even 0.95 does not fit."""
    lo, hi = 0.0, 0.95
    if not fits(_uniform_plan(groups, hi, spec)):
        return None
    for _ in range(20):
        mid = (lo + hi) / 2
        if fits(_uniform_plan(groups, mid, spec)):
            hi = mid
        else:
            lo = mid
    return hi


def _uniform_comparison(verifier: Verifier, best: Candidate, groups: list[GroupInfo], baseline: Measurement,
                        predict: Callable[[dict[str, int]], dict[str, float]], index: int) -> Candidate | None:
    """The classical baseline: one L1 ratio everywhere, at the chosen plan's measured speedup.

    The ratio is found on the calibrated prediction, then corrected once on the measured speedup
    (proportionally), so both plans are compared at nearly the same measured latency; the report
    gives the speedup each was measured at.
    """
    if "latency_ms" not in best.predicted or not groups:
        return None
    # the steering figure the search chose by (what an earlier run with the same cache chose by too)
    spec, goal = verifier.spec, best.measured.get("steering_speedup", best.measured["speedup"])
    ratio = _least_uniform_ratio(groups, spec, lambda plan: predict(plan)["latency_ms"] <= baseline.latency_ms / goal)
    ratio = 0.95 if ratio is None else ratio
    tried: list[Candidate] = []
    for _ in range(2):
        plan = _uniform_plan(groups, ratio, spec)  # the classical method drops no block
        if any(c.widths == plan for c in tried):
            break
        candidate = verifier.candidate(plan, predict(plan), parent=None, index=index, stage="uniform",
                                       importance="l1")  # the classical method ranks channels by L1
        candidate.measured["uniform_ratio"] = ratio
        tried.append(candidate)
        got = candidate.measured["speedup"]
        if abs(got / goal - 1) <= 0.03:
            break
        ratio = min(0.95, max(0.0, ratio * (goal - 1) / max(got - 1, 1e-3)))
    return min(tried, key=lambda c: abs(c.measured["speedup"] - goal))
