"""Runtimes behind one interface: real ONNX Runtime and PyTorch (eager, torch.compile) on the CPU
here; ONNX Runtime CUDA, TensorRT and torch CUDA on an NVIDIA GPU, skipped elsewhere with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from secateurs.engine.export import export_onnx
from secateurs.engine.latency.fingerprint import device_fingerprint
from secateurs.engine.latency.layers import LayerShape, layer_module
from secateurs.engine.latency.runtimes import (GPU_RUNTIMES, RuntimeSettings, check_settings, runtime_statuses,
                                               unavailable_reason)
from secateurs.engine.latency.target import LocalTarget
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.spec import RUNTIMES, ProtocolSpec
from secateurs.errors import BackendUnavailable, InvalidRequest

FAST = ProtocolSpec(warmup_runs=2, warmup_seconds=0.0, window=10, min_samples=30, max_seconds=5.0, tolerance=0.05)
SHAPE = (1, 3, 32, 32)


def _needs(runtime: str) -> None:
    reason = unavailable_reason(runtime)
    if reason is not None:
        pytest.skip(f"{runtime} cannot run here: {reason}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    tmp = tmp_path_factory.mktemp("runtimes")
    torch.manual_seed(0)
    out = {}
    for name, kwargs in (("small", {}), ("big", {"width": 32})):
        model = build_architecture("zoo:resnet20", kwargs).eval()
        export_onnx(model, torch.randn(SHAPE), tmp / f"{name}.onnx")
        out[name] = (model, tmp / f"{name}.onnx")
    return out


def _orders(runtime: str, models: dict, precision: str = "fp32") -> tuple:
    """Both models measured interleaved on `runtime`; the bigger one (4x the MACs) is slower."""
    target = LocalTarget(RuntimeSettings(runtime=runtime, precision=precision, threads=1))
    loaded = [target.load(SHAPE, onnx=path, module=model) for model, path in (models["small"], models["big"])]
    small, big = target.measure(loaded, FAST)
    assert small.n >= FAST.min_samples and big.p50_ms > small.p50_ms
    return target, loaded, small, big


def test_every_runtime_says_whether_it_can_run_and_why_not() -> None:
    statuses = {name: (ok, why) for name, ok, why in runtime_statuses()}
    assert set(statuses) == set(RUNTIMES)
    assert statuses["onnxruntime-cpu"] == (True, "") and statuses["torch-cpu"] == (True, "")
    for name, (ok, why) in statuses.items():
        assert ok or why, name  # unavailable always comes with a reason
    if not statuses["tensorrt"][0]:
        assert "tensorrt" in statuses["tensorrt"][1].lower() or "cuda" in statuses["tensorrt"][1].lower()


@pytest.mark.parametrize(("settings", "field", "words"), [
    (RuntimeSettings(runtime="tpu"), "target.runtime", "unknown runtime"),
    (RuntimeSettings(precision="int8"), "target.precision", "not supported"),
    (RuntimeSettings(precision="fp16"), "target.precision", "fp16 needs a GPU runtime"),
    (RuntimeSettings(runtime="torch-cpu", precision="fp16"), "target.precision", "fp16 needs a GPU runtime"),
    (RuntimeSettings(threads=0), "target.threads", "threads must be in"),
])
def test_settings_no_runtime_can_honour_are_refused(settings: RuntimeSettings, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as err:
        check_settings(settings)
    assert err.value.field == field


def test_a_missing_runtime_is_refused_with_its_reason() -> None:
    missing = [r for r in GPU_RUNTIMES if unavailable_reason(r)]
    if not missing:
        pytest.skip("every GPU runtime is available here")
    with pytest.raises(BackendUnavailable, match=f"runtime {missing[0]} is unavailable: .+"):
        LocalTarget(RuntimeSettings(runtime=missing[0]))


def test_fingerprint_keys_on_precision_and_runtime() -> None:
    ids = {device_fingerprint(runtime=r, provider="p", threads=2, precision=p)["id"]
           for r in ("onnxruntime-cpu", "torch-cpu") for p in ("fp32", "fp16")}
    assert len(ids) == 4
    assert device_fingerprint(runtime="torch-cpu", provider="p", threads=2)["torch"] == torch.__version__


def test_onnxruntime_cpu_through_the_interface(models) -> None:
    target, _, _, _ = _orders("onnxruntime-cpu", models)
    assert target.fingerprint["provider"] == "CPUExecutionProvider" and target.where == {"kind": "local"}


def test_torch_cpu_measures_the_module_and_leaves_the_thread_setting(models) -> None:
    before = torch.get_num_threads()
    target, loaded, small, _ = _orders("torch-cpu", models)
    assert torch.get_num_threads() == before  # set around each call only
    assert small.components == {}  # nothing timed apart on the CPU
    assert target.fingerprint["provider"] == "torch eager CPU"


def test_torch_compile_cpu_compiles_before_measuring() -> None:
    _needs("torch-compile-cpu")
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()
    target = LocalTarget(RuntimeSettings(runtime="torch-compile-cpu", threads=1))
    backend = target.load(SHAPE, module=tiny)
    assert backend.compile_seconds > 0
    stats = target.measure([backend], FAST)[0]
    assert stats.n >= FAST.min_samples and stats.p50_ms > 0


def test_layers_alone_as_torch_modules() -> None:
    conv = LayerShape(kind="conv", cin=16, cout=32, input_shape=(1, 16, 8, 8), kernel=(3, 3), padding=(1, 1))
    linear = LayerShape(kind="linear", cin=64, cout=10, input_shape=(1, 64))
    assert layer_module(conv)(torch.randn(conv.input_shape)).shape == (1, 32, 8, 8)
    assert layer_module(linear)(torch.randn(linear.input_shape)).shape == (1, 10)


def test_fp16_conversion_keeps_the_outputs(models) -> None:
    import onnx
    import onnxruntime as ort

    from secateurs.engine.latency.fp16 import onnx_to_fp16

    _, path = models["small"]
    half = onnx_to_fp16(path.read_bytes())
    onnx.checker.check_model(onnx.load_from_string(half), full_check=True)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    session = ort.InferenceSession(half, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    got = session.run(None, {"input": x.astype(np.float16)})[0]
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - ref).max() / np.abs(ref).max() < 1e-2


# ---- NVIDIA GPU: real runs where there is one, skipped with the reason elsewhere -----------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_runs_on_the_gpu_without_fallback(models, precision: str) -> None:
    _needs("onnxruntime-cuda")
    target, loaded, _, _ = _orders("onnxruntime-cuda", models, precision)
    assert loaded[0].session.get_providers()[0] == "CUDAExecutionProvider"
    assert target.fingerprint["gpu"]["name"] and target.fingerprint["precision"] == precision


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["torch-cuda", "torch-compile-cuda"])
def test_torch_cuda_times_gpu_compute_apart(models, runtime: str) -> None:
    _needs(runtime)
    target, loaded, small, _ = _orders(runtime, models)
    assert small.components["gpu_compute"]["n"] == small.n
    assert small.components["gpu_compute"]["p50_ms"] <= small.p50_ms  # host to host includes the copies
    if runtime == "torch-cuda":
        assert loaded[0].cuda_graph is True, loaded[0].cuda_graph


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_measured_and_checked_against_onnxruntime(models, tmp_path: Path, precision: str) -> None:
    _needs("tensorrt")
    from secateurs.engine.latency.tensorrt_backend import export_engine

    target, _, small, _ = _orders("tensorrt", models, precision)
    assert small.components["gpu_compute"]["p50_ms"] <= small.p50_ms
    _, path = models["small"]
    engine = export_engine(path, SHAPE, tmp_path, precision=precision, target=target)
    assert engine["ok"] and engine["parity"]["passed"] and engine["gpu"]["compute_capability"]
    assert (tmp_path / "model.plan").stat().st_size > 0 and (tmp_path / "model.plan.log").exists()
    assert "not portable" in engine["portability"] or "only on the GPU model" in engine["portability"]
