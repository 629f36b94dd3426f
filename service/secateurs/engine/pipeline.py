"""compress(spec, on_event, cancel) -> CompressResult: the whole job as one function.

Stages: load -> profile -> search -> prune -> recover -> export -> benchmark -> report. Each
stage emits Event(stage, "started"/"progress"/"finished") and checks the cancel token between
units of work. The service only orchestrates this function in a worker process.

The data plays two roles that never share an image (engine/intake/calibration.py): the search and
recovery calibrate on one set, and the reported quality and the accuracy limit are measured
on the other. With max_accuracy_drop, a plan whose measured drop misses the limit gives way to
the next less-pruned plan the search measured within the other limits, a bounded number of times.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from secateurs.engine.budget import Measurement, budget_shortfall
from secateurs.engine.intake.calibration import DataRoles, Evaluator, build_roles
from secateurs.engine.events import STAGES, CancelCheck, Event, EventSink, check_cancel, ignore_events
from secateurs.engine.latency import devicelock
from secateurs.engine.export import check_parity, export_onnx, export_pt2
from secateurs.engine.latency.protocol import measurements_taken
from secateurs.engine.latency.target import TargetOpener, open_target
from secateurs.engine.intake.hf import family_of, save_pruned_archive
from secateurs.engine.intake.models import check_runs, labels_for_output, load_model
from secateurs.engine.outputs import POSTPROCESS, output_names, scored_per
from secateurs.engine.prune.apply import prune, write_plan
from secateurs.engine.search.run import search
from secateurs.engine.inputs import Batch, generate, input_distribution, shape_key
from secateurs.engine.intake.data import generated_dataset
from secateurs.engine.spec import CompressSpec, InputSpec, PruneSpec, SearchSpec
from secateurs.engine.validate import validate_spec
from secateurs.engine.search.sensitivity import Calibration, recalibrate_batchnorm
from secateurs.engine.size import count_macs, count_params, file_bytes
from secateurs.errors import InvalidRequest, ParityError, machine_limit

REPORT_VERSION = 4  # of engine/report/schema.json; docs/observability.md says what changed


@dataclass(frozen=True, kw_only=True)
class CompressResult:
    """What a job produced: the report (also written as report.json) and artifact files
    by kind ("onnx", "pt2", "hf_checkpoint", "plan", "report", "report_html")."""

    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


class _Stage:
    """Context manager that emits started/finished events and records the stage's time."""

    def __init__(self, name: str, on_event: EventSink, cancel: CancelCheck | None, timings: dict[str, float]):
        self.name, self.on_event, self.cancel, self.timings = name, on_event, cancel, timings

    def __enter__(self) -> _Stage:
        check_cancel(self.cancel)
        self.start = time.perf_counter()
        self.on_event(Event(stage=self.name, kind="started", progress=0.0))
        return self

    def progress(self, fraction: float, message: str = "", **data: Any) -> None:
        check_cancel(self.cancel)
        self.on_event(Event(stage=self.name, kind="progress", progress=fraction, message=message, data=data))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.timings[self.name] = round(time.perf_counter() - self.start, 3)
            self.on_event(Event(stage=self.name, kind="finished", progress=1.0,
                                data={"seconds": self.timings[self.name]}))


TASKS = {"example": "classification", "position": "segmentation", "anchor": "detection"}  # by scored_per


@dataclass(kw_only=True)
class _Run:
    """What one compress() call carries from stage to stage."""

    spec: CompressSpec
    on_event: EventSink
    cancel: CancelCheck | None
    out: Path
    shape: tuple[int, ...]  # the first input's, at the batch measured
    inputs: tuple[InputSpec, ...]  # every input at the batch measured
    timings: dict[str, float] = field(default_factory=dict)
    scored: str = "example"  # what a row of the quality figures is: example, position (segmentation), anchor

    def stage(self, name: str) -> _Stage:
        return _Stage(name, self.on_event, self.cancel, self.timings)


@dataclass(frozen=True, kw_only=True)
class _Outcome:
    """A plan pruned, recovered when asked, and evaluated: what the export and the report take."""

    pruned: torch.nn.Module
    result: Any  # PruneResult
    plan_path: Path
    recovery: dict[str, Any] | None
    quality: dict[str, Any]
    floor: dict[str, Any] | None


