"""Prometheus metric definitions of the server, and the HTTP endpoint that serves them.

One `ServiceMetrics` per server, on its own registry (two servers in one process,
as in tests, do not mix their counts). Names carry the `secateurs_` prefix and base
units (seconds, bytes); gRPC metrics follow the `grpc_server_*` convention of
go-grpc-prometheus. No label holds a job id, a model name or a path: label values
come from small fixed sets (results, stages, runtimes, status codes, method names).

Jobs run in worker processes of their own that never touch this registry: the server
derives stage durations, measurement counts and cache lookups from the events and
the final report the worker sends through its pipe (`job_event`, `job_finished`).
This module imports nothing from `api`, `jobs` or `engine`; they call it.
"""

from __future__ import annotations

import logging
import math
import platform
import re
from typing import Any, Callable, Mapping

import grpc
from prometheus_client import (
    GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, Info,
)
from prometheus_client.exposition import start_http_server

from secateurs import __version__

log = logging.getLogger(__name__)

# A job runs from seconds (a ratio on a small model) to hours (search plus recovery on a big one).
JOB_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
# Unary calls take milliseconds; WatchJob and DownloadArtifact streams can last a whole job.
RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
                       1800, 3600)
# Dimensionless "times smaller/faster" factors.
FACTOR_BUCKETS = (1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 7.5, 10, 20, 50)
JOB_RESULTS = ("succeeded", "failed", "cancelled")
_LABEL_VALUE = re.compile(r"^[a-z0-9_.\-]{1,40}$")  # what a stage, reason or runtime looks like


