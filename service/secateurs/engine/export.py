"""Export: ONNX (checked, parity-tested against PyTorch) and torch.export (.pt2).

Parity is measured on seeded random inputs: the largest absolute difference relative
to the output's scale, and top-1 agreement for classifier outputs. A check that
cannot fail is worthless: when the model's outputs are constant (a randomly built
torchvision ViT has a zero-initialised head, so it outputs zeros for every input),
parity is checked on a copy whose last layer gets seeded random weights, so the
rest of the graph is compared on non-degenerate values; the report says so.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from secateurs.errors import ParityError, UnsupportedModel

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "output"


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

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = False) -> dict:
    """Write an ONNX model (opset 18, input 'input', output 'output') and check it.

    Uses the dynamo-based exporter; falls back to the TorchScript exporter for models it
    cannot trace. Returns what was used ({"exporter", "opset"}).
    """
    import onnx

    model = model.eval()
    path = Path(path)
    errors = []
    for exporter in ("dynamo", "torchscript"):
        try:
            _export(model, example, path, exporter, dynamic_batch)
            break
        except Exception as exc:  # each exporter fails in its own ways
            errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    else:
        raise UnsupportedModel("ONNX export failed: " + " | ".join(errors))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise UnsupportedModel(f"exported ONNX model is invalid: {exc}") from exc
    return {"exporter": exporter, "opset": OPSET, "dynamic_batch": dynamic_batch}


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str, dynamic_batch: bool) -> None:
    quiet = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if exporter == "dynamo":
            dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            sample = example.repeat(2, *([1] * (example.dim() - 1))) if dynamic_batch else example
            program = torch.onnx.export(
                model, (sample,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, verbose=False, optimize=True,
            )
            program.save(str(path), external_data=False)
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)


def _last_layer(model: nn.Module) -> nn.Module | None:
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


def check_parity(model: nn.Module, onnx_path: Path, input_shape: tuple[int, ...], *, tolerance: float = 1e-3,
                 batches: int = 4, seed: int = 0, onnx_factory=None) -> Parity:
    """Compare ONNX Runtime with PyTorch on seeded random inputs.

    `onnx_factory(model, path)` re-exports a model (used for the perturbed-classifier
    mode); it defaults to `export_onnx` with the same example shape.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(input_shape, generator=generator) for _ in range(batches)]
    with torch.no_grad():
        refs = [model(x).float() for x in inputs]
    scale = max(float(r.abs().max()) for r in refs)
    spread = max(float(r.std()) if r.numel() > 1 else 0.0 for r in refs)
    mode = "outputs"
    if spread < 1e-6 * max(scale, 1.0):  # constant outputs: a comparison of them proves nothing
        model = copy.deepcopy(model)
        layer = _last_layer(model)
        if layer is None:
            raise UnsupportedModel("model outputs are constant and it has no layer to perturb for a parity check")
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
        onnx_path = Path(onnx_path).with_suffix(".parity.onnx")
        (onnx_factory or (lambda m, p: export_onnx(m, inputs[0], p)))(model, onnx_path)
        with torch.no_grad():
            refs = [model(x).float() for x in inputs]
        scale = max(float(r.abs().max()) for r in refs)
        mode = "perturbed-classifier"

    session = _cpu_session(onnx_path)
    max_diff, agree, total = 0.0, 0, 0
    for x, ref in zip(inputs, refs):
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0]).float()
        if got.shape != ref.shape:
            raise ParityError(f"ONNX output shape {tuple(got.shape)} differs from PyTorch {tuple(ref.shape)}")
        max_diff = max(max_diff, float((got - ref).abs().max()))
        if ref.dim() == 2 and ref.shape[1] > 1:
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
    if mode == "perturbed-classifier":
        Path(onnx_path).unlink(missing_ok=True)
    relative = max_diff / max(scale, 1e-12)
    top1 = agree / total if total else None
    passed = relative <= tolerance and (top1 is None or top1 >= 0.99 or relative <= tolerance / 10)
    return Parity(max_abs_diff=max_diff, output_scale=scale, relative_diff=relative, top1_agreement=top1,
                  samples=sum(x.shape[0] for x in inputs), tolerance=tolerance, mode=mode, passed=passed)


def _cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export the model and save it as a .pt2 archive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (example,))
        torch.export.save(program, str(path))


def onnx_output_agrees(a: Path, b: Path, input_shape: tuple[int, ...], seed: int = 0) -> float:
    """Max abs difference between two ONNX models on one seeded input (used by tests)."""
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed)).numpy()
    ya = _cpu_session(a).run(None, {INPUT_NAME: x})[0]
    yb = _cpu_session(b).run(None, {INPUT_NAME: x})[0]
    return float(np.abs(ya - yb).max())