ACCURACY_RETRIES = 2  # less-pruned plans tried when the measured accuracy drop misses its limit


def compress(
    spec: CompressSpec, on_event: EventSink = ignore_events, cancel: CancelCheck | None = None, *,
    target_opener: TargetOpener = open_target,
) -> CompressResult:
    """Prune, export and measure one model. Raises secateurs.errors.* on bad input.

    target_opener: opens where every latency figure of the job is measured; the default is this
    process (a caller that may measure on a probe passes secateurs.probe.client.open_target)."""
    validate_spec(spec)
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    measured_before, windows_before = measurements_taken(), len(devicelock.windows())
    devicelock.configure(spec.cache_dir)  # one measurement at a time among the jobs sharing this cache
    torch.manual_seed(spec.seed)
    inputs = spec.inputs
    if spec.target.batch:  # the deployment's batch: measured, and exported, at it
        inputs = tuple(replace(i, shape=(spec.target.batch, *i.shape[1:])) for i in inputs)
    shape = inputs[0].shape
    run = _Run(spec=spec, on_event=on_event, cancel=cancel, out=Path(spec.out_dir), shape=shape, inputs=inputs)
    run.out.mkdir(parents=True, exist_ok=True)

    with run.stage("load"):
        model = load_model(spec.model)
        output = check_runs(model, inputs)
        data, train_data = labels_for_output(output, spec.data, spec.train_data)
        run.spec = spec = replace(spec, data=data, train_data=train_data)  # labels no figure reads dropped
        run.scored = scored_per(output)
        drawn = input_distribution(model)
        example = generate(inputs, generator=torch.Generator().manual_seed(spec.seed), distribution=drawn)
        roles = build_roles(spec.data, spec.train_data, inputs, calibration_samples=spec.calibration_samples,
                            evaluation_samples=spec.evaluation_samples, seed=spec.seed, distribution=drawn)
        roles.evaluation.check_fits(output)
    with run.stage("profile") as st:
        # first: a runtime or probe that is not there fails the job before any work, saying why
        latency = target_opener(spec.target, seed=spec.seed)
        st.progress(0.1, f"measuring on {_where(latency.where)}, device {latency.fingerprint['id']}")
        baseline_onnx = run.out / "baseline.onnx"
        baseline_export = export_onnx(model, example, baseline_onnx, dynamic_batch=spec.dynamic_batch,
                                      cache_dir=spec.cache_dir, input_names=[i.name for i in inputs])
        baseline_size = {"params": count_params(model), "macs": count_macs(model, example),
                         "onnx_bytes": file_bytes(baseline_onnx)}
    search_report = _search_stage(run, model, example, baseline_onnx, roles, latency)
    outcome = _pruned_within_floor(run, model, example, roles, search_report)
    artifacts, exports, parity = _export_stage(run, outcome, example, latency)
    with run.stage("benchmark") as st:
        models = [latency.load(shape, onnx=path, module=module, fresh=True) for path, module in
                  ((baseline_onnx, model), (artifacts["onnx"], outcome.pruned))]
        st.progress(0.05, f"measuring baseline and pruned, interleaved, on {_where(latency.where)}")
        load_before = _load_average()
        before, after = latency.measure(models, spec.protocol, should_stop=lambda: check_cancel(cancel))
        host_load = {"before": load_before, "after": _load_average()}
        del models
        latency.close()
    with run.stage("report"):
        measured = {"latency": measurements_taken() - measured_before,
                    "cache": dict((search_report or {}).get("cache") or {"hits": 0, "misses": 0}),
                    **_measurement_windows(windows_before), "host_load": host_load}
        report = _report(run, started_at=started_at, started=started, outcome=outcome, example=example,
                         baseline_size=baseline_size, search_report=search_report, latency=latency, before=before,
                         after=after, parity=parity, exports={"baseline": baseline_export, **exports},
                         roles=roles, measured=measured)
    report["job"]["seconds"] = round(time.perf_counter() - started, 3)
    report_path = run.out / "report.json"  # written after the stage closes, so its own time is in it
    report_path.write_text(json.dumps(report, indent=2))
    artifacts["report"] = report_path
    html_path = _write_html(report, run.out / "report.html", on_event)
    if html_path is not None:
        artifacts["report_html"] = html_path
    return CompressResult(report=report, artifacts=artifacts)


