"""Device fingerprint: what a latency figure was measured on."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(*, runtime: str, provider: str, threads: int, precision: str = "fp32") -> dict:
    """Everything that changes a latency figure, plus a short id hashed from it.

    GPU runtimes add the GPU (name, compute capability, driver) and the library that runs
    the model (TensorRT, torch); CPU runtimes leave GPUs out, as they do not change a CPU figure.
    """
    import onnxruntime as ort
    import psutil

    from secateurs.engine.latency.runtimes import GPU_RUNTIMES, TORCH_RUNTIMES, gpus

    info = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "runtime": runtime,
        "onnxruntime": ort.__version__,
        "provider": provider,
        "threads": threads,
        "precision": precision,
    }
    if runtime in GPU_RUNTIMES:
        found = gpus()
        info["gpu"] = found[0] if found else None
    if runtime == "tensorrt":
        info["tensorrt"] = _version("tensorrt")
    if runtime in TORCH_RUNTIMES:
        info["torch"] = _version("torch")
    info["id"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return info


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def cache_identity(*parts: object) -> str:
    """A short id for measurements taken by one configured target (what the cache keys on)."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
