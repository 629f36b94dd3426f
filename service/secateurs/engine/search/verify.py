"""Candidates measured end to end: cheap figures that steer the search, and the decisive one.

The search measures many plans to find where the budget lies: these steering figures use a
short protocol (STEERING), the fast TorchScript exporter, and may come from the cache of an
earlier job; a plan's quality comes from the masked whole-plan measurement (engine/search/refine.py,
the same function as the pruned model, cached), so a plan is pruned only when it has to be
exported. The plan the search returns is then measured again, decisively: pruned, exported as
the job delivers it, measured in fresh sessions with the job's own protocol (each session at
most DECISIVE_SESSION_SECONDS), and near a latency budget in RECHECK_SESSIONS sessions with the median counting
(two suffice when they agree on which side of the budget the plan falls). Should the decisive
figure move the plan across the budget or its precision band, the next best candidate is measured
so, each at most once.

    verifier = Verifier(model, example, spec, target, calib, reference, joint, cancel)
    candidate = verifier.candidate(plan, predicted, parent=None, index=0, stage="search")
    best = verifier.decide(trace, choose)          # measured fresh, in this job
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from secateurs.engine.budget import Budget, Measurement, budget_shortfall, budget_slack
from secateurs.engine.events import CancelCheck, check_cancel
from secateurs.engine.export import export_onnx
from secateurs.engine.latency.cache import MeasurementCache, cache_key
from secateurs.engine.latency.layers import LayerShape, layer_module, layer_onnx
from secateurs.engine.latency.target import LatencyTarget, LocalTarget
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.search.sensitivity import Calibration, JointQuality, measure_quality, recalibrate_batchnorm
from secateurs.engine.search.types import Candidate, SearchPlan
from secateurs.engine.size import count_macs, count_params, file_bytes
from secateurs.engine.spec import ProtocolSpec, SearchSpec

# A plan decisively measured within this of its latency budget is measured in this many sessions in all.
RECHECK_BAND = 0.10
RECHECK_SESSIONS = 3
# A decisive session runs the job's protocol for at most this long: what moves a figure is the session
# (fresh sessions of one model differ by 10-20%, and a longer measurement spread as much: benchmarks/
# RESULTS.md, "fresh sessions of a small model"), so time goes to more sessions, not longer ones. At the
# default protocol's 30 s, sessions at batch 32 ran to the cap and a search's decisive figures took 136 s;
# capped at 5 s they spread no more than at 10 s (RESULTS.md, "Latency protocol: decisive session length").
DECISIVE_SESSION_SECONDS = 5.0
# Layers alone are measured briefly: they are many, each is fast, and the verification
# loop corrects what their sum mispredicts.
LAYER_PROTOCOL = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=5, min_samples=15, max_seconds=0.3,
                              tolerance=0.1)
DECISIONS = 2  # candidates measured decisively at most, when the first one's figure changes the choice
STEERING_EXPORTERS = ("torchscript", "dynamo")  # measured alike on ONNX Runtime (benchmarks/RESULTS.md), 7x faster


def steering_protocol(job: ProtocolSpec) -> ProtocolSpec:
    """The job's protocol, shortened for figures that only steer the search."""
    return replace(job, warmup_runs=min(job.warmup_runs, 10), warmup_seconds=min(job.warmup_seconds, 0.2),
                   window=min(job.window, 30), min_samples=min(job.min_samples, 90),
                   max_seconds=min(job.max_seconds, 3.0), tolerance=max(job.tolerance, 0.05))


def decisive_protocol(job: ProtocolSpec) -> ProtocolSpec:
    """The job's protocol, each session capped at DECISIVE_SESSION_SECONDS (the final benchmark keeps it whole)."""
    return replace(job, max_seconds=min(job.max_seconds, DECISIVE_SESSION_SECONDS))


def measurement(measured: dict[str, float]) -> Measurement:
    return Measurement(latency_ms=measured["latency_ms"], speedup=measured["speedup"],
                       size_bytes=int(measured["size_bytes"]), params=int(measured["params"]),
                       macs=int(measured["macs"]))


