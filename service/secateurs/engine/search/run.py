"""Latency-budget search on a real model: per-group widths and whole blocks from measured latency.

    analyse   groups, the layers each one widens or narrows, and the layer shapes
    measure   the baseline end to end; every layer alone over a grid of widths (cached)
    score     each group's quality loss at each width, each block's without it (cached)
    calibrate one end-to-end point for the channel model, one per stage of alike blocks: the
              isolated layers' sum scaled to what the whole model measures
    search    the searcher (engine/search/searcher.py) proposes plans, each is measured here,
              interleaved with the baseline, and the searcher is told; a bounded number of rounds
    decide    the chosen plan measured again, decisively (engine/search/verify.py), and the
              uniform L1 plan at its speedup for comparison

Every candidate measured is a row of the trace (id, parent, stage, plan, predicted, measured,
quality, start, end), from which the report is rendered. A budget that cannot be met ends with
budget_met=False, the best reachable point and the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.engine.budget import Budget, Measurement, latency_ceiling
from secateurs.engine.inputs import shape_key, shapes
from secateurs.engine.events import CancelCheck, Event, EventSink, check_cancel, ignore_events, within
from secateurs.engine.latency.cache import MeasurementCache
from secateurs.engine.latency.layers import LayerLatencyModel, LayerShape, collect_layers
from secateurs.engine.latency.target import LatencyTarget, open_target
from secateurs.engine.prune.blocks import BlockInfo, find_blocks
from secateurs.engine.prune.groups import GraphContext, GroupInfo, describe_groups, prepare
from secateurs.engine.prune.importance import accumulate_gradients
from secateurs.engine.search.costmodel import GroupLayers
from secateurs.engine.search.predictor import CostPredictor
from secateurs.engine.search.searcher import SearchProblem, Searcher
from secateurs.engine.search.sensitivity import (Calibration, JointQuality, Quality, block_importance, channels_last,
                                                 group_widths, measure_quality, model_identity, quality_at,
                                                 reference_outputs, sensitivity)
from secateurs.engine.search.types import Candidate, Entries, SearchPlan, block_entry
from secateurs.engine.search.uniform import uniform_comparison, uniform_fitting, uniform_plan
from secateurs.engine.search.verify import MeasuringTarget, Verifier, measurement, steering_protocol
from secateurs.engine.size import count_macs, count_params, file_bytes
from secateurs.engine.spec import SearchSpec

RATIO_GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    plan: SearchPlan
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
    blocks: list[dict[str, Any]] = field(default_factory=list)
    chosen: int = 0  # the trace id of the candidate returned

    @property
    def widths(self) -> dict[str, int]:
        return dict(self.plan.widths)

    @property
    def dropped(self) -> list[str]:
        return list(self.plan.dropped_blocks)


@dataclass(kw_only=True)
class _Analysis:
    """The model as the search sees it: groups, layers, blocks, and which of them it chooses."""

    ctx: GraphContext
    groups: list[GroupInfo]
    channel_groups: list[GroupInfo]  # the groups the search narrows (none with depth "only")
    layers: dict[str, LayerShape]
    members: GroupLayers
    blocks: list[BlockInfo]
    block_layers: dict[str, list[str]]
    widths: dict[str, list[int]]  # each group's grid of widths

    @property
    def full(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    @property
    def whole(self) -> Entries:
        """The unpruned plan as the solver's entries."""
        return SearchPlan(self.full).entries([b.name for b in self.blocks])


def search(model: nn.Module, example: torch.Tensor, baseline_onnx: Path, spec: SearchSpec, calib: Calibration,
           *, latency_target: LatencyTarget | None = None, on_event: EventSink = ignore_events,
           cancel: CancelCheck | None = None) -> SearchResult:
    """Find per-group widths and blocks to drop meeting `spec.budget` with the least quality loss.

    latency_target: where every latency figure is measured (engine/latency/target.py); None: opened
    from spec.target for this search. on_event: progress events of stage "search"; cancel is checked
    at each."""
    def sink(event: Any) -> None:
        check_cancel(cancel)
        on_event(event)

    owned = latency_target is None
    latency_target = latency_target or open_target(spec.target, seed=spec.seed)
    cache = MeasurementCache(Path(spec.cache_dir) / "measurements.sqlite" if spec.cache_dir else None)
    target = MeasuringTarget(spec, shapes(example)[0], cache, latency_target)
    try:
        return _search(model, example, baseline_onnx, spec, calib, target, sink, cancel)
    finally:
        cache.close()
        if owned:
            latency_target.close()


