"""CreateJobRequest -> CompressSpec: the request's own checks, then the job's (engine/validate.py).

What only a request can get wrong is checked here: ids, labels, blob ids, what the operator allowed
(probes, modules, data roots), wire conventions (0 or unset: the default). Everything a job spec
can get wrong is checked by the engine's one validator, the same one the CLI's specs pass, and its
refusals are re-raised under the request's field names (wire_field).

Each refusal is an InvalidRequest naming the request field (proto path), so the client sees
INVALID_ARGUMENT with a BadRequest field violation. A job asks for exactly one of pruning.ratio,
pruning.group_ratios or a budget (the search picks the ratios). Data maps onto DataSpecs
(api/data_sources.py). The target's runtime must be available on this server
(FAILED_PRECONDITION with the reason) unless the job measures on a probe, asked when the job runs.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from secateurs.api.data_sources import data_specs
from secateurs.engine.intake.models import check_model_size, module_admitted
from secateurs.engine.intake.zoo import ZOO
from secateurs.engine.spec import (DEFAULT_INPUT_NAME, INPUT_DTYPES, CompressSpec, InputSpec, ModelSpec, ProtocolSpec,
                                   RecoverySpec, TargetSpec, validate_protocol, validate_recovery_spec)
from secateurs.engine.validate import BUDGET_LIMITS, build_spec
from secateurs.errors import InvalidRequest, PermissionDenied, ResourceExhausted
from secateurs.jobs.blobs import BlobStore
from secateurs_client.v1 import compression_pb2 as pb

ARCH_PREFIXES = ("zoo", "torchvision", "timm", "hf", "module")
MAX_INPUT_ELEMENTS = 1 << 26
DEFAULT_MAX_MODEL_PARAMS = 500_000_000  # 2 GB of fp32 weights; the pipeline holds several copies
_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9_.\-/]{0,61}[a-z0-9])?$")
_PLACEHOLDER_OUT = Path("/nonexistent")  # the scheduler sets the real one at start
_JOB_SEED = 0  # the request has no seed; data subsets and recovery use the job's


@dataclass(frozen=True, kw_only=True)
class RequestPolicy:
    """What the operator allowed at start-up; a request can ask for nothing beyond it.

    trust_pickle: accept pickled whole models. allowed_modules: the `--allow-module` entries
    (`module:` architectures; none: every `module:` is refused). max_model_params: the largest
    architecture, counted on the meta device (None: no limit). probes: name -> host:port, the
    only latency probes a job may name. data_root: the resolved directory data.*_uri paths
    must lie in (None: every uri is refused). cache_dir: where the server keeps latency and
    sensitivity measurements, shared by every job it runs (None: each job measures afresh).
    """

    trust_pickle: bool = False
    allowed_modules: tuple[str, ...] = ()
    max_model_params: int | None = DEFAULT_MAX_MODEL_PARAMS
    probes: Mapping[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    cache_dir: Path | None = None


def spec_from_request(req: pb.CreateJobRequest, blobs: BlobStore, policy: RequestPolicy) -> CompressSpec:
    """Validate a request against the server's policy and build the job it asks for (raises
    InvalidRequest, PermissionDenied or ResourceExhausted naming the field)."""
    _check_request_id(req.request_id)
    _check_labels(dict(req.labels))
    inputs = _inputs(req)
    shape = inputs[0].shape
    model = _model(req.model, blobs, policy)
    target = _target(req.target, shape, policy)
    limits = {name: getattr(req.budget, name) for name in BUDGET_LIMITS if req.budget.HasField(name)}
    ratio, group_ratios = _ratios(req.pruning, limits=limits)
    recovery = _recovery(req.recovery) if req.HasField("recovery") else None
    data, train_data = data_specs(req.data, blobs, data_root=policy.data_root, recovery=recovery is not None,
                                  seed=_JOB_SEED)
    pruning = req.pruning
    with _engine_fields():  # the job's own checks (engine/validate.py), under the request's field names
        # 0, "" and empty lists are the wire's "unset": None keeps the spec's default
        spec = build_spec(
            model=model, input_shape=inputs, out_dir=_PLACEHOLDER_OUT, target=target,
            limits=limits,
            ratio=ratio, group_ratios=group_ratios, importance=pruning.importance or None,
            round_to=_bounded("pruning.round_to", pruning.round_to, 1, 1024),
            min_channels=_bounded("pruning.min_channels", pruning.min_channels, 1, 4096),
            depth=pruning.depth or None, exports=tuple(req.exports) or None, protocol=_protocol(req.target.protocol),
            calibration_samples=req.data.calibration_samples or None,
            evaluation_samples=req.data.evaluation_samples or None,
            cache_dir=policy.cache_dir, data=data, train_data=train_data, recovery=recovery, seed=_JOB_SEED)
    # Sized on the meta device, before a worker allocates it (a program is counted when the worker reads it).
    if model.program is None and not model.arch.startswith("module:"):
        with _engine_fields():
            check_model_size(model)
    if spec.target.probe_address is None:  # BackendUnavailable: FAILED_PRECONDITION, with the reason
        from secateurs.engine.latency.runtimes import require

        require(spec.target.runtime)
    return spec


_ENGINE_TO_WIRE = {"protocol": "target.protocol", "model.kwargs": "model.arch_kwargs",
                   "model.weights": "model.weights_blob_id", "model.program": "model.program_blob_id",
                   "ratio": "pruning.ratio",
                   "importance": "pruning.importance", "round_to": "pruning.round_to",
                   "min_channels": "pruning.min_channels", "group_ratios": "pruning.group_ratios",
                   "depth": "pruning.depth",
                   "budget.percentile": "target.percentile",  # the request has one percentile, on the target
                   "recovery.kd_weight": "recovery.distill_kl_weight",
                   "recovery.feature_weight": "recovery.distill_feature_weight",
                   "recovery.attention_weight": "recovery.distill_attention_weight",
                   "data.transform": "data.preset", "calibration_samples": "data.calibration_samples",
                   "evaluation_samples": "data.evaluation_samples"}


def wire_field(field: str | None) -> str | None:
    """The request field (proto path) for a field name the engine reports."""
    if field is None:
        return None
    if field.startswith("group_ratios["):
        return "pruning." + field
    if field.startswith("protocol."):
        return "target." + field
    return _ENGINE_TO_WIRE.get(field, field)


@contextmanager
def _engine_fields() -> Iterator[None]:
    """Re-raise the engine's refusals (a bad value, a limit, what the operator did not allow) under
    the request's field name, the message starting with it."""
    try:
        yield
    except (InvalidRequest, PermissionDenied, ResourceExhausted) as exc:
        field = wire_field(exc.field)
        message = str(exc)
        engine_leaf, wire_leaf = (exc.field or "").rpartition(".")[2], (field or "").rpartition(".")[2]
        if engine_leaf != wire_leaf and message.startswith(engine_leaf + " "):
            message = wire_leaf + message[len(engine_leaf):]  # "kd_weight must be..." under distill_kl_weight
        message = message if not field or message.startswith(field) else f"{field}: {message}"
        exc.args, exc.field = (message,), field
        raise exc from None


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", field=field)