def _search_stage(run: _Run, model: torch.nn.Module, example: torch.Tensor, baseline_onnx: Path, roles: DataRoles,
                  latency: Any) -> dict[str, Any] | None:
    """The budget search (reused from an interrupted attempt of the same job); None without a budget."""
    spec = run.spec
    if spec.budget is None:
        return None
    with run.stage("search") as st:
        job_key = _search_key(spec, model, example)
        saved = _load_search(run.out, job_key)
        if saved is not None:  # an interrupted attempt of this job already searched
            st.progress(1.0, "reusing the search result of the interrupted attempt")
            return saved
        # Without recovery the accuracy limit constrains the search's own (calibration) figures; with
        # recovery those say little of the recovered model, so the measured drop decides afterwards.
        floor = spec.budget.max_accuracy_drop if spec.recovery is None else None
        searched = search(
            model, example, baseline_onnx,
            SearchSpec(budget=spec.budget, target=spec.target, protocol=spec.protocol, dynamic_batch=spec.dynamic_batch,
                       importance=spec.importance, round_to=spec.round_to, min_channels=spec.min_channels,
                       cache_dir=spec.cache_dir, arch=spec.model.arch, seed=spec.seed, depth=spec.depth,
                       max_accuracy_drop=floor),
            roles.calibration, latency_target=latency, cancel=run.cancel,
            on_event=lambda event: st.progress(event.progress, event.message, **event.data))
        section = _search_section(searched, spec)
        _save_search(run.out, job_key, section)
        return section


def _plans(run: _Run, search_report: dict[str, Any] | None) -> list[tuple[dict[str, float] | None, list[str], int | None]]:
    """(group ratios, dropped blocks, trace id) of the plan to deliver, then of the less-pruned plans the
    search measured within every other limit (the ones an accuracy limit may fall back to)."""
    if search_report is None:
        return [(run.spec.group_ratios, [], None)]
    channels = {g["name"]: g["channels"] for g in search_report["groups"]}

    def plan(c: dict[str, Any]) -> tuple[dict[str, float], list[str], int]:
        return ({n: 1 - w / channels[n] for n, w in c["widths"].items() if n in channels},
                list(c["dropped_blocks"]), c["id"])

    chosen = next(c for c in search_report["trace"] if c["id"] == search_report["chosen"])
    # less pruned: slower, under a latency budget; else larger
    timed = run.spec.budget is not None and (run.spec.budget.latency_ms or run.spec.budget.speedup)
    pruning = (lambda c: c["measured"]["speedup"]) if timed else (lambda c: -c["measured"]["params"])
    same = lambda c: (c["widths"], c["dropped_blocks"]) == (chosen["widths"], chosen["dropped_blocks"])  # noqa: E731
    lighter = sorted((c for c in search_report["trace"] if c["shortfall"] == 0 and c["stage"] != "uniform"
                      and pruning(c) < pruning(chosen) and not same(c)), key=lambda c: -pruning(c))
    return [plan(chosen)] + [plan(c) for c in lighter[:ACCURACY_RETRIES]]


