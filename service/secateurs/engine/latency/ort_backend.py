"""ONNX Runtime backend: explicit provider and thread counts, no silent fallback.

CUDA runs are timed host to host (the input copied in, the output copied out), as a
serving process sees them; fp16 runs the model converted by engine/latency/fp16.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from secateurs.errors import BackendUnavailable

_ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
PROVIDERS = {"onnxruntime-cpu": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider"}


class OnnxRuntimeBackend:
    """One InferenceSession with fixed inputs; `samples(n)` times n runs."""

    def __init__(self, model: Path | bytes, input_shape: tuple[int, ...], *, runtime: str = "onnxruntime-cpu",
                 threads: int = 1, seed: int = 0, precision: str = "fp32") -> None:
        import onnxruntime as ort

        if runtime not in PROVIDERS:
            raise BackendUnavailable(f"runtime {runtime!r} is not an ONNX Runtime target")
        provider = PROVIDERS[runtime]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"{provider} is not available in this onnxruntime build "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if provider != "CPUExecutionProvider":
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        source: bytes | str = model if isinstance(model, bytes) else str(model)
        if precision == "fp16":
            from secateurs.engine.latency.fp16 import onnx_to_fp16

            source = onnx_to_fp16(source if isinstance(source, bytes) else Path(source).read_bytes())
        try:
            self.session = ort.InferenceSession(source, options, providers=[provider])
        except Exception as exc:  # e.g. a node CUDA cannot run, with CPU fallback disabled
            if provider == "CPUExecutionProvider":
                raise
            raise BackendUnavailable(f"{provider} cannot run this model: {str(exc).splitlines()[0][:300]}") from exc
        ran = self.session.get_providers()[0]
        if ran != provider:  # asked for one provider, got another: refuse rather than mislead
            raise BackendUnavailable(f"asked for {provider} but the session runs on {ran}")
        self.provider = ran
        self.threads = threads
        self.batch = input_shape[0]
        self.precision = precision
        self._feeds = random_feeds(self.session.get_inputs(), input_shape, seed)

    def samples(self, n: int) -> list[float]:
        out = []
        run, feeds = self.session.run, self._feeds
        for _ in range(n):
            t0 = time.perf_counter_ns()
            run(None, feeds)
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out


def random_feeds(graph_inputs: list, first_shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for every input of a session: the first at `first_shape`, the others at their
    own static shapes with the first's batch; floats normal, integers 0 or 1 (valid ids and masks)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, graph_input in enumerate(graph_inputs):
        dtype = _ELEMENT_TYPES.get(graph_input.type)
        if dtype is None:
            raise BackendUnavailable(f"input {graph_input.name!r} has type {graph_input.type}, which cannot be generated")
        shape = tuple(first_shape) if i == 0 else (first_shape[0], *(
            d if isinstance(d, int) and d > 0 else 1 for d in graph_input.shape[1:]))
        if np.issubdtype(dtype, np.floating):
            feeds[graph_input.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[graph_input.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
