"""The measurement protocol, shared by every runtime.

A backend implements one method, `samples(n) -> list[float]`: run the model n times
and return each run's wall time in milliseconds. Everything else lives here:
warm-up by count and by time, measurement in windows until the medians of the last
three windows agree within a tolerance (or a time cap, then stable=False), at least
`min_samples` samples, and one function that turns samples into statistics. Two
models are compared interleaved in one process so that drift (thermal, frequency, a
neighbour's load) hits both alike. By default window by window (A's window, B's
window, A's ...), dropping the first runs after each switch while caches refill, so
each model runs warm as it would in a serving process; `interleave="run"` alternates
single runs (A B A B ...). benchmarks/latency_protocol.py compares both with separate
runs on the same machine in the same run.

A backend may also time parts of each run (TensorRT and CUDA runs time the GPU compute
apart from the host-to-host run): `last_components()` returns, per part, one figure per
run of its last `samples` call; they are summarised beside the main figure, never instead.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Protocol

from secateurs.engine.spec import ProtocolSpec


SWITCH_WARMUP = 2  # runs dropped after switching models within an interleaved measurement
HISTOGRAM_BINS = 40

# Models measured in this process; a job reads the difference over its run for its report
# (the server turns it into a Prometheus counter: workers cannot export metrics themselves).
_measured_lock = threading.Lock()
_measured_total = 0


def measurements_taken() -> int:
    """Models measured with this protocol in this process so far (an interleaved pair counts 2)."""
    return _measured_total


def count_measured(n: int) -> None:
    """Count models measured for this process (a remote probe's measurements count here too)."""
    global _measured_total
    with _measured_lock:
        _measured_total += n


class LatencyBackend(Protocol):
    batch: int

    def samples(self, n: int) -> list[float]:
        """Run the model n times; return each run's latency in milliseconds."""


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cov: float
    throughput_per_s: float
    stable: bool
    duration_s: float
    # every run, binned: {"edges_ms": [...], "counts": [...]} (see `histogram`)
    histogram: dict[str, list] = field(default_factory=dict, compare=False)
    # parts of each run timed apart, e.g. {"gpu_compute": {"n", "mean_ms", "p50_ms", ...}}
    components: dict[str, dict] = field(default_factory=dict, compare=False)

    def percentile(self, q: float) -> float:
        return {50.0: self.p50_ms, 90.0: self.p90_ms, 95.0: self.p95_ms, 99.0: self.p99_ms}[float(q)]

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float], *, batch: int, stable: bool, duration_s: float) -> LatencyStats:
    s = sorted(samples_ms)
    mean = statistics.fmean(s)
    std = statistics.pstdev(s) if len(s) > 1 else 0.0
    return LatencyStats(
        n=len(s), mean_ms=mean, p50_ms=percentile(s, 50), p90_ms=percentile(s, 90), p95_ms=percentile(s, 95),
        p99_ms=percentile(s, 99), min_ms=s[0], max_ms=s[-1], std_ms=std, cov=std / mean if mean else 0.0,
        throughput_per_s=batch * 1000.0 / mean if mean else 0.0, stable=stable, duration_s=duration_s,
        histogram=histogram(s),
    )


def histogram(sorted_ms: list[float], bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """Counts of runs in log-spaced bins from the fastest to the slowest run: the report keeps
    the distribution's shape (tails included) without keeping every sample. Bin i holds
    edges[i] <= x < edges[i+1]; the last bin also holds its upper edge."""
    lo, hi = sorted_ms[0], sorted_ms[-1]
    if hi <= lo or lo <= 0:
        return {"edges_ms": [lo, hi if hi > lo else lo * 1.001 + 1e-9], "counts": [len(sorted_ms)]}
    step = math.log(hi / lo) / bins
    edges = [lo * math.exp(step * i) for i in range(bins)] + [hi]
    counts = [0] * bins
    for x in sorted_ms:
        counts[min(bins - 1, int(math.log(x / lo) / step))] += 1
    return {"edges_ms": edges, "counts": counts}


def _agree(medians: list[float], tolerance: float) -> bool:
    last = medians[-3:]
    return len(last) == 3 and max(last) <= min(last) * (1 + tolerance)


def _warm_up(backends: list[LatencyBackend], protocol: ProtocolSpec,
             should_stop: Callable[[], None] | None = None) -> None:
    """Run each model until both warm-up floors are reached (runs and seconds), checking
    `should_stop` every round, and never past max_seconds: a slow model with many warm-up
    runs asked for cannot hold the device longer than a measurement may."""
    start = time.perf_counter()
    runs = 0
    while runs < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_seconds:
        for backend in backends:
            backend.samples(1)
        runs += 1
        if should_stop is not None:
            should_stop()
        if time.perf_counter() - start >= protocol.max_seconds:
            break


def measure(backend: LatencyBackend, protocol: ProtocolSpec,
            should_stop: Callable[[], None] | None = None) -> LatencyStats:
    """Measure one model. `should_stop` is called between windows (it raises to cancel)."""
    return measure_interleaved([backend], protocol, should_stop)[0]


def measure_interleaved(backends: list[LatencyBackend], protocol: ProtocolSpec,
                        should_stop: Callable[[], None] | None = None) -> list[LatencyStats]:
    """Measure several models in alternation, one window of runs each per turn.

    Stops when every model has at least min_samples and the last three window
    medians of each agree within the tolerance, or when max_seconds has passed
    (then stable=False for those that had not settled).
    """
    _warm_up(backends, protocol, should_stop)
    samples: list[list[float]] = [[] for _ in backends]
    medians: list[list[float]] = [[] for _ in backends]
    parts: list[dict[str, list[float]]] = [{} for _ in backends]

    def timed(i: int, n: int) -> list[float]:
        got = backends[i].samples(n)
        components = getattr(backends[i], "last_components", None)
        for name, values in (components() if components else {}).items():
            parts[i].setdefault(name, []).extend(values)
        return got
    start = time.perf_counter()
    while True:
        window: list[list[float]] = [[] for _ in backends]
        if protocol.interleave == "run":
            for _ in range(protocol.window):
                for i in range(len(backends)):
                    window[i].extend(timed(i, 1))
        else:
            for i, backend in enumerate(backends):
                if len(backends) > 1:
                    backend.samples(SWITCH_WARMUP)  # refill caches after the other model ran
                window[i].extend(timed(i, protocol.window))
        for i in range(len(backends)):
            samples[i].extend(window[i])
            medians[i].append(statistics.median(window[i]))
        if should_stop is not None:
            should_stop()
        enough = all(len(s) >= protocol.min_samples for s in samples)
        settled = [_agree(m, protocol.tolerance) for m in medians]
        elapsed = time.perf_counter() - start
        if (enough and all(settled)) or elapsed >= protocol.max_seconds:
            break
    count_measured(len(backends))
    stats = [
        summarize(s, batch=b.batch, stable=settled[i] and len(s) >= protocol.min_samples, duration_s=elapsed)
        for i, (s, b) in enumerate(zip(samples, backends))
    ]
    return [replace(st, components={name: _brief(values) for name, values in parts[i].items() if values})
            if parts[i] else st for i, st in enumerate(stats)]


def _brief(values: list[float]) -> dict[str, float]:
    """Summary of a component's figures (no histogram: the report keeps that for the whole run)."""
    s = sorted(values)
    return {"n": len(s), "mean_ms": statistics.fmean(s), "p50_ms": percentile(s, 50), "p90_ms": percentile(s, 90),
            "p95_ms": percentile(s, 95), "p99_ms": percentile(s, 99), "min_ms": s[0], "max_ms": s[-1]}
