"""Export: ONNX (checked, parity-tested against PyTorch) and torch.export (.pt2).

Parity is measured on seeded random inputs: the largest absolute difference relative
to the output's scale, and top-1 agreement for classifier outputs. A check that
cannot fail is worthless: when the model's outputs are constant (a randomly built
torchvision ViT has a zero-initialised head, so it outputs zeros for every input),
the last layer gets the same seeded random weights in the PyTorch model and in the
ONNX file's initializer, so the file's graph is compared on non-degenerate values;
the report says so (mode "perturbed-classifier").

An export is a pure function of the model (its classes' code, structure, weights and buffers),
the example's shape and the exporter, and the dynamo exporter takes seconds; with a `cache_dir`
the file is kept under a hash of all of those (EXPORT_CACHE_BYTES at most, least recently used
dropped) and copied out when the same model is exported again. A cached file is the export, not a
figure: what it measures is still measured in the job.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from secateurs.engine.inputs import Batch, generate, shapes, tensors
from secateurs.engine.outputs import Detections, Output, class_scores, output_names, output_tensors
from secateurs.engine.spec import DEFAULT_INPUT_NAME, InputSpec, parse_inputs
from secateurs.engine.latency.devicelock import computing
from secateurs.errors import ParityError, UnsupportedModel, machine_limit

OPSET = 18
INPUT_NAME = DEFAULT_INPUT_NAME
EXPORT_CACHE_BYTES = 1 << 30  # kept exports in all; the least recently used go first


@dataclass(frozen=True, kw_only=True)
class Parity:
    max_abs_diff: float
    output_scale: float
    relative_diff: float
    top1_agreement: float | None
    samples: int
    tolerance: float
    mode: str  # "outputs" | "perturbed-classifier"
    passed: bool
    outputs: dict[str, float] | None = None  # relative difference of each output to its own scale
    reference: str = "float32"  # what both are compared with: "float64", the model run so, or PyTorch's float32
    pytorch_diff: float | None = None  # PyTorch's own float32 relative difference from the float64 reference

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(model: nn.Module, example: Batch, path: Path, *, dynamic_batch: bool = False,
                exporters: Sequence[str] | None = None, cache_dir: Path | None = None,
                input_names: Sequence[str] | None = None) -> dict:
    """Write an ONNX model (opset 18) and check it. Its inputs are `input_names` (default 'input' for
    one input, 'input_0', ... for several), its output the model's own name for it ('logits' from a
    dict) or 'output'; `dynamic_batch` makes dimension 0 of every input and the output dynamic.

    Uses the dynamo-based exporter; falls back to the TorchScript exporter for models it
    cannot trace (`exporters` gives another order). Returns what was used ({"exporter", "opset"}).
    With `cache_dir`, the same model exported before is copied from there (see the module's notes).
    """
    import onnx

    model = model.eval()
    path = Path(path)
    names = list(input_names or _default_names(example))
    cached = _cached_export(cache_dir, model, example, exporters, dynamic_batch, names)
    if cached is not None and cached[0].is_file() and cached[1].is_file():
        shutil.copyfile(cached[0], path)
        os.utime(cached[0])  # recently used
        return json.loads(cached[1].read_text())
    errors = []
    for exporter in exporters or ("dynamo", "torchscript"):
        try:
            with computing():  # seconds of CPU: never while another job measures
                _export(model, example, path, exporter, dynamic_batch, names)
            break
        except Exception as exc:  # each exporter fails in its own ways
            if machine_limit(exc):
                raise  # a full disk or memory: the machine's limit, not the model's
            errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    else:
        raise UnsupportedModel("ONNX export failed: " + " | ".join(errors))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise UnsupportedModel(f"exported ONNX model is invalid: {exc}") from exc
    info = {"exporter": exporter, "opset": OPSET, "dynamic_batch": dynamic_batch}
    if cached is not None:
        _keep_export(path, info, *cached)
    return info


def _default_names(example: Batch) -> list[str]:
    parts = tensors(example)
    return [INPUT_NAME] if len(parts) == 1 else [f"{INPUT_NAME}_{i}" for i in range(len(parts))]


def _cached_export(cache_dir: Path | None, model: nn.Module, example: Batch, exporters: Sequence[str] | None,
                   dynamic_batch: bool, names: list[str]) -> tuple[Path, Path] | None:
    """Where the export of this model would be kept (file, info), or None without a cache."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256()
    classes = sorted({type(m) for m in model.modules()}, key=lambda t: f"{t.__module__}.{t.__qualname__}")
    for cls in classes:  # the code the exporter traces, not only the names
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        digest.update(f"{cls.__module__}.{cls.__qualname__}\n{source}".encode())
    digest.update(json.dumps([torch.__version__, OPSET, list(exporters or ()), dynamic_batch, names,
                              list(output_names(model)), [list(s) for s in shapes(example)],
                              [str(t.dtype) for t in tensors(example)], repr(model)]).encode())
    for name, tensor in list(model.state_dict(keep_vars=False).items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    folder = Path(cache_dir) / "exports"
    return folder / f"{digest.hexdigest()}.onnx", folder / f"{digest.hexdigest()}.json"


def _keep_export(path: Path, info: dict, file: Path, info_file: Path) -> None:
    """Keep a copy of a checked export (written beside, then renamed: readers never see half a file)."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(path, partial)
        info_file.write_text(json.dumps(info))
        os.replace(partial, file)
        total = 0
        for kept in sorted(file.parent.glob("*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True):
            total += kept.stat().st_size
            if total > EXPORT_CACHE_BYTES and kept != file:
                kept.unlink(missing_ok=True)
                kept.with_suffix(".json").unlink(missing_ok=True)
    except OSError:
        pass  # a cache that cannot be written costs time on the next export, nothing else


def _export(model: nn.Module, example: Batch, path: Path, exporter: str, dynamic_batch: bool,
            names: list[str]) -> None:
    quiet = io.StringIO()
    args, outputs = tensors(example), list(output_names(model))
    with warnings.catch_warnings(), redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if exporter == "dynamo":
            reuse_torchlib_registry()
            batch = torch.export.Dim("batch", min=1, max=4096)
            dynamic = tuple({0: batch} for _ in args) if dynamic_batch else None
            sample = tuple(t.repeat(2, *([1] * (t.dim() - 1))) for t in args) if dynamic_batch else args
            program = torch.onnx.export(
                model, sample, dynamo=True, opset_version=OPSET, input_names=names,
                output_names=outputs, dynamic_shapes=dynamic, verbose=False, optimize=True,
            )
            program.save(str(path), external_data=False)
        else:
            axes = {name: {0: "batch"} for name in (*names, *outputs)} if dynamic_batch else None
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=names, output_names=outputs, dynamic_axes=axes)


def reuse_torchlib_registry() -> None:
    """torch 2.14's exporter builds its registry of ONNX functions from torchlib on every call: 0.6-1 s
    here, a third of a ResNet-20 export, paid by every candidate verified. Built once per process and
    opset instead; each call gets its own copy of the mapping, so an export given custom functions
    registers them in its copy only. Where the exporter's internals differ, nothing is changed."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry_class = getattr(_registration, "ONNXRegistry", None)
    build = getattr(registry_class, "from_torchlib", None)
    if build is None or getattr(build, "reused", False):
        return
    built: dict[tuple[type, int], Any] = {}

    def from_torchlib(cls: type, opset_version: int = _registration._constants.TORCHLIB_OPSET) -> Any:
        key = (cls, opset_version)
        if key not in built:
            built[key] = build.__func__(cls, opset_version)
        registry = cls()
        registry._opset_version = built[key]._opset_version
        registry.functions = {target: list(metas) for target, metas in built[key].functions.items()}
        return registry

    from_torchlib.reused = True  # type: ignore[attr-defined]
    registry_class.from_torchlib = classmethod(from_torchlib)


def _last_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


def _perturb_last_layer(model: nn.Module, onnx_path: Path, generator: torch.Generator) -> tuple[nn.Module, Path]:
    """Give the last layer the same seeded random weights in a copy of the model and in a copy
    of the ONNX file (its initializer, found by name or by shape), so the file itself is tested."""
    import onnx
    from onnx import numpy_helper

    found = _last_layer(model)
    if found is None:
        raise UnsupportedModel("model outputs are constant and it has no layer to perturb for a parity check")
    name, layer = found
    model = copy.deepcopy(model)
    layer = model.get_submodule(name)
    weight = torch.randn(layer.weight.shape, generator=generator) * 0.05
    proto = onnx.load(str(onnx_path))
    shape, shape_t = tuple(weight.shape), tuple(weight.shape[::-1])
    candidates = [i for i in proto.graph.initializer if i.name == f"{name}.weight"] or [
        i for i in proto.graph.initializer if tuple(i.dims) in (shape, shape_t)
        and np.allclose(numpy_helper.to_array(i).reshape(-1), 0 if not layer.weight.any() else np.nan)
    ]
    if len(candidates) != 1:
        raise UnsupportedModel(f"outputs are constant and the ONNX weight of {name!r} cannot be located "
                               f"for a meaningful parity check")
    init = candidates[0]
    array = weight.numpy() if tuple(init.dims) == shape else weight.numpy().T
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array.astype(np.float32)), init.name))
    with torch.no_grad():
        layer.weight.copy_(weight)
    patched = Path(onnx_path).with_suffix(".parity.onnx")
    onnx.save(proto, str(patched))
    return model, patched


