"""PyTorch backend: the nn.Module itself, eager or torch.compile'd, on the CPU or a CUDA GPU.

For users who serve with PyTorch, the figure that matters is the module's, not the ONNX
file's. CPU runs use `threads` intra-op threads (set around each call, so the process's
own setting, used by training, is left as it was). CUDA runs are timed host to host: the
input is copied to the GPU, the model runs, the output comes back; the GPU compute time
alone (CUDA events around the forward pass) is kept as a separate component. Eager CUDA
runs replay a captured CUDA graph where the model allows capture (it removes the
per-kernel launch cost a serving process would also remove); torch.compile on CUDA uses
mode "reduce-overhead", which captures CUDA graphs itself.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

from secateurs.errors import BackendUnavailable


class TorchBackend:
    """One module at one input shape; `samples(n)` times n runs."""

    def __init__(self, module: Any, input_shape: tuple[int, ...], *, runtime: str = "torch-cpu",
                 precision: str = "fp32", threads: int = 2, seed: int = 0) -> None:
        import torch  # open_backend checked that the runtime is available (latency/runtimes.py)

        self.runtime, self.precision, self.threads = runtime, precision, threads
        self.batch = input_shape[0]
        self.cuda = runtime.endswith("-cuda")
        self.compiled = runtime.startswith("torch-compile")
        self.provider = runtime
        self.cuda_graph: bool | str = False  # True, or why not
        device = torch.device("cuda" if self.cuda else "cpu")
        dtype = torch.float16 if precision == "fp16" else torch.float32
        model = copy.deepcopy(module).eval().to(device=device, dtype=dtype)
        host = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
        self._host_input = host.pin_memory() if self.cuda else host
        self._input = host.to(device)
        self._torch = torch
        self._gpu_ms: list[float] = []
        with self._threads():
            if self.compiled:
                model = torch.compile(model, mode="reduce-overhead" if self.cuda else "default")
            start = time.perf_counter()
            with torch.inference_mode():
                try:
                    model(self._input)  # compiles here, not inside the timed runs
                except Exception as exc:  # noqa: BLE001 - a model the runtime cannot run
                    raise BackendUnavailable(f"{runtime} cannot run this model: "
                                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
            self.compile_seconds = time.perf_counter() - start if self.compiled else 0.0
        self._forward = self._capture(model) if self.cuda and not self.compiled else self._eager(model)

    def _eager(self, model: Any) -> Callable[[], Any]:
        torch, x = self._torch, self._input

        def forward() -> Any:
            with torch.inference_mode():
                return model(x)
        return forward

    def _capture(self, model: Any) -> Callable[[], Any]:
        """Replay a CUDA graph of the forward pass; eager when the model cannot be captured."""
        torch = self._torch
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm-up on a side stream, as capture requires
                    model(self._input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                output = model(self._input)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow, CPU syncs, ...
            self.cuda_graph = f"not captured: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            torch.cuda.synchronize()
            return self._eager(model)
        self.cuda_graph = True

        def replay() -> Any:
            graph.replay()
            return output
        return replay

    def _threads(self) -> Any:
        torch, threads, cuda = self._torch, self.threads, self.cuda

        class _Scope:
            def __enter__(self) -> None:
                self.before = torch.get_num_threads()
                if not cuda:
                    torch.set_num_threads(threads)

            def __exit__(self, *exc: object) -> None:
                torch.set_num_threads(self.before)
        return _Scope()

    def samples(self, n: int) -> list[float]:
        out: list[float] = []
        self._gpu_ms = []
        with self._threads():
            if not self.cuda:
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    self._forward()
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                return out
            torch = self._torch
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(n):
                t0 = time.perf_counter_ns()
                self._input.copy_(self._host_input, non_blocking=True)
                start.record()
                result = self._forward()
                end.record()
                result.to("cpu")  # waits for the GPU: the copy out ends the run
                out.append((time.perf_counter_ns() - t0) / 1e6)
                self._gpu_ms.append(start.elapsed_time(end))
        return out

    def last_components(self) -> dict[str, list[float]]:
        """Per run of the last `samples` call: GPU compute time alone (CUDA only)."""
        return {"gpu_compute": list(self._gpu_ms)} if self.cuda else {}