class ServiceMetrics:
    """Every metric the server exports, and the calls that update them.

    >>> metrics = ServiceMetrics()
    >>> metrics.job_finished(result="succeeded", seconds=12.5, report={"latency": {"speedup": 1.8}})
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The process, platform and GC collectors the default registry would have had.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            if collector is not None:
                r.register(collector)
        Info("secateurs_build", "Version of the server and of the libraries it serves with.", registry=r).info({
            "version": __version__, "python": platform.python_version(), "grpcio": grpc.__version__})

        self.jobs = Counter("secateurs_jobs_total", "Jobs that reached a final state, by result.",
                            ["result"], registry=r)
        for result in JOB_RESULTS:  # present at 0, so rates and ratios exist from the first scrape
            self.jobs.labels(result)
        self.job_failures = Counter("secateurs_job_failures_total",
                                    "Failed jobs by reason (invalid_model, worker_crashed, interrupted, ...).",
                                    ["reason"], registry=r)
        self.job_starts = Counter("secateurs_job_starts_total",
                                  "Worker processes started for a job (a resumed job starts again).", registry=r)
        self.job_seconds = Histogram("secateurs_job_duration_seconds",
                                     "Wall time of the worker run that ended the job, by result.",
                                     ["result"], buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("secateurs_job_queue_wait_seconds",
                                            "Time from CreateJob to the first worker start of the job.",
                                            buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.stage_seconds = Histogram("secateurs_stage_duration_seconds",
                                       "Wall time of one pipeline stage (load, profile, search, prune, ...).",
                                       ["stage"], buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.in_progress = Gauge("secateurs_jobs_in_progress", "Jobs running in a worker process now.",
                                 registry=r)
        self.queued = Gauge("secateurs_jobs_queued", "Jobs waiting for a worker now.", registry=r)
        self.upload_bytes = Counter("secateurs_upload_bytes_total", "Bytes received by UploadBlob.", registry=r)
        self.blob_bytes = Gauge("secateurs_blob_store_bytes",
                                "Bytes of uploads and artifacts the server holds now (the quota is "
                                "--max-blob-bytes).", registry=r)
        self.collected_bytes = Counter("secateurs_blob_store_collected_bytes_total",
                                       "Bytes of blobs removed because their retention time passed.", registry=r)
        self.latency_measurements = Counter(
            "secateurs_latency_measurements_total",
            "Models or layers measured with the latency protocol by finished jobs, by runtime.",
            ["runtime"], registry=r)
        self.cache_lookups = Counter("secateurs_measurement_cache_lookups_total",
                                     "Lookups in the latency and sensitivity cache by finished jobs.",
                                     ["result"], registry=r)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result)
        self.speedup = Histogram("secateurs_job_speedup",
                                 "Measured baseline/compressed latency at the target percentile, per job.",
                                 buckets=FACTOR_BUCKETS, registry=r)
        self.size_reduction = Histogram("secateurs_job_size_reduction",
                                        "Baseline/compressed ONNX file size, per job.",
                                        buckets=FACTOR_BUCKETS, registry=r)
        self.budgets = Counter("secateurs_job_budgets_total", "Budget jobs by whether the budget was met.",
                               ["met"], registry=r)

        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.rpc_started = Counter("grpc_server_started_total", "RPCs started on the server.", rpc, registry=r)
        self.rpc_handled = Counter("grpc_server_handled_total",
                                   "RPCs completed on the server, by the status code sent.",
                                   rpc + ["grpc_code"], registry=r)
        self.rpc_seconds = Histogram("grpc_server_handling_seconds",
                                     "Time from an RPC's start to its status, on the server.",
                                     rpc, buckets=RPC_SECONDS_BUCKETS, registry=r)
        self.rpc_received = Counter("grpc_server_msg_received_total", "Messages received from clients.", rpc,
                                    registry=r)
        self.rpc_sent = Counter("grpc_server_msg_sent_total", "Messages sent to clients.", rpc, registry=r)

    # -- jobs -------------------------------------------------------------------------------

    def track_jobs(self, *, queued: Callable[[], int], in_progress: Callable[[], int],
                   blob_bytes: Callable[[], int] | None = None) -> None:
        """Read the queue length, running count and bytes held at each scrape, so they cannot drift."""
        self.queued.set_function(queued)
        self.in_progress.set_function(in_progress)
        if blob_bytes is not None:
            self.blob_bytes.set_function(blob_bytes)

    def job_started(self, queue_wait_seconds: float | None) -> None:
        """A worker started a job; `queue_wait_seconds` since CreateJob (None: not its first start)."""
        self.job_starts.inc()
        if _finite(queue_wait_seconds) and queue_wait_seconds >= 0:
            self.queue_wait_seconds.observe(queue_wait_seconds)

    def job_event(self, event: Mapping[str, Any]) -> None:
        """A worker's event: a stage's `finished` event carries the stage's seconds."""
        if event.get("kind") != "finished":
            return
        seconds = (event.get("data") or {}).get("seconds")
        stage = _label(event.get("stage"))
        if stage and _finite(seconds) and seconds >= 0:
            self.stage_seconds.labels(stage).observe(seconds)

    def job_finished(self, *, result: str, seconds: float | None = None, reason: str | None = None,
                     report: Mapping[str, Any] | None = None) -> None:
        """A job reached a final state. `report`: the report of a succeeded job, read defensively
        (a runner may leave sections out)."""
        if result not in JOB_RESULTS:
            raise ValueError(f"result must be one of {JOB_RESULTS}, got {result!r}")
        self.jobs.labels(result).inc()
        if result == "failed":
            self.job_failures.labels(_label(reason) or "unknown").inc()
        if _finite(seconds) and seconds >= 0:
            self.job_seconds.labels(result).observe(seconds)
        if report:
            self._observe_report(report)

    def _observe_report(self, report: Mapping[str, Any]) -> None:
        speedup = _dig(report, "latency", "speedup")
        if _finite(speedup) and speedup > 0:
            self.speedup.observe(speedup)
        before = _dig(report, "size", "baseline", "onnx_bytes")
        after = _dig(report, "size", "compressed", "onnx_bytes")
        if _finite(before) and _finite(after) and after > 0:
            self.size_reduction.observe(before / after)
        if report.get("budget") and isinstance(report.get("budget_met"), bool):
            self.budgets.labels(str(report["budget_met"]).lower()).inc()
        measurements = report.get("measurements") or {}
        runtime = _label(_dig(report, "target", "runtime"))
        count = measurements.get("latency")
        if runtime and _finite(count) and count > 0:
            self.latency_measurements.labels(runtime).inc(count)
        for result, key in (("hit", "hits"), ("miss", "misses")):
            count = (measurements.get("cache") or {}).get(key)
            if _finite(count) and count > 0:
                self.cache_lookups.labels(result).inc(count)

    # -- uploads ----------------------------------------------------------------------------

    def upload_received(self, nbytes: int) -> None:
        self.upload_bytes.inc(nbytes)

    # -- the endpoint -----------------------------------------------------------------------

    def serve(self, listen: str) -> "MetricsEndpoint":
        """Serve /metrics on `listen` ("host:port"; port 0 picks a free one)."""
        host, port = split_listen(listen)
        try:
            httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        return MetricsEndpoint(httpd, thread, host)


class MetricsEndpoint:
    """The running /metrics HTTP server."""

    def __init__(self, httpd: Any, thread: Any, host: str) -> None:
        self._httpd, self._thread, self.host = httpd, thread, host
        self.port: int = httpd.server_address[1]

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def split_listen(listen: str) -> tuple[str, int]:
    """"host:port" -> (host, port); an empty host means every interface, "[::1]:9464" is IPv6."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address must be host:port (e.g. 127.0.0.1:9464 or :0), got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _label(value: Any) -> str | None:
    """A label value from a worker's message, or None when it does not look like one of our names
    (so a bad message cannot create unbounded series)."""
    if isinstance(value, str) and _LABEL_VALUE.match(value):
        return value
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dig(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)  # type: ignore[assignment]
    return mapping
