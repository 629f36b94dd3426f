"""TensorRT: an engine built from the ONNX file on this GPU, measured with the TensorRT runtime.

Optional (`pip install 'secateurs[tensorrt]'`: tensorrt and cuda-python; no torch, so a
light probe can run it). The engine is built for exactly the input shape measured (one
optimisation profile, min = opt = max). Precision is the ONNX file's: TensorRT 11 builds
strongly typed networks only, so fp16 converts the model first (engine/latency/fp16.py);
fp32 turns TF32 off, so fp32 means fp32.

Each run is timed host to host (input copied in, engine executed, output copied out, the
stream synchronised), the figure the protocol uses; the GPU compute time of the engine
alone (CUDA events around the execution) is kept as the `gpu_compute` component.

An engine is specific to the GPU model and the TensorRT version that built it; it is
not portable to other GPUs or TensorRT versions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from secateurs.errors import BackendUnavailable, UnsupportedModel

TENSORRT_EXTRA = "pip install 'secateurs[tensorrt]'"

WORKSPACE_BYTES = 4 << 30
PORTABILITY_NOTE = ("a TensorRT engine runs only on the GPU model and TensorRT version that built it; "
                    "build it again for another GPU or TensorRT release")


@lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can build and run engines here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); {_extra()}"
    try:
        cudart = _cudart()
    except ImportError as exc:
        return f"cuda-python is not installed ({exc}); {_extra()}"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return f"no CUDA device is visible ({_error_name(err) if int(err) else 'none found'})"
    return None


def _extra() -> str:
    return TENSORRT_EXTRA


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6 and later
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _error_name(err: Any) -> str:
    return getattr(err, "name", str(err))


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...); raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA call failed: {_error_name(err)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def gpu_identity() -> dict[str, Any]:
    """The GPU device 0 as CUDA sees it: name and compute capability (what an engine is tied to)."""
    prop = _check(_cudart().cudaGetDeviceProperties(0))
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


@dataclass(kw_only=True)
class EngineBuild:
    """A serialized engine and how it was made."""

    plan: bytes
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"
    tensorrt: str = ""
    gpu: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"tensorrt": self.tensorrt, "gpu": self.gpu, "precision": self.precision,
                "input_shape": list(self.input_shape), "build_seconds": round(self.seconds, 3),
                "plan_bytes": len(self.plan), "portability": PORTABILITY_NOTE}


def build_engine(onnx: Path | bytes, input_shape: tuple[int, ...], *, precision: str = "fp32") -> EngineBuild:
    """Parse the ONNX model and build a serialized engine for exactly `input_shape`."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"runtime tensorrt is unavailable: {reason}")
    import tensorrt as trt

    data = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
    if precision == "fp16":
        from secateurs.engine.latency.fp16 import onnx_to_fp16

        data = onnx_to_fp16(data)
    logger = _logger(trt)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10: ask for it; 11: always on
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedModel(f"TensorRT cannot parse the ONNX model: {errors[:1000]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 convolutions
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(input_shape) if i == 0 else tuple(max(d, 1) for d in tensor.shape)
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        tail = " | ".join(line for line in logger.lines[-5:])
        raise UnsupportedModel(f"TensorRT could not build an engine for this model: {tail[:1000]}")
    return EngineBuild(plan=bytes(plan), log=list(logger.lines), seconds=time.perf_counter() - start,
                       precision=precision, tensorrt=trt.__version__, gpu=gpu_identity(),
                       input_shape=tuple(input_shape))


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the build's messages (INFO and above) for the build log."""

    class Capturing(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.INFO):
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return Capturing()


class TensorRTBackend:
    """One engine with fixed inputs; `samples(n)` times n host-to-host runs."""

    def __init__(self, onnx: Path | bytes | None, input_shape: tuple[int, ...], *, precision: str = "fp32",
                 seed: int = 0, build: EngineBuild | None = None) -> None:
        import tensorrt as trt

        self.build = build or build_engine(onnx, input_shape, precision=precision)  # type: ignore[arg-type]
        self.batch, self.precision, self.provider, self.threads = input_shape[0], precision, "TensorRT", 1
        self._cudart = cudart = _cudart()
        self._trt_logger = _logger(trt)
        self._runtime = trt.Runtime(self._trt_logger)  # kept: the engine must not outlive its runtime
        self.engine = self._runtime.deserialize_cuda_engine(self.build.plan)
        if self.engine is None:
            raise BackendUnavailable("TensorRT could not load the engine it built")
        self.context = self.engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._events = (_check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate()))
        self._buffers: list[tuple[str, Any, np.ndarray, bool]] = []  # name, device ptr, host array, is input
        rng = np.random.default_rng(seed)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if is_input:
                self.context.set_input_shape(name, tuple(input_shape))
            shape = tuple(self.context.get_tensor_shape(name))
            host = (rng.standard_normal(shape).astype(dtype) if is_input else np.empty(shape, dtype))
            device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
            self.context.set_tensor_address(name, int(device))
            self._buffers.append((name, device, host, is_input))
        self._gpu_ms: list[float] = []

    def run(self, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One run on given inputs (cast to the engine's types); the outputs by name."""
        for name, _, host, is_input in self._buffers:
            if is_input and inputs and name in inputs:
                np.copyto(host, inputs[name].astype(host.dtype).reshape(host.shape))
        self.samples(1)
        return {name: host.copy() for name, _, host, is_input in self._buffers if not is_input}

    def samples(self, n: int) -> list[float]:
        cudart, stream = self._cudart, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        start, end = self._events
        out: list[float] = []
        self._gpu_ms = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            for _, device, host, is_input in self._buffers:
                if is_input:
                    _check(cudart.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, h2d, stream))
            _check(cudart.cudaEventRecord(start, stream))
            if not self.context.execute_async_v3(int(stream)):
                raise BackendUnavailable("TensorRT failed to execute the engine")
            _check(cudart.cudaEventRecord(end, stream))
            for _, device, host, is_input in self._buffers:
                if not is_input:
                    _check(cudart.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, d2h, stream))
            _check(cudart.cudaStreamSynchronize(stream))
            out.append((time.perf_counter_ns() - t0) / 1e6)
            self._gpu_ms.append(float(_check(cudart.cudaEventElapsedTime(start, end))))
        return out

    def last_components(self) -> dict[str, list[float]]:
        return {"gpu_compute": list(self._gpu_ms)}

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for _, device, _, _ in getattr(self, "_buffers", []):
            cudart.cudaFree(device)
        for event in getattr(self, "_events", ()):
            cudart.cudaEventDestroy(event)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)