def _pruned_within_floor(run: _Run, model: torch.nn.Module, example: torch.Tensor, roles: DataRoles,
                         search_report: dict[str, Any] | None) -> _Outcome:
    """Prune, recover and evaluate the chosen plan; when the measured accuracy drop misses
    max_accuracy_drop, the next less-pruned plan measured within the other limits, a bounded
    number of times. The last plan tried is delivered; the report says which happened."""
    evaluator = Evaluator(roles.evaluation, model)
    before = evaluator.quality(model)
    plans = _plans(run, search_report)
    attempts: list[dict[str, Any]] = []
    outcome = None
    for attempt, (ratios, dropped, candidate) in enumerate(plans):
        outcome = _prune_and_recover(run, model, example, roles, ratios, dropped, attempt)
        after = evaluator.quality(outcome.pruned)
        floor = _accuracy_floor(run.spec, before, after)
        attempts.append({"candidate": candidate, "quality": after, **({"met": floor["met"], "drop": floor["drop"]}
                                                                     if floor else {})})
        boxes = {"postprocess": dict(POSTPROCESS)} if roles.evaluation.box_labels else {}
        outcome = replace(outcome, quality={"before": before, "after": after, "measured_on": roles.summary["evaluation"],
                                            "scored": f"per {run.scored}", **boxes}, floor=floor)
        if floor is None or floor["met"]:
            break
        run.on_event(Event(stage="recover" if run.spec.recovery else "prune", kind="log",
                           message=f"accuracy drop {floor['drop']:.2%} is over the limit of {floor['max_drop']:.2%}"
                           + ("; trying the next less-pruned plan" if attempt + 1 < len(plans) else "")))
    assert outcome is not None  # noqa: S101 - plans always has the chosen plan
    if outcome.floor is not None:
        outcome.floor["attempts"] = attempts
        outcome.floor["outcome"] = ("met" if len(attempts) == 1 and outcome.floor["met"] else
                                    f"met with the plan tried {len(attempts)}th (less pruned than the search's choice)"
                                    if outcome.floor["met"] else
                                    f"missed after {len(attempts)} plan(s); the last one tried is returned")
    return outcome


def _prune_and_recover(run: _Run, model: torch.nn.Module, example: torch.Tensor, roles: DataRoles,
                       ratios: dict[str, float] | None, dropped: list[str], attempt: int) -> _Outcome:
    spec, calib = run.spec, roles.calibration
    with run.stage("prune") as st:
        prune_spec = PruneSpec(ratio=spec.ratio if ratios is None else None, group_ratios=ratios,
                               importance=spec.importance, round_to=spec.round_to, min_channels=spec.min_channels,
                               drop_blocks=tuple(dropped))
        result = prune(model, example, prune_spec, batches=calib.inputs)
        pruned = result.model
        if calib.real and calib.recalibration:
            recalibrate_batchnorm(pruned, calib.recalibration)  # statistics of the narrower layers
        plan_path = write_plan(result.plan, run.out / "plan.json")
        st.progress(1.0, f"{sum(1 for g in result.plan.groups if g['after'] < g['before'])} groups pruned"
                    + (f", {len(dropped)} blocks dropped" if dropped else ""))
    recovery = None
    if spec.recovery is not None:
        with run.stage("recover") as st:
            checkpoints = run.out / ("checkpoints" if not attempt else f"checkpoints-{attempt}")
            pruned, recovery, plan_path = _recover(spec, model, pruned, example, calib, ratios, prune_spec,
                                                   run.out, run.on_event, run.cancel, checkpoints)
            st.progress(1.0, "recovered")
    return _Outcome(pruned=pruned, result=result, plan_path=plan_path, recovery=recovery, quality={}, floor=None)