# ONNX Runtime's kernels sum in another order than PyTorch's, so its rounding differs: an ONNX file is
# faithful when its error from the exact result is within the tolerance, or no larger than this multiple
# of PyTorch's own float32 error (a model whose activations run to thousands rounds at 1e-3 in both).
FLOAT32_MARGIN = 4.0


def check_parity(model: nn.Module, onnx_path: Path, inputs: Sequence[InputSpec] | tuple[int, ...], *,
                 tolerance: float = 1e-3, batches: int = 4, seed: int = 0) -> Parity:
    """Compare ONNX Runtime with PyTorch on seeded random inputs (`inputs`: the model's, or one float
    input's shape), every output against its own scale. Both are compared with the model run in float64
    (the exact result, where the model runs so): ONNX Runtime's difference from it is the figure, and
    PyTorch's own float32 difference (`pytorch_diff`) bounds what rounding alone explains. The ONNX model's
    inputs are fed in order, whatever their names; its outputs are read in the model's order."""
    generator = torch.Generator().manual_seed(seed)
    specs = parse_inputs(inputs)
    samples = [generate(specs, generator=generator) for _ in range(batches)]
    refs = _reference(model, samples)
    mode, patched = "outputs", None
    scale = max(float(r[0].abs().max()) for r in refs)
    if max(float(r[0].std()) if r[0].numel() > 1 else 0.0 for r in refs) < 1e-6 * max(scale, 1.0):
        # constant outputs: a comparison of them proves nothing
        model, patched = _perturb_last_layer(model, onnx_path, generator)
        onnx_path, mode = patched, "perturbed-classifier"
        refs = _reference(model, samples)
    exact = _exact_reference(model, samples)
    names = output_names(model)
    truth = exact or refs
    scales = [max(max(float(r[k].abs().max()) for r in truth), 1e-12) for k in range(len(names))]
    try:
        got = _onnx_outputs(onnx_path, samples)
    finally:
        if patched is not None:
            patched.unlink(missing_ok=True)
    for outputs, ref in zip(got, refs):
        for k, (g, r) in enumerate(zip(outputs, ref)):
            if g.shape != r.shape:
                raise ParityError(f"ONNX output {names[k]!r} has shape {tuple(g.shape)}, PyTorch {tuple(r.shape)}")
    ort_diffs, torch_diffs = _largest_diffs(got, truth), _largest_diffs(refs, truth) if exact else None
    per_output = {name: d / s for name, d, s in zip(names, ort_diffs, scales)}
    worst = max(range(len(names)), key=lambda k: per_output[names[k]])
    relative = per_output[names[worst]]
    pytorch = max(d / s for d, s in zip(torch_diffs, scales)) if torch_diffs else None
    agree = total = 0
    for outputs, ref in zip(got, truth):
        rows, ref_rows = _score_rows(outputs), _score_rows(ref)
        if ref_rows is not None:
            agree += int((rows.argmax(1) == ref_rows.argmax(1)).sum())
            total += ref_rows.shape[0]
    top1 = agree / total if total else None
    allowed = max(tolerance, FLOAT32_MARGIN * pytorch) if pytorch is not None else tolerance
    passed = relative <= allowed and (top1 is None or top1 >= 0.99 or relative <= allowed / 10)
    return Parity(max_abs_diff=ort_diffs[worst], output_scale=scales[worst], relative_diff=relative,
                  top1_agreement=top1, samples=sum(tensors(x)[0].shape[0] for x in samples), tolerance=tolerance,
                  mode=mode, passed=passed, outputs=per_output, reference="float64" if exact else "float32",
                  pytorch_diff=pytorch)