def _search(model: nn.Module, example: torch.Tensor, baseline_onnx: Path, spec: SearchSpec, calib: Calibration,
            target: MeasuringTarget, sink: EventSink, cancel: CancelCheck | None) -> SearchResult:
    a = _analyse(model, example, spec, calib)
    cache = target.cache
    model_id = target.model_id = model_identity(model, spec.arch, shape_key(example))
    _progress(sink, 0.02, "measuring the baseline")
    baseline = _baseline(model, example, baseline_onnx, spec, target, cancel)
    ceilings = _ceilings(spec.budget, baseline)
    reference = reference_outputs(model, calib)
    quality_before = measure_quality(model, calib, reference).to_dict()

    latency_model = None
    if "latency_ms" in ceilings:  # latency of every layer alone over a grid of widths
        _progress(sink, 0.05, "measuring layers in isolation")
        latency_model = LayerLatencyModel(a.layers, target.layer_ms, round_to=spec.round_to,
                                          on_event=within(sink, 0.05, 0.35))
    scores = _scores(model, a, calib, quality_before, cache, model_id, sink)
    predictor = CostPredictor(baseline, a.members, a.full, a.block_layers, latency_model)
    joint = JointQuality(a.ctx, a.groups, calib, reference, cache=cache, model_id=model_id)
    verifier = Verifier(model, example, spec, target, calib, reference, joint, cancel)
    calibration = _calibrate(a, spec, verifier, predictor, baseline, sink) if latency_model is not None else []

    problem = SearchProblem(
        whole=a.whole,
        choices={g.name: a.widths[g.name] for g in a.channel_groups} | {block_entry(b.name): [1, 0] for b in a.blocks},
        entry_loss=lambda entry, width: _loss_at(scores[entry], width),
        predict=predictor, plan_loss=lambda entries: joint(SearchPlan.from_entries(entries)).loss,
        ceilings=ceilings, inside_dropped=predictor.inside_dropped,
        uniform_start=lambda fits: uniform_fitting(a.channel_groups, spec, fits),
        quality_before=quality_before,
        as_ceiling=lambda c, name: _as_ceiling_quantity(c, name, spec.budget, baseline),
        lowest=predictor.lowest())
    searcher = Searcher(problem, spec, trace=calibration, on_event=within(sink, 0.65, 0.95))
    while (proposal := searcher.propose()) is not None:
        candidate = verifier.candidate(proposal.plan, proposal.predicted, parent=proposal.parent,
                                       index=len(searcher.trace), stage=proposal.stage)
        candidate.refinement = proposal.refinement
        searcher.tell(candidate)

    trace = searcher.trace
    best = verifier.decide(trace, searcher.choose, searcher.within_floor)
    met, reason = searcher.outcome(best)
    uniform = uniform_comparison(verifier, best, a.channel_groups, a.full, baseline, predictor, len(trace))
    if uniform is not None:
        trace.append(uniform)
    return SearchResult(
        plan=best.plan, ratios={n: 1 - best.plan.widths[n] / c for n, c in a.full.items()},
        model=verifier.models[best.id], chosen=best.id, budget_met=met, reason=reason, baseline=baseline,
        final=measurement(best.measured), quality_before=quality_before, quality_after=best.quality, trace=trace,
        uniform=uniform.to_dict() if uniform else None,
        latency_model=_latency_summary(a, predictor, trace, baseline),
        groups=[_group_row(g, best.plan, a.widths[g.name], scores) for g in a.groups],
        blocks=[_block_row(b, b.name in best.plan.dropped_blocks, scores[block_entry(b.name)][0],
                           predictor.block_saving(b.name) / baseline.latency_ms if latency_model else None)
                for b in a.blocks],
        cache=cache.counts())