def _export_stage(run: _Run, outcome: _Outcome, example: torch.Tensor,
                  latency: Any) -> tuple[dict[str, Path], dict[str, Any], Any]:
    """model.onnx (parity checked), model.pt2 and the TensorRT engine when asked; (artifacts, exports, parity)."""
    spec, out, pruned = run.spec, run.out, outcome.pruned
    artifacts: dict[str, Path] = {"plan": outcome.plan_path} if "plan" in spec.exports else {}
    exports: dict[str, Any] = {}
    with run.stage("export") as st:
        onnx_path = out / "model.onnx"
        exports["onnx"] = export_onnx(pruned, example, onnx_path, dynamic_batch=spec.dynamic_batch,
                                      cache_dir=spec.cache_dir, input_names=[i.name for i in run.inputs])
        artifacts["onnx"] = onnx_path
        st.progress(0.4, "ONNX exported; checking parity")
        parity = check_parity(pruned, onnx_path, run.inputs, tolerance=spec.parity_tolerance, seed=spec.seed)
        if not parity.passed:
            raise ParityError(
                f"ONNX Runtime disagrees with PyTorch: relative max difference {parity.relative_diff:.2e} "
                f"(tolerance {parity.tolerance:.0e}), top-1 agreement {parity.top1_agreement}"
            )
        if "pt2" in spec.exports:
            st.progress(0.7, "torch.export")
            try:
                export_pt2(pruned, example, out / "model.pt2")
                artifacts["pt2"] = out / "model.pt2"
                exports["pt2"] = {"ok": True}
            except Exception as exc:  # a .pt2 is a convenience; its failure is reported, not fatal
                if machine_limit(exc):
                    raise
                exports["pt2"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        if family_of(pruned) is not None:
            st.progress(0.75, "saving the Hugging Face checkpoint")
            try:
                exports["hf_checkpoint"] = save_pruned_archive(pruned, out / "model-hf.zip")
                artifacts["hf_checkpoint"] = out / "model-hf.zip"
            except InvalidRequest as exc:  # widths the stock config cannot hold: the ONNX model still stands
                exports["hf_checkpoint"] = {"ok": False, "error": str(exc)}
        if spec.target.runtime == "tensorrt":
            st.progress(0.8, "building the TensorRT engine")
            from secateurs.engine.latency.tensorrt_backend import export_engine

            exports["tensorrt"] = export_engine(onnx_path, run.shape, out, precision=spec.target.precision,
                                                target=latency, seed=spec.seed)
            artifacts.update(tensorrt=out / "model.plan", tensorrt_log=out / "model.plan.log")
    return artifacts, exports, parity


def _report(run: _Run, *, started_at: datetime, started: float, outcome: _Outcome, example: torch.Tensor,
            baseline_size: dict[str, Any], search_report: dict[str, Any] | None, latency: Any, before: Any,
            after: Any, parity: Any, exports: dict[str, Any], roles: DataRoles,
            measured: dict[str, Any]) -> dict[str, Any]:
    """report.json (engine/report/schema.json), from the figures measured in this job."""
    spec, shape, pruned, result = run.spec, run.shape, outcome.pruned, outcome.result
    pruned_size = {"params": count_params(pruned), "macs": count_macs(pruned, example),
                   "onnx_bytes": file_bytes(run.out / "model.onnx")}
    q = spec.budget.percentile if spec.budget is not None else spec.target.percentile
    final = Measurement(latency_ms=after.percentile(q), speedup=before.percentile(q) / after.percentile(q),
                        size_bytes=pruned_size["onnx_bytes"], params=pruned_size["params"], macs=pruned_size["macs"])
    shortfall = budget_shortfall(final, spec.budget) if spec.budget is not None else None
    floor_met = outcome.floor is None or outcome.floor["met"]
    fingerprint = latency.fingerprint
    return {
        "schema_version": REPORT_VERSION,
        "job": {"id": spec.job_id, "started_at": started_at.isoformat(),
                "finished_at": datetime.now(timezone.utc).isoformat(), "seconds": round(time.perf_counter() - started, 3)},
        "model": {"arch": spec.model.arch, "kwargs": dict(spec.model.arch_kwargs), "input_shape": list(shape),
                  "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in run.inputs],
                  "output": output_names(pruned)[0], "outputs": list(output_names(pruned)),
                  "task": TASKS[run.scored], **({"graph": pruned.graph_note} if hasattr(pruned, "graph_note") else {}),
                  "weights_sha256": _sha256(spec.model.weights)},
        "pruning": {"ratio": spec.ratio, "importance": spec.importance, "round_to": spec.round_to,
                    "min_channels": spec.min_channels, "groups": result.plan.groups, "heads": result.plan.heads,
                    "dropped_blocks": result.plan.dropped},
        "budget": spec.budget.to_dict() if spec.budget is not None else None,
        # judged on the final interleaved benchmark below and the evaluation set: the figures the user receives
        "budget_met": (shortfall == 0 and floor_met) if spec.budget is not None else None,
        "budget_shortfall": shortfall,
        "target": {"runtime": spec.target.runtime, "threads": spec.target.threads, "percentile": q,
                   "batch": shape[0], "precision": spec.target.precision,
                   "probe": spec.target.probe_name, "probe_address": spec.target.probe_address,
                   # every latency figure of the job (baseline, search, verification, benchmark)
                   "measured_on": {**latency.where, "device_id": fingerprint["id"]}},
        "device": fingerprint,
        "protocol": {**vars(spec.protocol), "interleaved": True},
        "latency": {"baseline": before.to_dict(), "compressed": after.to_dict(),
                    "speedup": before.percentile(q) / after.percentile(q), "speedup_mean": before.mean_ms / after.mean_ms},
        "size": {"baseline": baseline_size, "compressed": pruned_size,
                 "macs_reduction": baseline_size["macs"] / max(pruned_size["macs"], 1),
                 "params_reduction": baseline_size["params"] / max(pruned_size["params"], 1)},
        "parity": parity.to_dict(),
        # on the evaluation set, which neither the search nor recovery saw; accuracy needs labels,
        # agreement and KL are fidelity to the unpruned model
        "quality": outcome.quality,
        "accuracy_floor": outcome.floor,
        "recovery": outcome.recovery,
        "data": {"source": spec.data.source if spec.data else "synthetic",
                 "labelled": roles.evaluation.labelled, **roles.summary,
                 "note": None if spec.data else "no data: quality is fidelity to the original model on generated "
                                                "inputs, not accuracy"},
        "search": search_report,
        # what this run measured: the server turns these into its Prometheus counters
        "measurements": measured,
        "exports": exports,
        "stage_seconds": run.timings,
        "versions": _versions(),
        "seed": spec.seed,
    }


def _measurement_windows(before: int) -> dict[str, Any]:
    """When this job measured (wall clock; merged where back to back) and how long it waited for
    other jobs' compute to finish first (engine/latency/devicelock.py)."""
    merged: list[list[float]] = []
    for start, end in devicelock.windows()[before:]:
        if merged and start - merged[-1][1] < 0.001:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return {"windows": [[round(a, 4), round(b, 4)] for a, b in merged], "waited_seconds":
            round(devicelock.waited_seconds(), 3)}


def _load_average() -> float | None:
    """The host's one-minute load average: a benchmark under other load says so."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _write_html(report: dict[str, Any], path: Path, on_event: EventSink) -> Path | None:
    """report.html beside report.json; a plot that cannot be drawn must not cost the job its model,
    so a failure is a log event and the job goes on without the page."""
    start = time.perf_counter()
    try:
        from secateurs.engine.report.html import write_report_html  # matplotlib: loaded only here

        write_report_html(report, path)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        on_event(Event(stage="report", kind="log", message=f"report.html not written: {type(exc).__name__}: {exc}"))
        return None
    on_event(Event(stage="report", kind="log", message=f"report.html written in {time.perf_counter() - start:.1f} s"))
    return path


def _sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _recover(spec: CompressSpec, model: Any, pruned: Any, example: torch.Tensor, calib: Calibration,
             group_ratios: Any, prune_spec: PruneSpec, out: Path, on_event: EventSink,
             cancel: CancelCheck | None, checkpoints: Path) -> tuple[Any, dict[str, Any], Path]:
    """Fine-tune and distil the pruned model (progressively when asked); the original is the teacher.
    Per-epoch figures are on the calibration images; the job's own evaluation follows separately."""
    from dataclasses import asdict

    from secateurs.engine.intake.data import load_dataset, make_loader
    from secateurs.engine.recover.progressive import progressive
    from secateurs.engine.recover.train import recover

    recipe = spec.recovery
    if spec.train_data is not None:
        train_set = load_dataset(spec.train_data, spec.inputs)  # boxes unread (labels_for_output)
    else:  # label-free: distillation alone, on generated inputs
        train_set = generated_dataset(spec.inputs, max(512, recipe.batch_size * 8), spec.seed,
                                      input_distribution(model))
    loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=spec.seed,
                         drop_last=len(train_set) > recipe.batch_size)
    # No labels (generated inputs, or masks the search does not read): figures of fidelity alone
    val = list(zip(calib.inputs, calib.labels or [None] * len(calib.inputs)))
    plan_path = out / "plan.json"
    if recipe.progressive_steps > 1:
        target = spec.ratio if group_ratios is None else dict(group_ratios)
        result = progressive(model, example, target, loader, recipe, prune_spec=prune_spec, val=val,
                             on_event=on_event, cancel=cancel, checkpoint_dir=checkpoints)
        pruned, steps = result.model, result.steps
        write_plan(result.plan, plan_path)
    else:
        steps = [recover(pruned, model, loader, recipe, val=val, on_event=on_event, cancel=cancel,
                         checkpoint_dir=checkpoints)]
    last = steps[-1]
    history = [dict(row, step=i + 1) for i, r in enumerate(steps) for row in r.history]
    note = last.note.replace("on the validation data", "on the calibration images, per epoch (the job's "
                             "reported quality is on the evaluation set, which recovery never saw)")
    return pruned, {
        "recipe": asdict(recipe), "history": history, "metrics": last.metrics, "label_free": last.label_free,
        "note": note, "seconds": sum(r.seconds for r in steps), "resumed_from_epoch": last.resumed_from_epoch,
        "train_samples": len(train_set),
    }, plan_path