class MeasuringTarget:
    """Measures models on the job's target (this process or a probe), keyed for the cache."""

    def __init__(self, spec: SearchSpec, input_shape: tuple[int, ...], cache: MeasurementCache,
                 runtime: LatencyTarget) -> None:
        self.spec, self.shape, self.cache, self.runtime = spec, input_shape, cache, runtime
        self.fingerprint = runtime.fingerprint  # a probe's when measuring remotely, as it reports it
        self.cache_id = runtime.cache_id  # a probe's configured identity: what the cache keys on
        self.model_id = ""  # set once the weights are hashed; keys end-to-end measurements
        self.baseline_source: tuple[Path, nn.Module] = (Path(), nn.Identity())  # set with the baseline session
        # torch.compile per layer would take longer than the search: layers alone run eager
        compiled = runtime.settings.runtime.startswith("torch-compile")
        self.layer_runtime = LocalTarget(replace(runtime.settings, runtime=runtime.settings.runtime.replace(
            "torch-compile", "torch")), seed=spec.seed) if compiled else runtime

    def key(self, *parts: Any) -> str:
        """Cache key of an end-to-end figure: device, runtime settings, protocol, model, plan."""
        t, p = self.spec.target, self.spec.protocol
        return cache_key("e2e", self.cache_id, t.runtime, t.threads, t.precision, vars(p),
                         self.spec.budget.percentile, self.spec.dynamic_batch, self.model_id, *parts)

    def backend(self, path: Path | bytes, shape: tuple[int, ...] | None = None, module: nn.Module | None = None,
                *, fresh: bool = False) -> Any:
        return self.runtime.load(shape or self.shape, onnx=path, module=module, fresh=fresh)

    def measure(self, models: list[Any], protocol: ProtocolSpec, cancel: CancelCheck | None = None) -> list[Any]:
        return self.runtime.measure(models, protocol, should_stop=lambda: check_cancel(cancel))

    def layer_ms(self, layer: LayerShape) -> float:
        t, runtime = self.spec.target, self.layer_runtime
        key = cache_key("layer", runtime.cache_id, runtime.settings.runtime, t.threads, t.precision, layer.key())
        cached = self.cache.get(key, kind="layer")
        if cached is not None:
            return float(cached)
        model = runtime.load(layer.input_shape, onnx=layer_onnx(layer),
                             module=layer_module(layer) if runtime.settings.takes_module else None)
        stats = runtime.measure([model], LAYER_PROTOCOL)[0]
        self.cache.put(key, "layer", stats.p50_ms)
        return stats.p50_ms


def near_latency_budget(measured: dict[str, float], budget: Budget) -> bool:
    """Whether a measured speedup or latency is within RECHECK_BAND of its budget."""
    ratios = ([budget.speedup / measured["speedup"]] if budget.speedup is not None else []) + (
        [measured["latency_ms"] / budget.latency_ms] if budget.latency_ms is not None else [])
    return any(abs(r - 1) < RECHECK_BAND for r in ratios)


def budget_side(run: dict[str, float], counts: dict[str, float], budget: Budget, precision: float) -> tuple:
    """Which side of its budget a measured plan falls, and of the precision band under it: what a
    choice between candidates turns on."""
    m = measurement(dict(run, **counts))
    return budget_shortfall(m, budget) == 0, budget_slack(m, budget) <= precision


def sessions_agree(runs: list[dict[str, float]], counts: dict[str, float], budget: Budget,
                   precision: float) -> bool:
    """Whether two sessions put a plan on the same side of its budget and of the precision band under
    it: a third session cannot move the median of three across either line, so it decides nothing."""
    return len(runs) == 2 and len({budget_side(r, counts, budget, precision) for r in runs}) == 1