def _analyse(model: nn.Module, example: torch.Tensor, spec: SearchSpec, calib: Calibration) -> _Analysis:
    ctx = prepare(copy.deepcopy(model), example, criterion=spec.importance)
    channels_last(ctx.model)  # the analysis copy: what sensitivity and refinement evaluate, faster so
    if spec.importance == "taylor":  # the criterion's gradients, from the job's calibration batches
        accumulate_gradients(ctx.model, calib.inputs, model)
    groups = [g for g in describe_groups(ctx, example, min_channels=spec.min_channels) if g.prunable]
    layers = collect_layers(ctx.model, example)
    blocks = find_blocks(model, example) if spec.depth != "off" else []
    return _Analysis(
        ctx=ctx, groups=groups, channel_groups=groups if spec.depth != "only" else [], layers=layers,
        members=GroupLayers(ctx, groups, layers), blocks=blocks,
        block_layers={b.name: [n for n in layers if n.startswith(b.name + ".")] for b in blocks},
        widths={g.name: group_widths(g, RATIO_GRID, round_to=spec.round_to, min_channels=spec.min_channels)
                for g in groups})


def _baseline(model: nn.Module, example: torch.Tensor, baseline_onnx: Path, spec: SearchSpec,
              target: MeasuringTarget, cancel: CancelCheck | None) -> Measurement:
    """The baseline end to end. It steers (the aims), so it may be an earlier job's; the decisive
    figure has a fresh baseline of its own."""
    base_backend = target.backend(baseline_onnx, module=model)
    target.baseline_source = (baseline_onnx, model)
    key = target.key("baseline")
    latency_ms = target.cache.get(key, kind="e2e")
    if latency_ms is None:
        stats = target.measure([base_backend], steering_protocol(spec.protocol), cancel)[0]
        latency_ms = stats.percentile(spec.budget.percentile)
        target.cache.put(key, "e2e", latency_ms)
    return Measurement(latency_ms=latency_ms, speedup=1.0, size_bytes=file_bytes(baseline_onnx),
                       params=count_params(model), macs=count_macs(model, example))


def _scores(model: nn.Module, a: _Analysis, calib: Calibration, quality_before: dict[str, Any],
            cache: MeasurementCache, model_id: str, sink: EventSink) -> dict[str, dict[int, Quality]]:
    """Quality lost by each entry at each width alone: a group narrowed, a block dropped."""
    scores: dict[str, dict[int, Quality]] = sensitivity(
        a.ctx, a.channel_groups, a.widths, calib, cache=cache, model_id=model_id,
        on_event=within(sink, 0.35, 0.65))
    if a.blocks:
        _progress(sink, 0.62, f"importance of {len(a.blocks)} removable blocks")
        kept = Quality(loss=0.0, agreement=1.0, kl=0.0, accuracy=quality_before.get("accuracy"))
        for name, without in block_importance(model, a.blocks, calib, cache=cache, model_id=model_id).items():
            scores[block_entry(name)] = {1: kept, 0: without}
    return scores