def _onnx_outputs(onnx_path: Path, samples: Sequence[Batch]) -> list[list[torch.Tensor]]:
    session = _cpu_session(onnx_path)
    feeds_names = [i.name for i in session.get_inputs()]
    return [[torch.from_numpy(a).float() for a in session.run(None, dict(zip(feeds_names, (
        t.numpy() for t in tensors(x)))))] for x in samples]


def _largest_diffs(got: Sequence[Sequence[torch.Tensor]], truth: Sequence[Sequence[torch.Tensor]]) -> list[float]:
    """Each output's largest absolute difference from `truth` over the samples."""
    return [max(float((g[k].double() - t[k].double()).abs().max()) for g, t in zip(got, truth))
            for k in range(len(truth[0]))]


def _exact_reference(model: nn.Module, samples: Sequence[Batch]) -> list[tuple[torch.Tensor, ...]] | None:
    """The model's outputs computed in float64 (a copy of it; integer inputs stay as they are), or None
    where the model cannot run so (an operator without a float64 kernel)."""
    try:
        return _reference(copy.deepcopy(model).double(), samples, torch.float64)
    except (RuntimeError, TypeError, NotImplementedError):
        return None


def _score_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Rows of class scores for the top-1 check; None when the output has no classes on dimension 1."""
    if len(parts) > 1:
        return class_scores(Detections(*parts))
    return class_scores(parts[0]) if parts[0].dim() >= 2 and parts[0].shape[1] > 1 else None


def _reference(model: nn.Module, samples: Sequence[Batch],
               dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, ...]]:
    """The model's outputs on `samples` in `dtype`; for another dtype than float32, its floating inputs too."""
    cast = dtype != torch.float32
    with torch.no_grad():
        return [tuple(t.to(dtype) for t in output_tensors(_call(model, tuple(
            t.to(dtype) if cast and t.is_floating_point() else t for t in tensors(x))))) for x in samples]


def _cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _call(model: nn.Module, x: Batch) -> Output:
    return model(*tensors(x))


def export_pt2(model: nn.Module, example: Batch, path: Path) -> None:
    """torch.export the model and save it as a .pt2 archive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), tensors(example))
        torch.export.save(program, str(path))