class Verifier:
    """Everything a candidate's measurement needs, for steering and for the decisive figure."""

    def __init__(self, model: nn.Module, example: torch.Tensor, spec: SearchSpec, target: MeasuringTarget,
                 calib: Calibration, reference: list[torch.Tensor], joint: JointQuality,
                 cancel: CancelCheck | None) -> None:
        self.model, self.example, self.spec, self.target = model, example, spec, target
        self.calib, self.reference, self.joint, self.cancel = calib, reference, joint, cancel
        self.groups = {g.name: g for g in joint.groups.values()}
        self.models: dict[int, nn.Module] = {}  # pruned candidates, by trace id
        self._offset: int | None = None  # see _size_offset

    def pruned(self, plan: SearchPlan, *, importance: str | None = None) -> nn.Module:
        """The plan applied to the model (the job's criterion unless said), BatchNorm recalibrated."""
        ratios = {n: 1 - w / self.groups[n].channels for n, w in plan.widths.items()
                  if n in self.groups and w < self.groups[n].channels}
        spec = self.spec
        pruned = prune(self.model, self.example, PruneSpec(
            group_ratios=ratios, importance=importance or spec.importance, round_to=spec.round_to,
            min_channels=spec.min_channels, drop_blocks=plan.dropped_blocks), batches=self.calib.inputs).model
        if self.calib.real and self.calib.recalibration:
            recalibrate_batchnorm(pruned, self.calib.recalibration)
        return pruned

    def candidate(self, plan: SearchPlan, predicted: dict[str, float], *, parent: int | None, index: int,
                  stage: str, importance: str | None = None) -> Candidate:
        """A steering figure for `plan`: from the cache, or measured briefly. Its quality is the masked
        whole-plan quality, or, for another criterion than the job's (the uniform L1 comparison), the
        pruned model's."""
        start = time.time()
        key = self.target.key("plan", importance or "", plan.key())
        measured = self.target.cache.get(key, kind="e2e")
        pruned = None
        if measured is None:
            pruned = self.pruned(plan, importance=importance)
            measured = self._measure(pruned, decisive=False)
            self.target.cache.put(key, "e2e", measured)
            measured = dict(measured, cached=0.0)
        else:
            measured = dict(measured, cached=1.0)
        if importance is None or importance == self.spec.importance:
            quality = self.joint(plan).to_dict()
        else:
            pruned = pruned if pruned is not None else self.pruned(plan, importance=importance)
            quality = measure_quality(pruned, self.calib, self.reference).to_dict()
        if pruned is not None:
            self.models[index] = pruned
        final = measurement(measured)
        return Candidate(id=index, parent=parent, stage=stage, plan=plan, predicted=predicted,
                         measured=measured, quality=quality, shortfall=budget_shortfall(final, self.spec.budget),
                         slack=budget_slack(final, self.spec.budget), start=start, end=time.time())

    def decide(self, trace: list[Candidate], choose: Callable[[list[Candidate]], Candidate],
               within_floor: Callable[[Candidate], bool] = lambda c: True) -> Candidate:
        """The candidate `choose` prefers, after its figure was measured decisively in this job. When that
        figure puts it on another side of the budget, of the precision band under it, or of the accuracy
        limit (`within_floor`) than its steering figure did, the choice is made again and the new choice
        measured so too, DECISIONS candidates at most; should all of them miss the budget, one more with
        room to spare (`_roomier`), then the best decisively measured one is returned, whatever it missed
        by. A choice its own figure leaves where it stood is returned: the others' qualities are masked
        estimates, the decided one's is the pruned model's, and comparing the two kinds would re-choose
        on the difference between them, not on what was measured."""
        decided: list[Candidate] = []
        while True:
            best = choose(trace)
            if best in decided or len(decided) >= DECISIONS:
                settled = best if best in decided else choose(decided)
                roomier = self._roomier(trace, decided) if settled.shortfall > 0 else None
                if roomier is None or len(decided) > DECISIONS:
                    return settled
                best = roomier
            decided.append(best)
            stood = self._standing(best, within_floor)
            pruned = self.models.get(best.id) or self.pruned(best.plan)
            self.models[best.id] = pruned
            start = time.time()
            measured = self._measure(pruned, decisive=True, steering=best.measured)
            best.measured = dict(measured, cached=0.0, decisive=1.0, steering_speedup=best.measured["speedup"])
            final = measurement(measured)
            best.shortfall, best.slack = budget_shortfall(final, self.spec.budget), budget_slack(final, self.spec.budget)
            best.quality = measure_quality(pruned, self.calib, self.reference).to_dict()  # the model itself
            best.end += time.time() - start
            if self._standing(best, within_floor) == stood:
                return best

    @staticmethod
    def _roomier(trace: list[Candidate], decided: list[Candidate]) -> Candidate | None:
        """When every plan measured decisively missed the budget: a plan whose steering figure met it with
        room for twice the largest gap between steering and decisive figures this job has seen (least
        loss among them; else the one with the most room), measured decisively once more. Near the budget
        noise decides, and a plan 10% inside must not be given up for two that were 1% inside."""
        gaps = [abs(c.measured["steering_speedup"] / c.measured["speedup"] - 1) for c in decided
                if c.measured.get("steering_speedup") and c.measured.get("speedup")]
        room = 2 * max(gaps, default=0.0)
        met = [c for c in trace if c.stage == "search" and c not in decided and c.shortfall == 0]
        roomy = [c for c in met if c.slack >= room]
        if roomy:
            return min(roomy, key=lambda c: c.quality["loss"])
        return max(met, key=lambda c: c.slack, default=None)

    def _standing(self, c: Candidate, within_floor: Callable[[Candidate], bool]) -> tuple[bool, bool, bool]:
        """Which sides a candidate is on: of the budget, of the precision band under it, of the accuracy limit."""
        return c.shortfall == 0, c.slack <= self.spec.precision, within_floor(c)

    def _doubtful(self, first: dict[str, float], counts: dict[str, float],
                  steering: dict[str, float] | None) -> bool:
        """Whether a first decisive session needs more: near a latency budget, or contradicting the plan's
        steering figure (a session settled in a slow or fast mode reads up to 30% off; RESULTS.md)."""
        spec = self.spec
        if near_latency_budget(first, spec.budget):
            return True
        if steering is None or (spec.budget.speedup is None and spec.budget.latency_ms is None):
            return False
        before = dict(steering, size_bytes=counts["size_bytes"])  # the same file's size: latency is in doubt
        return budget_side(first, counts, spec.budget, spec.precision) != budget_side(
            before, {}, spec.budget, spec.precision)

    def _size_offset(self) -> int:
        """Bytes the delivered file of the baseline has over its steering export (graph and names, not
        weights). Added to a steering file it gives the delivered size within 0.3% on ResNet-20 and
        MobileNetV2 pruned up to 60%; the decisive figure is the delivered file itself."""
        if self._offset is None:
            source, original = self.target.baseline_source
            with tempfile.TemporaryDirectory() as tmp:
                fast = Path(tmp) / "baseline.onnx"
                export_onnx(original, self.example, fast, dynamic_batch=self.spec.dynamic_batch,
                            exporters=STEERING_EXPORTERS)
                self._offset = file_bytes(source) - file_bytes(fast)
        return self._offset

    def _measure(self, pruned: nn.Module, *, decisive: bool,
                 steering: dict[str, float] | None = None) -> dict[str, float]:
        """Export and measure interleaved with the baseline. Decisive: exported as the job delivers it, in
        fresh sessions (the baseline's too), with the job's protocol (sessions capped), and in up to
        RECHECK_SESSIONS sessions, the median run counting, when the first is near a latency budget or puts the plan on
        another side of it than its `steering` figure did. Steering: one session, briefly."""
        spec, target = self.spec, self.target
        q = spec.budget.percentile
        protocol = decisive_protocol(spec.protocol) if decisive else steering_protocol(spec.protocol)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidate.onnx"
            # the delivering exporter takes seconds; the same plan of the same model exports the same file
            export_onnx(pruned, self.example, path, dynamic_batch=spec.dynamic_batch,
                        exporters=None if decisive else STEERING_EXPORTERS,
                        cache_dir=Path(spec.cache_dir) if decisive and spec.cache_dir else None)
            # a size budget is about the file the job delivers: a steering file is corrected to it
            size = file_bytes(path) + (self._size_offset() if not decisive and spec.budget.size_bytes else 0)
            counts = dict(size_bytes=float(size), params=float(count_params(pruned)),
                          macs=float(count_macs(pruned, self.example)))
            runs: list[dict[str, float]] = []
            for session in range(RECHECK_SESSIONS if decisive else 1):
                if session and (not self._doubtful(runs[0], counts, steering)
                                or sessions_agree(runs, counts, spec.budget, spec.precision)):
                    break
                # On a few cores a session of a small model can settle in a fast or a slow mode and
                # stay there (two sessions of one ResNet-20 at batch 1: up to 30% apart; benchmarks/
                # RESULTS.md). Near the budget that decides which side a plan falls on, so it is
                # measured again in fresh sessions, the baseline's too, and the median run counts.
                # A session kept for the whole search could have settled in a slow mode and flatter every
                # plan: each pair is measured in new sessions, as the decisive figure is.
                source, original = target.baseline_source
                base = target.backend(source, module=original, fresh=True)
                cand = target.backend(path, module=pruned, fresh=True)
                b, c = target.measure([base, cand], protocol, self.cancel)
                runs.append({"latency_ms": c.percentile(q), "speedup": b.percentile(q) / c.percentile(q),
                             "baseline_latency_ms": b.percentile(q), "stable": float(b.stable and c.stable)})
            # the median of three; of two that agree (sessions_agree), the slower
            counted = sorted(runs, key=lambda r: r["speedup"])[(len(runs) - 1) // 2]
            return dict(counted, sessions=float(len(runs)), **counts)
