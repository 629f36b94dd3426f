"""compress(spec, on_event, cancel) -> CompressResult: the whole job as one function.

Stages: load -> profile -> prune -> export -> benchmark -> report. Each stage emits
Event(stage, "started"/"progress"/"finished") and checks the cancel token between
units of work. The service only orchestrates this function in a worker process.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from secateurs.engine.budget import Measurement, budget_shortfall, validate_budget
from secateurs.engine.events import CancelCheck, Event, EventSink, check_cancel, ignore_events
from secateurs.engine.export import check_parity, export_onnx, export_pt2
from secateurs.engine.latency.protocol import measurements_taken
from secateurs.engine.latency.runtimes import RuntimeSettings, check_settings
from secateurs.engine.latency.target import open_target
from secateurs.engine.models import check_runs, load_model, parse_input_shape
from secateurs.engine.prune import PruneSpec, prune, validate_prune_spec, write_plan
from secateurs.engine.search import SearchSpec, search
from secateurs.engine.sensitivity import Calibration, measure_quality, recalibrate_batchnorm, reference_outputs
from secateurs.engine.size import count_macs, count_params, file_bytes
from secateurs.engine.spec import DEPTH_MODES, EXPORTS, RUNTIMES, CompressSpec, validate_protocol
from secateurs.errors import InvalidRequest, ParityError

STAGES = ("load", "profile", "search", "prune", "recover", "export", "benchmark", "report")
REPORT_VERSION = 2  # of report_schema.json; docs/observability.md says what changed


@dataclass(frozen=True, kw_only=True)
class CompressResult:
    """What a job produced: the report (also written as report.json) and artifact files
    by kind ("onnx", "pt2", "plan", "report", "report_html")."""

    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


def validate_spec(spec: CompressSpec) -> None:
    """Every check that needs no model, in one place, with the field at fault."""
    parse_input_shape(spec.input_shape)
    given = [n for n, v in (("ratio", spec.ratio), ("group_ratios", spec.group_ratios), ("budget", spec.budget))
             if v is not None]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of ratio, group_ratios or budget"
                             + (f" (got {', '.join(given)})" if given else ""), field=given[-1] if given else "budget")
    if spec.budget is not None:
        validate_budget(spec.budget)
        if spec.budget.is_empty():
            raise InvalidRequest("budget has no limit: give latency_ms, speedup, size_bytes, params or macs",
                                 field="budget")
        validate_prune_spec(PruneSpec(ratio=0.0, importance=spec.importance, round_to=spec.round_to,
                                      min_channels=spec.min_channels))
    else:
        validate_prune_spec(_prune_spec(spec))
    if spec.depth not in DEPTH_MODES:
        raise InvalidRequest(f"depth must be one of {', '.join(DEPTH_MODES)}, got {spec.depth!r}", field="depth")
    if spec.depth == "only" and spec.budget is None:
        raise InvalidRequest("depth 'only' needs a budget: the search chooses which blocks to drop", field="depth")
    from secateurs.engine.data import validate_data_spec

    for data in (spec.data, spec.train_data):
        if data is not None:
            validate_data_spec(data)
    if spec.recovery is not None:
        from secateurs.engine.recover import validate_recovery_spec

        validate_recovery_spec(spec.recovery)
    if not 1 <= spec.calibration_samples <= 100_000:
        raise InvalidRequest(f"calibration_samples must be in [1, 100000], got {spec.calibration_samples}",
                             field="calibration_samples")
    _validate_target(spec)
    if spec.target.percentile not in (50.0, 90.0, 95.0, 99.0):
        raise InvalidRequest(f"percentile must be one of 50, 90, 95, 99, got {spec.target.percentile}",
                             field="target.percentile")
    unknown = sorted(set(spec.exports) - set(EXPORTS))
    if unknown or "onnx" not in spec.exports:
        raise InvalidRequest(f"exports must include 'onnx' and be among {', '.join(EXPORTS)}; got {list(spec.exports)}",
                             field="exports")
    if not 0 < spec.parity_tolerance < 1:
        raise InvalidRequest(f"parity tolerance must be in (0, 1), got {spec.parity_tolerance}",
                             field="parity_tolerance")
    validate_protocol(spec.protocol)


def _validate_target(spec: CompressSpec) -> None:
    """Runtime, precision, threads, batch and probe address; whether the runtime exists where the job
    measures is checked when the job opens its target (a GPU or a probe is not looked for here)."""
    t = spec.target
    if t.runtime not in RUNTIMES:
        raise InvalidRequest(f"runtime {t.runtime!r} is not supported; supported: {', '.join(RUNTIMES)}",
                             field="target.runtime")
    check_settings(RuntimeSettings(runtime=t.runtime, precision=t.precision, threads=t.threads))
    if not 0 <= t.batch <= 4096:
        raise InvalidRequest(f"batch must be in [1, 4096] (0: the input shape's), got {t.batch}", field="target.batch")
    if t.probe_address is not None:
        host, sep, port = t.probe_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"probe address must be host:port, got {t.probe_address!r}",
                                 field="target.probe")
        if t.runtime.startswith("torch-"):
            raise InvalidRequest(f"{t.runtime} measures in the service's process; a probe measures ONNX models "
                                 f"(onnxruntime-cpu, onnxruntime-cuda, tensorrt)", field="target.runtime")


def _prune_spec(spec: CompressSpec) -> PruneSpec:
    return PruneSpec(ratio=spec.ratio, group_ratios=spec.group_ratios, importance=spec.importance,
                     round_to=spec.round_to, min_channels=spec.min_channels)


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


def compress(
    spec: CompressSpec, on_event: EventSink = ignore_events, cancel: CancelCheck | None = None
) -> CompressResult:
    """Prune, export and measure one model. Raises secateurs.errors.* on bad input."""
    validate_spec(spec)
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    measured_before = measurements_taken()
    torch.manual_seed(spec.seed)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    shape = parse_input_shape(spec.input_shape)
    if spec.target.batch:  # the deployment's batch: measured, and exported, at it
        shape = (spec.target.batch, *shape[1:])

    def stage(name: str) -> _Stage:
        return _Stage(name, on_event, cancel, timings)

    with stage("load"):
        model = load_model(spec.model)
        check_runs(model, shape)
        example = torch.randn(shape, generator=torch.Generator().manual_seed(spec.seed))

    with stage("profile") as st:
        # first: a runtime or probe that is not there fails the job before any work, saying why
        latency = open_target(spec.target, seed=spec.seed)
        st.progress(0.1, f"measuring on {_where(latency.where)}, device {latency.fingerprint['id']}")
        baseline_onnx = out / "baseline.onnx"
        baseline_export = export_onnx(model, example, baseline_onnx, dynamic_batch=spec.dynamic_batch)
        st.progress(0.5, "baseline exported")
        baseline_size = {"params": count_params(model), "macs": count_macs(model, example),
                         "onnx_bytes": file_bytes(baseline_onnx)}

    calib = build_calibration(spec, shape)
    search_report = None
    group_ratios = spec.group_ratios
    dropped: list[str] = []
    if spec.budget is not None:
        with stage("search") as st:
            job_key = _search_key(spec, model, shape)
            saved = _load_search(out, job_key)
            if saved is not None:  # an interrupted attempt of this job already searched
                st.progress(1.0, "reusing the search result of the interrupted attempt")
                search_report, group_ratios, dropped = saved
            else:
                searched = search(
                    model, example, baseline_onnx,
                    SearchSpec(budget=spec.budget, target=spec.target, protocol=spec.protocol,
                               importance=spec.importance, round_to=spec.round_to, min_channels=spec.min_channels,
                               cache_dir=spec.cache_dir, arch=spec.model.arch, seed=spec.seed, depth=spec.depth),
                    calib, latency_target=latency, cancel=cancel,
                    on_progress=lambda f, message, data: st.progress(f, message, **data))
                group_ratios, dropped = searched.ratios, searched.dropped
                search_report = _search_section(searched, spec)
                _save_search(out, job_key, search_report, group_ratios, dropped)

    with stage("prune") as st:
        prune_spec = PruneSpec(ratio=spec.ratio if group_ratios is None else None, group_ratios=group_ratios,
                               importance=spec.importance, round_to=spec.round_to, min_channels=spec.min_channels,
                               drop_blocks=tuple(dropped))
        result = prune(model, example, prune_spec, batches=calib.inputs)
        pruned = result.model
        if calib.real and calib.recalibration:
            recalibrate_batchnorm(pruned, calib.recalibration)  # statistics of the narrower layers
            st.progress(0.8, "BatchNorm recalibrated")
        plan_path = write_plan(result.plan, out / "plan.json")
        reference = reference_outputs(model, calib)
        quality = {"before": measure_quality(model, calib, reference).to_dict(),
                   "after": measure_quality(pruned, calib, reference).to_dict()}
        st.progress(1.0, f"{sum(1 for g in result.plan.groups if g['after'] < g['before'])} groups pruned"
                    + (f", {len(dropped)} blocks dropped" if dropped else ""))

    recovery = None
    if spec.recovery is not None:
        with stage("recover") as st:
            pruned, recovery, plan_path = _recover(spec, model, pruned, example, calib, group_ratios, prune_spec,
                                                   out, on_event, cancel)
            quality["after"] = measure_quality(pruned, calib, reference).to_dict()
            st.progress(1.0, "recovered")

    artifacts: dict[str, Path] = {"plan": plan_path}
    exports: dict[str, Any] = {}
    with stage("export") as st:
        onnx_path = out / "model.onnx"
        exports["onnx"] = export_onnx(pruned, example, onnx_path, dynamic_batch=spec.dynamic_batch)
        artifacts["onnx"] = onnx_path
        st.progress(0.4, "ONNX exported; checking parity")
        parity = check_parity(pruned, onnx_path, shape, tolerance=spec.parity_tolerance, seed=spec.seed)
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
                exports["pt2"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        if "plan" not in spec.exports:
            artifacts.pop("plan")
        if spec.target.runtime == "tensorrt":
            st.progress(0.8, "building the TensorRT engine")
            from secateurs.engine.latency.tensorrt_backend import export_engine

            exports["tensorrt"] = export_engine(onnx_path, shape, out, precision=spec.target.precision,
                                                target=latency, seed=spec.seed)
            artifacts.update(tensorrt=out / "model.plan", tensorrt_log=out / "model.plan.log")

    with stage("benchmark") as st:
        models = [latency.load(shape, onnx=path, module=module) for path, module in
                  ((baseline_onnx, model), (onnx_path, pruned))]
        st.progress(0.05, f"measuring baseline and pruned, interleaved, on {_where(latency.where)}")
        before, after = latency.measure(models, spec.protocol, should_stop=lambda: check_cancel(cancel))
        fingerprint = latency.fingerprint
        del models
        latency.close()

    with stage("report"):
        pruned_size = {"params": count_params(pruned), "macs": count_macs(pruned, example),
                       "onnx_bytes": file_bytes(onnx_path)}
        q = spec.budget.percentile if spec.budget is not None else spec.target.percentile
        final = Measurement(latency_ms=after.percentile(q), speedup=before.percentile(q) / after.percentile(q),
                            size_bytes=pruned_size["onnx_bytes"], params=pruned_size["params"],
                            macs=pruned_size["macs"])
        report = {
            "schema_version": REPORT_VERSION,
            "job": {"id": spec.job_id, "started_at": started_at.isoformat(),
                    "finished_at": datetime.now(timezone.utc).isoformat(),
                    "seconds": round(time.perf_counter() - started, 3)},
            "model": {"arch": spec.model.arch, "kwargs": dict(spec.model.arch_kwargs),
                      "input_shape": list(shape), "weights_sha256": _sha256(spec.model.weights)},
            "pruning": {"ratio": spec.ratio, "importance": spec.importance, "round_to": spec.round_to,
                        "min_channels": spec.min_channels, "groups": result.plan.groups,
                        "heads": result.plan.heads, "dropped_blocks": result.plan.dropped},
            "budget": spec.budget.to_dict() if spec.budget is not None else None,
            # judged on the final interleaved benchmark below, the figures the user receives
            "budget_met": budget_shortfall(final, spec.budget) == 0 if spec.budget is not None else None,
            "budget_shortfall": budget_shortfall(final, spec.budget) if spec.budget is not None else None,
            "target": {"runtime": spec.target.runtime, "threads": spec.target.threads, "percentile": q,
                       "batch": shape[0], "precision": spec.target.precision,
                       "probe": spec.target.probe_name, "probe_address": spec.target.probe_address,
                       # every latency figure of the job (baseline, search, verification, benchmark)
                       "measured_on": {**latency.where, "device_id": fingerprint["id"]}},
            "device": fingerprint,
            "protocol": {**vars(spec.protocol), "interleaved": True},
            "latency": {"baseline": before.to_dict(), "compressed": after.to_dict(),
                        "speedup": before.percentile(q) / after.percentile(q),
                        "speedup_mean": before.mean_ms / after.mean_ms},
            "size": {"baseline": baseline_size, "compressed": pruned_size,
                     "macs_reduction": baseline_size["macs"] / max(pruned_size["macs"], 1),
                     "params_reduction": baseline_size["params"] / max(pruned_size["params"], 1)},
            "parity": parity.to_dict(),
            # accuracy needs labelled data; agreement and KL are fidelity to the unpruned model
            "quality": quality,
            "accuracy_floor": _accuracy_floor(spec, quality),
            "recovery": recovery,
            "data": {"source": spec.data.source if spec.data else "synthetic", "labelled": calib.labels is not None,
                     "samples": sum(x.shape[0] for x in calib.inputs),
                     "note": None if calib.real else "no data: quality is fidelity to the original model on "
                                                     "generated inputs, not accuracy"},
            "search": search_report,
            # what this run measured: the server turns these into its Prometheus counters
            "measurements": {"latency": measurements_taken() - measured_before,
                             "cache": dict((search_report or {}).get("cache") or {"hits": 0, "misses": 0})},
            "exports": {"baseline": baseline_export, **exports},
            "stage_seconds": timings,
            "versions": _versions(),
            "seed": spec.seed,
        }
    report_path = out / "report.json"  # written after the stage closes, so its own time is in it
    report_path.write_text(json.dumps(report, indent=2))
    artifacts["report"] = report_path
    html_path = _write_html(report, out / "report.html", on_event)
    if html_path is not None:
        artifacts["report_html"] = html_path
    return CompressResult(report=report, artifacts=artifacts)


def _write_html(report: dict[str, Any], path: Path, on_event: EventSink) -> Path | None:
    """report.html beside report.json; a plot that cannot be drawn must not cost the job its model,
    so a failure is a log event and the job goes on without the page."""
    start = time.perf_counter()
    try:
        from secateurs.engine.report_html import write_report_html  # matplotlib: loaded only here

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
             cancel: CancelCheck | None) -> tuple[Any, dict[str, Any], Path]:
    """Fine-tune and distil the pruned model (progressively when asked); the original is the teacher."""
    from dataclasses import asdict

    from secateurs.engine.data import DataSpec, load_dataset, make_loader
    from secateurs.engine.progressive import progressive
    from secateurs.engine.recover import recover

    recipe = spec.recovery
    if spec.train_data is not None:
        train_set = load_dataset(spec.train_data)
    else:  # label-free: distillation alone, on generated inputs
        train_set = load_dataset(DataSpec(source="synthetic", shape=tuple(example.shape[1:]),
                                          limit=max(512, recipe.batch_size * 8), seed=spec.seed))
    loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=spec.seed,
                         drop_last=len(train_set) > recipe.batch_size)
    labels = calib.labels or [torch.full((x.shape[0],), -1, dtype=torch.long) for x in calib.inputs]
    val = list(zip(calib.inputs, labels))
    checkpoints = out / "checkpoints"
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
    return pruned, {
        "recipe": asdict(recipe), "history": history, "metrics": last.metrics, "label_free": last.label_free,
        "note": last.note, "seconds": sum(r.seconds for r in steps), "resumed_from_epoch": last.resumed_from_epoch,
        "train_samples": len(train_set),
    }, plan_path


def _accuracy_floor(spec: CompressSpec, quality: dict[str, Any]) -> dict[str, Any] | None:
    """max_accuracy_drop against what was measured: accuracy with labels, else top-1 agreement."""
    if spec.budget is None or spec.budget.max_accuracy_drop is None:
        return None
    before, after = quality["before"], quality["after"]
    if after.get("accuracy") is not None:
        drop, measure = before["accuracy"] - after["accuracy"], "accuracy"
    else:
        drop, measure = 1.0 - after["agreement"], "top-1 agreement with the original (no labels)"
    limit = spec.budget.max_accuracy_drop
    return {"max_drop": limit, "drop": drop, "measured_as": measure, "met": drop <= limit,
            "missed_by": max(0.0, drop - limit)}


def build_calibration(spec: CompressSpec, shape: tuple[int, ...]) -> Calibration:
    """Inputs for sensitivity and quality: samples from the job's data, or seeded random inputs."""
    n = spec.calibration_samples
    batch = min(16, n)
    if spec.data is None:
        generator = torch.Generator().manual_seed(spec.seed + 1)
        inputs = [torch.randn((min(batch, n - i),) + shape[1:], generator=generator) for i in range(0, n, batch)]
        return Calibration(inputs=inputs)
    from secateurs.engine.data import load_dataset

    dataset = load_dataset(spec.data)
    if len(dataset) < 2:
        raise InvalidRequest("data has fewer than 2 samples", field="data")
    take = min(2 * n, len(dataset))
    # a seeded random subset: folder order would give a few classes only
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(spec.seed))[:take].tolist()
    xs, ys = zip(*(dataset[i] for i in order))
    if tuple(xs[0].shape) != tuple(shape[1:]):
        raise InvalidRequest(f"data samples have shape {tuple(xs[0].shape)}, the model input is {tuple(shape[1:])}; "
                             f"set the data transform (resize/crop)", field="data")
    x, y = torch.stack(xs), torch.tensor(ys)
    half = max(1, take // 2)
    evaluate, recal = x[:half], x[half:]
    labels = y[:half] if dataset.labelled else None
    return Calibration(inputs=list(evaluate.split(batch)), labels=list(labels.split(batch)) if labels is not None
                       else None, real=True, recalibration=list(recal.split(batch)) if len(recal) else None)


def _where(where: dict[str, Any]) -> str:
    if where.get("kind") != "probe":
        return "this host"
    return f"the probe {where['name']} ({where['address']})" if where.get("name") else f"the probe at {where['address']}"


def _search_section(result: Any, spec: CompressSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "budget": spec.budget.to_dict(), "budget_met": result.budget_met, "reason": result.reason,
        "baseline": asdict(result.baseline), "final": asdict(result.final),
        "quality_before": result.quality_before, "quality_after": result.quality_after,
        "groups": result.groups, "trace": [c.to_dict() for c in result.trace], "uniform": result.uniform,
        "latency_model": result.latency_model, "cache": result.cache, "depth": spec.depth, "blocks": result.blocks,
    }


_SEARCH_FILE = "search.json"


def _search_key(spec: CompressSpec, model: torch.nn.Module, shape: tuple[int, ...]) -> str:
    """What a saved search result must match to be reused: the whole spec but its out_dir, and the weights."""
    from dataclasses import asdict

    from secateurs.engine.sensitivity import model_identity

    fields = {k: v for k, v in asdict(spec).items() if k != "out_dir"}
    return hashlib.sha256(f"{sorted(fields.items())!r}|{model_identity(model, spec.model.arch, shape)}"
                          .encode()).hexdigest()[:24]


def _save_search(out: Path, key: str, section: dict[str, Any], ratios: dict[str, float], dropped: list[str]) -> None:
    """Keep the search's outcome beside the job's checkpoints: a resumed job skips the search,
    and its recovery checkpoints fit the same plan."""
    tmp = out / (_SEARCH_FILE + ".tmp")
    tmp.write_text(json.dumps({"version": REPORT_VERSION, "key": key, "ratios": ratios, "dropped": dropped,
                               "section": section},
                              default=str))
    tmp.replace(out / _SEARCH_FILE)  # atomic: an interruption never leaves half a file


def _load_search(out: Path, key: str) -> tuple[dict[str, Any], dict[str, float], list[str]] | None:
    path = out / _SEARCH_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != REPORT_VERSION or saved.get("key") != key:
            return None
        return (saved["section"], {str(k): float(v) for k, v in saved["ratios"].items()},
                [str(n) for n in saved.get("dropped", [])])
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