def _accuracy_floor(spec: CompressSpec, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """max_accuracy_drop against the evaluation set: accuracy with labels, mIoU with masks, mAP with boxes,
    else top-1 agreement."""
    if spec.budget is None or spec.budget.max_accuracy_drop is None:
        return None
    if after.get("accuracy") is not None:
        drop, measure = before["accuracy"] - after["accuracy"], "accuracy"
    elif after.get("miou") is not None:
        drop, measure = before["miou"] - after["miou"], "mean IoU (per-pixel labels)"
    elif after.get("map") is not None:
        drop, measure = before["map"] - after["map"], "COCO box mAP@[.50:.95]"
    else:
        drop, measure = 1.0 - after["agreement"], "top-1 agreement with the original (no labels)"
    limit = spec.budget.max_accuracy_drop
    return {"max_drop": limit, "drop": drop, "measured_as": measure, "met": drop <= limit,
            "missed_by": max(0.0, drop - limit), "samples": after["samples"]}


def _where(where: dict[str, Any]) -> str:
    if where.get("kind") != "probe":
        return "this host"
    return f"the probe {where['name']} ({where['address']})" if where.get("name") else f"the probe at {where['address']}"


def _search_section(result: Any, spec: CompressSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "budget": spec.budget.to_dict(), "budget_met": result.budget_met, "reason": result.reason,
        "chosen": result.chosen, "quality_measured_on": "calibration images (the search's own; the job's reported "
                                                        "quality is on the evaluation set)",
        "baseline": asdict(result.baseline), "final": asdict(result.final),
        "quality_before": result.quality_before, "quality_after": result.quality_after,
        "groups": result.groups, "trace": [c.to_dict() for c in result.trace], "uniform": result.uniform,
        "latency_model": result.latency_model, "cache": result.cache, "depth": spec.depth, "blocks": result.blocks,
    }


_SEARCH_FILE = "search.json"


def _search_key(spec: CompressSpec, model: torch.nn.Module, example: Batch) -> str:
    """What a saved search result must match to be reused: the whole spec but its out_dir, and the weights."""
    from dataclasses import asdict

    from secateurs.engine.search.sensitivity import model_identity

    fields = {k: v for k, v in asdict(spec).items() if k != "out_dir"}
    return hashlib.sha256(f"{sorted(fields.items())!r}|{model_identity(model, spec.model.arch, shape_key(example))}"
                          .encode()).hexdigest()[:24]


def _save_search(out: Path, key: str, section: dict[str, Any]) -> None:
    """Keep the search's outcome beside the job's checkpoints: a resumed job skips the search,
    and its recovery checkpoints fit the same plan."""
    tmp = out / (_SEARCH_FILE + ".tmp")
    tmp.write_text(json.dumps({"version": REPORT_VERSION, "key": key, "section": section}, default=str))
    tmp.replace(out / _SEARCH_FILE)  # atomic: an interruption never leaves half a file


def _load_search(out: Path, key: str) -> dict[str, Any] | None:
    path = out / _SEARCH_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != REPORT_VERSION or saved.get("key") != key:
            return None
        section = saved["section"]
        return section if isinstance(section, dict) and "chosen" in section and "trace" in section else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # unreadable: search again


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch_pruning

    from secateurs import __version__

    return {"secateurs": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torch_pruning": torch_pruning.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
