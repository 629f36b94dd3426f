"""Latency values <-> LatencyProbe messages, shared by the probe and its client."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from secateurs.engine.latency.protocol import LatencyStats
from secateurs.engine.spec import ProtocolSpec
from secateurs_client.v1 import compression_pb2 as pb


def protocol_to_pb(p: ProtocolSpec) -> pb.ProbeProtocol:
    return pb.ProbeProtocol(warmup_runs=p.warmup_runs, warmup_seconds=p.warmup_seconds, window=p.window,
                            min_samples=p.min_samples, max_seconds=p.max_seconds, tolerance=p.tolerance,
                            interleave=p.interleave)


def protocol_from_pb(m: pb.ProbeProtocol) -> ProtocolSpec:
    return ProtocolSpec(warmup_runs=m.warmup_runs, warmup_seconds=m.warmup_seconds, window=m.window,
                        min_samples=m.min_samples, max_seconds=m.max_seconds, tolerance=m.tolerance,
                        interleave=m.interleave)


def stats_to_pb(s: LatencyStats) -> pb.LatencyStatistics:
    msg = pb.LatencyStatistics(
        n=s.n, mean_ms=s.mean_ms, p50_ms=s.p50_ms, p90_ms=s.p90_ms, p95_ms=s.p95_ms, p99_ms=s.p99_ms,
        min_ms=s.min_ms, max_ms=s.max_ms, std_ms=s.std_ms, cov=s.cov, throughput_per_s=s.throughput_per_s,
        stable=s.stable, duration_s=s.duration_s, histogram_edges_ms=list(s.histogram.get("edges_ms", [])),
        histogram_counts=list(s.histogram.get("counts", [])))
    if s.components:
        msg.components.CopyFrom(to_struct(s.components))
    return msg


def stats_from_pb(m: pb.LatencyStatistics) -> LatencyStats:
    components = json_format.MessageToDict(m.components) if m.HasField("components") else {}
    for part in components.values():  # Struct numbers are doubles; counts are counts
        if "n" in part:
            part["n"] = int(part["n"])
    return LatencyStats(
        n=m.n, mean_ms=m.mean_ms, p50_ms=m.p50_ms, p90_ms=m.p90_ms, p95_ms=m.p95_ms, p99_ms=m.p99_ms,
        min_ms=m.min_ms, max_ms=m.max_ms, std_ms=m.std_ms, cov=m.cov, throughput_per_s=m.throughput_per_s,
        stable=m.stable, duration_s=m.duration_s,
        histogram={"edges_ms": list(m.histogram_edges_ms), "counts": [int(c) for c in m.histogram_counts]},
        components=components)


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def from_struct(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct back to a dict, with whole numbers as ints (Struct stores doubles)."""
    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        return v
    return fix(json_format.MessageToDict(value))