def _calibrate(a: _Analysis, spec: SearchSpec, verifier: Verifier, predictor: CostPredictor,
               baseline: Measurement, sink: EventSink) -> list[Candidate]:
    """End-to-end points that turn the isolated-layer sums into the model's latency; the candidates
    measured, for the trace."""
    points: list[Candidate] = []

    def point(plan: SearchPlan, isolated: float) -> float:
        """Measured change over isolated-layer change for one plan, measured end to end."""
        candidate = verifier.candidate(plan, {}, parent=None, index=len(points), stage="calibration")
        measured = baseline.latency_ms / candidate.measured["speedup"] - baseline.latency_ms
        ratio = min(5.0, max(0.05, measured / isolated)) if isolated < 0 and measured < 0 else 1.0
        candidate.predicted = {"latency_ms": baseline.latency_ms + ratio * isolated}
        points.append(candidate)
        return ratio

    if a.channel_groups:
        # One end-to-end point for channels: the uniform plan at ratio 0.5, interleaved with the baseline.
        _progress(sink, 0.35, "calibrating the layer model end to end")
        probe = uniform_plan(a.channel_groups, 0.5, spec)
        predictor.calibrated(scale=point(SearchPlan(dict(a.full, **probe)), predictor.isolated_delta(probe)))
    if a.blocks:
        # A dropped block also saves what its layers alone do not show (adds, activations,
        # per-operator overhead), and that part weighs differently at each resolution and
        # width: one end-to-end point per family of alike blocks (a stage), all of it dropped.
        families = _families(a.blocks, lambda b: predictor.block_isolated_ms(b.name))
        for i, family in enumerate(families):
            _progress(sink, 0.36, f"calibrating block removal end to end ({i + 1}/{len(families)})")
            plan = SearchPlan(a.full, dropped_blocks=tuple(b.name for b in family))
            ratio = point(plan, -sum(predictor.block_isolated_ms(b.name) for b in family))
            predictor.calibrated(block_scale={b.name: ratio for b in family})
    return points


def _families(blocks: list[BlockInfo], isolated_ms: Any, most: int = 2) -> list[list[BlockInfo]]:
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


def _latency_summary(a: _Analysis, predictor: CostPredictor, trace: list[Candidate],
                     baseline: Measurement) -> dict[str, Any]:
    def error(c: Candidate) -> float:  # against the interleaved ratio, robust to drift between runs
        measured = baseline.latency_ms / c.measured["speedup"]
        return abs(c.predicted["latency_ms"] - measured) / measured

    errors = [error(c) for c in trace if "latency_ms" in c.predicted and c.stage != "calibration"]
    return {
        "kind": "isolated layers, rank-1 width interaction, scaled by end-to-end calibration points (one for "
                "channels, one per family of alike blocks)",
        "scale": predictor.scale, "block_scales": dict(predictor.block_scale),
        "layers": len(a.layers), "prediction_errors": errors,
        "mean_abs_error": sum(errors) / len(errors) if errors else None,
        "steps": _steps(a, predictor) if predictor.latency_model else {},
    }


def _steps(a: _Analysis, predictor: CostPredictor) -> dict[str, list[list[float]]]:
    """Per group: [width, predicted saving in ms] over its grid (where the staircase steps)."""
    full = a.full
    return {g.name: [[w, -predictor.scale * predictor.isolated_delta(dict(full, **{g.name: w}))]
                     for w in a.widths[g.name]] for g in a.groups}


def _group_row(g: GroupInfo, plan: SearchPlan, grid: list[int],
               scores: dict[str, dict[int, Quality]]) -> dict[str, Any]:
    return {"name": g.name, "unit": g.unit, "channels": g.channels, "chosen": plan.widths[g.name],
            "ratio": 1 - plan.widths[g.name] / g.channels,
            "sensitivity": {str(w): scores[g.name][w].loss for w in grid if g.name in scores}}


def _block_row(block: BlockInfo, dropped: bool, without: Quality, latency_share: float | None) -> dict[str, Any]:
    """A removable block in the report: whether the plan drops it, the quality lost without it
    alone, and its share of the baseline latency (its layers measured in isolation, scaled by the
    end-to-end measurement of dropping its whole stage of alike blocks)."""
    return {**block.to_dict(), "dropped": dropped, "loss": without.loss, "accuracy_without": without.accuracy,
            "latency_share": latency_share}


def _loss_at(known: dict[int, Quality], width: int) -> float:
    """An entry's one-entry loss at `width` (a uniform plan's widths can fall between those measured)."""
    return max(quality_at(known, width).loss, 0.0)


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


def _progress(sink: EventSink, fraction: float, message: str) -> None:
    sink(Event(stage="search", kind="progress", progress=fraction, message=message))

