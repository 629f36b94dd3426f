"""The one way a front end makes a job, and the one validator of it. Torch-free.

    spec = build_spec(model=..., input_shape=..., out_dir=..., limits={"speedup": 2.0}, ...)

The CLI (cli.py, from its flags) and the API (api/validate.py, from a request) both call
`build_spec`: a field left None keeps the spec's own default (engine/spec.py, declared once), the
budget is built from the limits given at the target's percentile, and `validate_spec` checks the
whole job, naming the field at fault. `compress` validates again, so a spec that reaches the engine
any other way is held to the same checks. The API names the request's own fields in what it
returns (api/validate.py, wire_field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from secateurs.engine.budget import PERCENTILES, Budget, validate_budget
from secateurs.engine.latency.runtimes import RuntimeSettings, check_settings
from secateurs.engine.spec import (DEPTH_MODES, EXPORTS, IMPORTANCES, CompressSpec, ModelSpec, PruneSpec, TargetSpec,
                                   parse_input_shape, parse_inputs, validate_data_spec, validate_inputs,
                                   validate_protocol, validate_recovery_spec)
from secateurs.errors import InvalidRequest


BUDGET_LIMITS = ("latency_ms", "speedup", "size_bytes", "params", "macs", "max_accuracy_drop")


def build_spec(*, model: ModelSpec, input_shape: str | tuple[int, ...] | list[int], out_dir: Path | str,
               limits: Mapping[str, float | int | None] | None = None, target: TargetSpec | None = None,
               **given: Any) -> CompressSpec:
    """A validated CompressSpec. `limits`: the budget's limits (BUDGET_LIMITS; None or absent: not
    given), held at the target's percentile; no limit given: no budget. `given`: any other field of
    CompressSpec; None keeps the spec's default."""
    target = target or TargetSpec()
    values = {k: v for k, v in (limits or {}).items() if v is not None}
    budget = Budget(**values, percentile=target.percentile) if values else None
    inputs = parse_inputs(input_shape)
    spec = CompressSpec(model=model, input_shape=inputs[0].shape, inputs=inputs, out_dir=Path(out_dir),
                        target=target, budget=budget, **{k: v for k, v in given.items() if v is not None})
    validate_spec(spec)
    return spec


def validate_spec(spec: CompressSpec) -> None:
    """Every check that needs no model, in one place, with the field at fault."""
    parse_input_shape(spec.input_shape)
    validate_inputs(spec.inputs)
    if spec.inputs[0].shape != tuple(spec.input_shape):
        raise InvalidRequest(f"input_shape {'x'.join(map(str, spec.input_shape))} is not the first input's "
                             f"({spec.inputs[0].text()})", field="inputs")
    if spec.target.runtime.startswith("torch") and (len(spec.inputs) > 1 or spec.inputs[0].dtype != "float32"):
        raise InvalidRequest(f"{spec.target.runtime} measures models of one float input; measure "
                             f"{len(spec.inputs)} named inputs on an ONNX runtime", field="target.runtime")
    if spec.target.percentile not in PERCENTILES:  # before the budget's: the budget holds at the target's
        raise InvalidRequest(f"target.percentile: must be one of {', '.join(f'{q:g}' for q in PERCENTILES)} "
                             f"(got {spec.target.percentile:g})", field="target.percentile")
    if spec.budget is not None:  # first: an accuracy limit alone is refused as such, not as a second plan
        validate_budget(spec.budget)
    given = [n for n, v in (("ratio", spec.ratio), ("group_ratios", spec.group_ratios), ("budget", spec.budget))
             if v is not None]
    if len(given) != 1:
        raise InvalidRequest("give exactly one of ratio, group_ratios or budget"
                             + (f" (got {', '.join(given)})" if given else ""), field=given[-1] if given else "budget")
    if spec.budget is not None:
        if spec.budget.is_empty():
            raise InvalidRequest("budget has no limit: give latency_ms, speedup, size_bytes, params or macs",
                                 field="budget")
        validate_prune_spec(PruneSpec(ratio=0.0, importance=spec.importance, round_to=spec.round_to,
                                      min_channels=spec.min_channels))
    else:
        validate_prune_spec(prune_spec(spec))
    if spec.depth not in DEPTH_MODES:
        raise InvalidRequest(f"depth must be one of {', '.join(DEPTH_MODES)}, got {spec.depth!r}", field="depth")
    if spec.depth == "only" and spec.budget is None:
        raise InvalidRequest("depth 'only' needs a budget: the search chooses which blocks to drop", field="depth")
    for data in (spec.data, spec.train_data):
        if data is not None:
            validate_data_spec(data)
    if spec.recovery is not None:
        validate_recovery_spec(spec.recovery)
    if not 1 <= spec.calibration_samples <= 100_000:
        raise InvalidRequest(f"calibration_samples must be in [1, 100000], got {spec.calibration_samples}",
                             field="calibration_samples")
    if spec.evaluation_samples is not None and not 1 <= spec.evaluation_samples <= 10_000_000:
        raise InvalidRequest(f"evaluation_samples must be in [1, 10000000], got {spec.evaluation_samples}",
                             field="evaluation_samples")
    _validate_target(spec)
    unknown = sorted(set(spec.exports) - set(EXPORTS))
    if unknown or "onnx" not in spec.exports:
        raise InvalidRequest(f"exports must include 'onnx' and be among {', '.join(EXPORTS)}; got {list(spec.exports)}",
                             field="exports")
    if len(set(spec.exports)) != len(spec.exports):
        raise InvalidRequest(f"exports repeat a name: {list(spec.exports)}", field="exports")
    if not 0 < spec.parity_tolerance < 1:
        raise InvalidRequest(f"parity tolerance must be in (0, 1), got {spec.parity_tolerance}",
                             field="parity_tolerance")
    validate_protocol(spec.protocol)


def _validate_target(spec: CompressSpec) -> None:
    """Runtime, precision, threads, batch and probe address; whether the runtime exists where the job
    measures is checked when the job opens its target (a GPU or a probe is not looked for here)."""
    t = spec.target
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


def prune_spec(spec: CompressSpec) -> PruneSpec:
    """The ratio pruning a job without a budget asks for."""
    return PruneSpec(ratio=spec.ratio, group_ratios=spec.group_ratios, importance=spec.importance,
                     round_to=spec.round_to, min_channels=spec.min_channels)


def validate_prune_spec(spec: PruneSpec) -> None:
    """Checks that need no model; group names are checked against the graph in `prune`."""
    if (spec.ratio is None) == (spec.group_ratios is None):
        raise InvalidRequest("give exactly one of a uniform ratio or per-group ratios", field="ratio")
    ratios = {"ratio": spec.ratio} if spec.ratio is not None else dict(spec.group_ratios or {})
    for name, r in ratios.items():
        if not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            where = "ratio" if name == "ratio" else f"group_ratios[{name}]"
            raise InvalidRequest(f"{where} must be in [0, 1), got {r!r}", field=where)
    if spec.importance not in IMPORTANCES:
        raise InvalidRequest(f"importance {spec.importance!r} is not one of {', '.join(IMPORTANCES)}",
                             field="importance")
    if spec.round_to < 1:
        raise InvalidRequest(f"round_to must be >= 1, got {spec.round_to}", field="round_to")
    if spec.min_channels < 1:
        raise InvalidRequest(f"min_channels must be >= 1, got {spec.min_channels}", field="min_channels")
