"""The latency protocol: statistics, stopping rules, interleaving, real ONNX Runtime sessions."""

from __future__ import annotations

import itertools

import pytest
import torch

from secateurs.engine.export import export_onnx
from secateurs.engine.latency import OnnxRuntimeBackend, device_fingerprint, measure, measure_interleaved, summarize
from secateurs.engine.latency.protocol import percentile
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.spec import ProtocolSpec
from secateurs.errors import BackendUnavailable

FAST = ProtocolSpec(warmup_runs=2, warmup_seconds=0.0, window=10, min_samples=30, max_seconds=5.0, tolerance=0.05)


class Scripted:
    """A backend whose 'latencies' come from a list: makes the stopping rules testable."""

    def __init__(self, values, batch=1):
        self.values, self.batch, self.calls = itertools.cycle(values), batch, 0

    def samples(self, n):
        self.calls += n
        return [next(self.values) for _ in range(n)]


def test_summary_statistics():
    stats = summarize([float(v) for v in range(1, 101)], batch=4, stable=True, duration_s=1.0)
    assert stats.n == 100 and stats.min_ms == 1 and stats.max_ms == 100
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5) and stats.throughput_per_s == pytest.approx(4000 / 50.5)
    assert percentile([1.0, 3.0], 50) == 2.0


def test_steady_backend_stops_at_min_samples_and_is_stable():
    stats = measure(Scripted([1.0, 1.1, 0.9]), FAST)
    assert stats.stable and stats.n == FAST.min_samples


def test_drifting_backend_hits_the_time_cap_unstable():
    drifting = Scripted([1.0] * 10 + [2.0] * 10)  # window medians alternate 1, 2, 1, ...: never settle
    stats = measure(drifting, ProtocolSpec(warmup_runs=1, warmup_seconds=0, window=10, min_samples=30,
                                           max_seconds=0.2, tolerance=0.01))
    assert not stats.stable and stats.n > 30


def test_interleaved_measures_alternately():
    a, b = Scripted([1.0]), Scripted([2.0])
    sa, sb = measure_interleaved([a, b], FAST)
    assert a.calls == b.calls and sa.n == sb.n
    assert sb.p50_ms / sa.p50_ms == pytest.approx(2.0)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    small = build_architecture("zoo:resnet20").eval()
    big = build_architecture("zoo:resnet20", {"width": 64}).eval()
    x = torch.randn(1, 3, 32, 32)
    export_onnx(small, x, tmp / "small.onnx")
    export_onnx(big, x, tmp / "big.onnx")
    return tmp / "small.onnx", tmp / "big.onnx"


def test_real_session_measures_and_orders_models(onnx_pair):
    small, big = [OnnxRuntimeBackend(p, (1, 3, 32, 32), threads=1) for p in onnx_pair]
    assert small.provider == "CPUExecutionProvider"
    s_small, s_big = measure_interleaved([small, big], FAST)
    assert s_small.n >= FAST.min_samples and s_big.p50_ms > 2 * s_small.p50_ms  # 16x the MACs


def test_missing_provider_is_refused_not_replaced(onnx_pair):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider is not available"):
        OnnxRuntimeBackend(onnx_pair[0], (1, 3, 32, 32), runtime="onnxruntime-cuda")


def test_fingerprint_names_the_device():
    fp = device_fingerprint(runtime="onnxruntime-cpu", provider="CPUExecutionProvider", threads=2)
    assert fp["cpu"] and fp["threads"] == 2 and len(fp["id"]) == 16
    assert fp["id"] != device_fingerprint(runtime="onnxruntime-cpu", provider="CPUExecutionProvider", threads=1)["id"]


def test_summary_keeps_every_run_in_a_log_spaced_histogram():
    from secateurs.engine.latency.protocol import histogram

    samples = sorted([0.2] * 50 + [0.25] * 30 + [4.0] * 3)  # a fast body and a slow tail
    stats = summarize(samples, batch=1, stable=True, duration_s=1.0)
    edges, counts = stats.histogram["edges_ms"], stats.histogram["counts"]
    assert sum(counts) == stats.n == 83 and len(edges) == len(counts) + 1
    assert edges[0] == 0.2 and edges[-1] == 4.0 and all(a < b for a, b in zip(edges, edges[1:]))
    assert counts[0] == 50 and counts[-1] == 3  # the tail keeps its own bin
    assert histogram([1.0, 1.0]) == {"edges_ms": [1.0, 1.001 + 1e-9], "counts": [2]}