def _check_request_id(request_id: str) -> None:
    if len(request_id) > 128 or not request_id.isprintable():
        raise _bad("request_id", "must be at most 128 printable characters")


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > 32:
        raise _bad("labels", "at most 32 labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise _bad(f"labels[{key}]", "keys are 1-63 of a-z 0-9 _ . - /, starting and ending alphanumeric")
        if len(value) > 256:
            raise _bad(f"labels[{key}]", "values are at most 256 characters")


def _inputs(req: pb.CreateJobRequest) -> tuple[InputSpec, ...]:
    """input_shape (one float input), or the named `inputs` (then input_shape is empty)."""
    if not req.inputs:
        return (InputSpec(DEFAULT_INPUT_NAME, _input_shape(list(req.input_shape), "input_shape")),)
    if req.input_shape:
        raise _bad("input_shape", "give input_shape or inputs, not both")
    if len(req.inputs) > 16:
        raise _bad("inputs", f"at most 16 inputs, got {len(req.inputs)}")
    inputs = []
    for i, tensor in enumerate(req.inputs):
        where = f"inputs[{i}]"
        if not tensor.name.isidentifier() or not tensor.name.isascii() or len(tensor.name) > 64:
            raise _bad(f"{where}.name", f"{_shown(tensor.name)} is not a name (letters, digits and '_')")
        if tensor.dtype not in ("", *INPUT_DTYPES):
            raise _bad(f"{where}.dtype", f"one of {', '.join(INPUT_DTYPES)}, got {_shown(tensor.dtype)}")
        inputs.append(InputSpec(tensor.name, _input_shape(list(tensor.shape), f"{where}.shape"),
                                tensor.dtype or "float32"))
    if sum(math.prod(i.shape) for i in inputs) > MAX_INPUT_ELEMENTS:
        raise _bad("inputs", f"at most {MAX_INPUT_ELEMENTS} elements in all")
    return tuple(inputs)


def _input_shape(shape: list[int], field: str) -> tuple[int, ...]:
    if not shape:
        raise _bad(field, "required, e.g. [1, 3, 32, 32]")
    if not 2 <= len(shape) <= 5 or any(d < 1 for d in shape):
        raise _bad(field, f"must have 2 to 5 dimensions, each at least 1 (got {shape})")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise _bad(field, f"at most {MAX_INPUT_ELEMENTS} elements")
    return tuple(shape)


def _recovery(r: pb.Recovery) -> RecoverySpec:
    """The recipe a request's recovery asks for; fields it leaves unset keep the engine's defaults.

    Setting the message turns recovery on, so epochs is required (0 is refused).
    """
    base = RecoverySpec()
    spec = RecoverySpec(
        epochs=r.epochs, optimizer=r.optimizer or base.optimizer, lr=r.lr if r.HasField("lr") else None,
        batch_size=r.batch_size or base.batch_size, seed=_JOB_SEED,
        kd_weight=r.distill_kl_weight if r.HasField("distill_kl_weight") else base.kd_weight,
        feature_weight=r.distill_feature_weight, attention_weight=r.distill_attention_weight,
        progressive_steps=r.progressive_steps or base.progressive_steps,
    )
    with _engine_fields():
        validate_recovery_spec(spec)
    return spec


def _model(model: pb.ModelSource, blobs: BlobStore, policy: RequestPolicy) -> ModelSpec:
    if model.program_blob_id:
        return _program(model, blobs, policy)
    if not model.arch:
        raise _bad("model.arch", "required, e.g. 'zoo:resnet20'")
    if len(model.arch) > 256 or not model.arch.isprintable():
        raise _bad("model.arch", "at most 256 printable characters")
    prefix, sep, name = model.arch.partition(":")
    if not sep or not name or prefix not in ARCH_PREFIXES:
        raise _bad("model.arch", f"{_shown(model.arch)} is not '<{'|'.join(ARCH_PREFIXES)}>:<name>'")
    if prefix == "zoo" and name not in ZOO:
        raise _bad("model.arch", f"unknown architecture {_shown(model.arch)}; the zoo has: {', '.join(sorted(ZOO))}")
    if prefix == "module":
        module_name, _, attr = name.partition(":")
        admitted, _ = module_admitted(module_name, attr, policy.allowed_modules)
        if not admitted:
            raise PermissionDenied(
                f"model.arch: {_shown(model.arch)} names code on the server; this server allows "
                f"{'only ' + ', '.join(policy.allowed_modules) if policy.allowed_modules else 'no module'} "
                f"(the operator allows a package with `secateurs serve --allow-module PACKAGE`, or one factory "
                f"with `--allow-module PACKAGE.MODULE:NAME`)", field="model.arch")
    kwargs = _kwargs(model.arch_kwargs) if model.HasField("arch_kwargs") else {}
    weights = blobs.require(model.weights_blob_id, field="model.weights_blob_id") if model.weights_blob_id else None
    return ModelSpec(arch=model.arch, arch_kwargs=kwargs, weights=weights, trust_pickle=policy.trust_pickle,
                     allowed_modules=tuple(policy.allowed_modules), max_params=policy.max_model_params)


def _program(model: pb.ModelSource, blobs: BlobStore, policy: RequestPolicy) -> ModelSpec:
    """An uploaded torch.export program instead of an architecture; its file is read in the worker."""
    if model.arch:
        raise _bad("model.arch", "give model.arch or model.program_blob_id, not both")
    if model.HasField("arch_kwargs") and model.arch_kwargs.fields:
        raise _bad("model.arch_kwargs", "a program takes no constructor arguments")
    program = blobs.require(model.program_blob_id, field="model.program_blob_id")
    weights = blobs.require(model.weights_blob_id, field="model.weights_blob_id") if model.weights_blob_id else None
    return ModelSpec(arch=f"pt2:{model.program_blob_id}", program=program, weights=weights,
                     trust_pickle=policy.trust_pickle, max_params=policy.max_model_params)


def _kwargs(struct: Any) -> dict[str, Any]:
    """Constructor arguments as plain JSON values: numbers, strings, booleans and lists of them.

    No objects (a dict could stand for a config a constructor would act on), and nothing named
    weights*: weights come from the job's blob, and the server never downloads."""
    kwargs = {key: _value(v) for key, v in struct.fields.items()}
    if len(kwargs) > 32:
        raise _bad("model.arch_kwargs", "at most 32 arguments")
    for key, value in kwargs.items():
        where = f"model.arch_kwargs.{key}" if key.isidentifier() and len(key) <= 64 else "model.arch_kwargs"
        if where == "model.arch_kwargs":
            raise _bad(where, f"{_shown(key)} is not an argument name")
        if key.startswith("weights"):
            raise _bad(where, "weights come from model.weights_blob_id; the server never downloads any")
        if not _plain(value):
            raise _bad(where, "arguments are numbers, strings (at most 256 characters), booleans and lists of "
                              "them (at most 64 items), not objects")
    return kwargs


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return len(value) <= 256
    if value is None or isinstance(value, (bool, int, float)):
        return not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, list):
        return depth < 2 and len(value) <= 64 and all(_plain(v, depth + 1) for v in value)
    return False