def engine_parity(backend: TensorRTBackend, onnx: Path | bytes, input_shape: tuple[int, ...], *,
                  tolerance: float, batches: int = 4, seed: int = 0) -> dict[str, Any]:
    """Engine outputs against ONNX Runtime CPU on the fp32 model, on seeded random inputs:
    largest difference relative to the output scale, and top-1 agreement."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx if isinstance(onnx, bytes) else str(onnx), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    engine_input = next(n for n, _, _, is_input in backend._buffers if is_input)
    rng = np.random.default_rng(seed)
    max_diff, scale, agree, total = 0.0, 0.0, 0, 0
    for _ in range(batches):
        x = rng.standard_normal(input_shape).astype(np.float32)
        ref = session.run(None, {name: x})[0].astype(np.float32)
        got = next(iter(backend.run({engine_input: x}).values())).astype(np.float32).reshape(ref.shape)
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        if ref.ndim == 2 and ref.shape[1] > 1:
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
    relative = max_diff / max(scale, 1e-12)
    top1 = agree / total if total else None
    return {"against": "onnxruntime-cpu fp32", "max_abs_diff": max_diff, "output_scale": scale,
            "relative_diff": relative, "top1_agreement": top1, "tolerance": tolerance,
            "passed": relative <= tolerance and (top1 is None or top1 >= 0.99 or relative <= tolerance / 10)}


PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


def check_engine(build: EngineBuild, onnx: Path | bytes, input_shape: tuple[int, ...], *,
                 seed: int = 0) -> dict[str, Any]:
    """What was built, with its build log and its outputs' parity against ONNX Runtime (on the GPU that built it)."""
    backend = TensorRTBackend(None, input_shape, precision=build.precision, seed=seed, build=build)
    parity = engine_parity(backend, onnx, input_shape, tolerance=PARITY_TOLERANCE[build.precision], seed=seed)
    return {**build.summary(), "parity": parity, "log": list(build.log)}


def export_engine(onnx_path: Path, input_shape: tuple[int, ...], out_dir: Path, *, precision: str, target: Any,
                  seed: int = 0) -> dict[str, Any]:
    """Write `model.plan` and `model.plan.log`, built from the final ONNX file on the job's GPU (the
    probe's when the job measures on one), and describe them for the report; ParityError when the
    engine's outputs disagree with ONNX Runtime."""
    from secateurs.errors import ParityError

    if getattr(target, "where", {}).get("kind") == "probe":
        plan, info = target.build_engine(onnx_path, input_shape)
        info["built_on"] = f"the probe at {target.where['address']}"
    else:
        build = build_engine(onnx_path, input_shape, precision=precision)
        plan, info = build.plan, check_engine(build, onnx_path, input_shape, seed=seed)
        info["built_on"] = "this host"
    (out_dir / "model.plan").write_bytes(plan)
    (out_dir / "model.plan.log").write_text("\n".join(info.pop("log", [])) + "\n")
    parity = info["parity"]
    if not parity["passed"]:
        raise ParityError(f"the TensorRT engine disagrees with ONNX Runtime: relative max difference "
                          f"{parity['relative_diff']:.2e} (tolerance {parity['tolerance']:.0e}), "
                          f"top-1 agreement {parity['top1_agreement']}")
    return {"ok": True, **info, "plan": "model.plan", "build_log": "model.plan.log"}
