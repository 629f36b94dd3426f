"""Latency measurement: one protocol, pluggable runtimes, device fingerprints."""

from secateurs.engine.latency.fingerprint import device_fingerprint
from secateurs.engine.latency.ort_backend import OnnxRuntimeBackend
from secateurs.engine.latency.protocol import LatencyStats, measure, measure_interleaved, summarize

__all__ = ["LatencyStats", "OnnxRuntimeBackend", "device_fingerprint", "measure", "measure_interleaved", "summarize"]