def _shown(text: str) -> str:
    """A client's string in a message: quoted, and cut short."""
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _value(v: Any) -> Any:
    """A google.protobuf.Value as plain Python; Struct numbers are doubles, constructors want 10, not
    10.0. NaN and infinities stay floats (refused by _plain); an object stays a dict (refused too)."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        n = v.number_value
        return int(n) if math.isfinite(n) and n.is_integer() and abs(n) < 2**53 else n
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "struct_value":
        return {k: _value(x) for k, x in v.struct_value.fields.items()}
    return {"string_value": v.string_value, "bool_value": v.bool_value}.get(kind)


def _ratios(p: pb.Pruning, *, limits: dict[str, float]) -> tuple[float | None, dict[str, float] | None]:
    """Exactly one of pruning.ratio, pruning.group_ratios or a budget; the pruning field is named. An
    accuracy limit alone is no budget: engine/validate.py refuses it, naming budget.max_accuracy_drop."""
    if p.HasField("ratio") and p.group_ratios:
        raise _bad("pruning.ratio", "give pruning.ratio or pruning.group_ratios, not both")
    if set(limits) - {"max_accuracy_drop"}:
        given = "pruning.ratio" if p.HasField("ratio") else "pruning.group_ratios" if p.group_ratios else None
        if given is not None:
            raise _bad(given, f"give a budget or {given}, not both (with a budget the search chooses the ratios)")
        return None, None
    if p.HasField("ratio"):
        if not 0.0 <= p.ratio < 1.0:
            raise _bad("pruning.ratio", f"must be in [0, 1) (got {p.ratio})")
        return p.ratio, None
    if not p.group_ratios and limits:
        return None, None  # an accuracy limit alone: refused with the budget's own message
    if not p.group_ratios:
        raise _bad("pruning.ratio", "required: pruning.ratio, pruning.group_ratios or a budget "
                                    "(budget.latency_ms, speedup, size_bytes, params or macs)")
    for group, r in p.group_ratios.items():
        if not group or not 0.0 <= r < 1.0:
            raise _bad(f"pruning.group_ratios[{group}]", f"ratios must be in [0, 1) (got {r})")
    return None, dict(sorted(p.group_ratios.items()))


def _bounded(field: str, value: int, lo: int, hi: int, *, default: int | None = None) -> int | None:
    if value == 0:
        return default
    if not lo <= value <= hi:
        raise _bad(field, f"must be in [{lo}, {hi}] (got {value})")
    return value


def _target(t: pb.Target, shape: tuple[int, ...], policy: RequestPolicy) -> TargetSpec:
    # runtime, precision, threads and percentile are checked with the rest of the job (engine/validate.py)
    base = TargetSpec()
    batch = _bounded("target.batch", t.batch, 1, 4096, default=0)
    if batch and math.prod((batch, *shape[1:])) > MAX_INPUT_ELEMENTS:
        raise _bad("target.batch", f"batch {batch} makes the input over {MAX_INPUT_ELEMENTS} elements")
    threads = t.threads or base.threads
    address = None
    if t.probe:
        address = policy.probes.get(t.probe)
        if address is None:
            listed = ", ".join(sorted(policy.probes)) or "none (the operator lists them: --probe NAME=HOST:PORT)"
            raise PermissionDenied(f"target.probe: this server lists no probe {_shown(t.probe)}; it lists {listed}",
                                   field="target.probe")
    return TargetSpec(runtime=t.runtime or base.runtime, threads=threads, percentile=t.percentile or base.percentile,
                      precision=t.precision or base.precision, batch=batch, probe_address=address,
                      probe_name=t.probe or None)


def _protocol(p: pb.LatencyProtocol) -> ProtocolSpec:
    """The request's protocol fields over the defaults (0: the default), checked by the engine's bounds."""
    base = ProtocolSpec()
    values: dict[str, Any] = {fd.name: value for fd, value in p.ListFields()}
    spec = ProtocolSpec(**{**{k: getattr(base, k) for k in base.__dataclass_fields__}, **values})
    with _engine_fields():
        validate_protocol(spec)
    return spec
