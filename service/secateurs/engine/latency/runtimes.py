"""The runtimes a job can measure on, behind one interface.

Every runtime opens a backend for one model at one input shape; a backend has the one
method the protocol needs, `samples(n)` (engine/latency/protocol.py). ONNX runtimes
(ONNX Runtime CPU and CUDA, TensorRT) take the exported ONNX file; torch runtimes take
the nn.Module itself, since a deployment that serves with PyTorch runs the module.

Optional runtimes are imported only when asked for. One that is missing here (no GPU,
no TensorRT, an onnxruntime without CUDA) says why, in words a user can act on, and a
job asking for it fails before anything is measured.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from secateurs.errors import BackendUnavailable, InvalidRequest

from secateurs.engine.spec import PRECISIONS, RUNTIMES

ONNX_RUNTIMES = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
TORCH_RUNTIMES = tuple(r for r in RUNTIMES if r.startswith("torch-"))
GPU_RUNTIMES = ("onnxruntime-cuda", "tensorrt", "torch-cuda", "torch-compile-cuda")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """How a model is run: what changes a latency figure besides the device and the model."""

    runtime: str = "onnxruntime-cpu"
    precision: str = "fp32"
    threads: int = 2

    @property
    def takes_module(self) -> bool:
        """True when the runtime runs the torch module rather than the ONNX file."""
        return self.runtime in TORCH_RUNTIMES

    @property
    def on_gpu(self) -> bool:
        return self.runtime in GPU_RUNTIMES


def check_settings(settings: RuntimeSettings) -> None:
    """Refuse combinations no runtime can honour, naming the field (before any GPU is looked for)."""
    if settings.runtime not in RUNTIMES:
        raise InvalidRequest(f"unknown runtime {settings.runtime!r} (one of {', '.join(RUNTIMES)})",
                             field="target.runtime")
    if settings.precision not in PRECISIONS:
        raise InvalidRequest(f"precision {settings.precision!r} is not supported (one of {', '.join(PRECISIONS)})",
                             field="target.precision")
    if settings.precision == "fp16" and not settings.on_gpu:
        raise InvalidRequest(f"fp16 needs a GPU runtime ({', '.join(GPU_RUNTIMES)}); "
                             f"{settings.runtime} measures fp32", field="target.precision")
    if not 1 <= settings.threads <= 256:
        raise InvalidRequest(f"threads must be in [1, 256], got {settings.threads}", field="target.threads")


def unavailable_reason(runtime: str) -> str | None:
    """None when `runtime` can measure in this process, else why not."""
    if runtime == "onnxruntime-cpu":
        return None
    if runtime == "onnxruntime-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (f"this onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu); "
                    f"available: {', '.join(ort.get_available_providers())}")
        return None if gpus() else "no NVIDIA GPU is visible (nvidia-smi lists none)"
    if runtime == "tensorrt":
        from secateurs.engine.latency.tensorrt_backend import tensorrt_unavailable_reason

        return tensorrt_unavailable_reason()
    if runtime in TORCH_RUNTIMES:
        try:
            import torch
        except ImportError:
            return "torch is not installed here (torch runtimes measure in the service, not on a probe)"
        if runtime.endswith("-cuda") and not torch.cuda.is_available():
            return (f"torch {torch.__version__} sees no CUDA device"
                    + (f" (built for CUDA {torch.version.cuda})" if torch.version.cuda else " (a CPU-only build)"))
        if runtime.startswith("torch-compile") and shutil.which("c++") is None and shutil.which("g++") is None:
            return "torch.compile needs a C++ compiler (c++ or g++) on the PATH"
        return None
    return f"unknown runtime {runtime!r}"


def runtime_statuses(runtimes: tuple[str, ...] = RUNTIMES) -> list[tuple[str, bool, str]]:
    """(name, available, reason) for each runtime, in this process."""
    out = []
    for name in runtimes:
        reason = unavailable_reason(name)
        out.append((name, reason is None, reason or ""))
    return out


def require(runtime: str) -> None:
    """Raise BackendUnavailable, with the reason, when `runtime` cannot measure here."""
    reason = unavailable_reason(runtime)
    if reason is not None:
        raise BackendUnavailable(f"runtime {runtime} is unavailable: {reason}")


def open_backend(settings: RuntimeSettings, input_shape: tuple[int, ...], *, onnx: Path | bytes | None = None,
                 module: Any = None, seed: int = 0) -> Any:
    """A backend measuring one model on `settings.runtime` (ONNX file or torch module, as the runtime takes)."""
    if settings.takes_module:
        if module is None:
            raise BackendUnavailable(f"{settings.runtime} measures a torch module; none was given")
        from secateurs.engine.latency.torch_backend import TorchBackend

        require(settings.runtime)
        return TorchBackend(module, input_shape, runtime=settings.runtime, precision=settings.precision,
                            threads=settings.threads, seed=seed)
    if onnx is None:
        raise BackendUnavailable(f"{settings.runtime} measures an ONNX model; none was given")
    if settings.runtime == "tensorrt":
        from secateurs.engine.latency.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(onnx, input_shape, precision=settings.precision, seed=seed)
    from secateurs.engine.latency.ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(onnx, input_shape, runtime=settings.runtime, threads=settings.threads, seed=seed,
                              precision=settings.precision)


def provider_of(runtime: str) -> str:
    """What executes the model, for the fingerprint."""
    from secateurs.engine.latency.ort_backend import PROVIDERS

    if runtime in PROVIDERS:
        return PROVIDERS[runtime]
    if runtime == "tensorrt":
        return "TensorRT"
    return {"torch-cpu": "torch eager CPU", "torch-cuda": "torch eager CUDA", "torch-compile-cpu":
            "torch.compile CPU", "torch-compile-cuda": "torch.compile CUDA"}[runtime]


@lru_cache(maxsize=1)
def gpus() -> tuple[dict[str, str], ...]:
    """NVIDIA GPUs as nvidia-smi lists them (name, compute capability, memory, driver); () when none.

    nvidia-smi rather than a CUDA library: it answers without torch or TensorRT installed,
    which a light probe may lack."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    query = "name,compute_cap,memory.total,driver_version"
    try:
        done = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if done.returncode != 0:
        return ()
    rows = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            rows.append({"name": parts[0], "compute_capability": parts[1], "memory": parts[2], "driver": parts[3]})
    return tuple(rows)
