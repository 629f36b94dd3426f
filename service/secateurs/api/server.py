"""The gRPC server: wiring, lifecycle (start, health, drain, stop) and `secateurs serve`.

`cli.py` registers the subcommand with `add_serve_arguments` and `run_serve`;
`python -m secateurs.api.server` runs the same thing on its own.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import math
import os
import signal
import sys
import threading
from concurrent import futures
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from secateurs.rpc.auth import TokenInterceptor
from secateurs.rpc.errors import ErrorInterceptor
from secateurs.api.rpc_metrics import RpcMetricsInterceptor
from secateurs.addresses import is_loopback, split_host_port
from secateurs.api.servicer import CompressionServicer
from secateurs.rpc.tls import server_credentials
from secateurs.api.validate import DEFAULT_MAX_MODEL_PARAMS, RequestPolicy
from secateurs.probe.client import PLAINTEXT_ENV, ProbeCredentials
from secateurs.jobs.blobs import BlobStore
from secateurs.engine.events import STAGES
from secateurs.jobs.scheduler import DEFAULT_STAGE_TIMEOUTS, Scheduler
from secateurs.jobs.service import JobService, Limits
from secateurs.jobs.store import JobStore
from secateurs.jobs.worker import DEFAULT_RUNNER
from secateurs.metrics import MetricsEndpoint, ServiceMetrics, split_listen
from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

log = logging.getLogger("secateurs.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompressionService"].full_name
METRICS_LISTEN = "127.0.0.1:9464"
_PROBE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `secateurs serve` can be told; the defaults serve without setup."""

    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".secateurs")
    workers: int = 1
    max_upload_bytes: int = 4 << 30
    max_queued_jobs: int = 100
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    trust_pickle: bool = False
    data_root: Path | None = None  # data.*_uri must lie inside it; None: server-side paths are refused
    # `module:` architectures a request may name (engine/intake/models.py); none: every one is refused.
    allow_modules: tuple[str, ...] = ()
    max_model_params: int | None = DEFAULT_MAX_MODEL_PARAMS
    # Serving on an address other machines reach needs a token or mutual TLS, unless this is set.
    insecure: bool = False
    # The only latency probes jobs may name (target.probe): name -> host:port. A probe off this
    # machine needs probe TLS (probe_credentials.tls_ca) unless probe_plaintext says otherwise.
    probes: Mapping[str, str] = field(default_factory=dict)
    probes_files: tuple[Path, ...] = ()  # NAME=HOST:PORT lines, read when the server is made
    probe_plaintext: bool = False
    max_blob_bytes: int = 64 << 30  # uploads and artifacts held in all; beyond: RESOURCE_EXHAUSTED
    retention_seconds: float = 7 * 86400.0  # artifacts of ended jobs, and blobs no live job uses, after this
    max_queued_per_client: int = 20
    # Address space of each worker (RLIMIT_AS); None: no limit. A job over it fails out_of_memory.
    worker_memory_bytes: int | None = field(default_factory=lambda: default_worker_memory())
    heartbeat_timeout: float = 60.0  # a worker silent this long is killed: worker_unresponsive
    # Seconds a stage of a job may run, by stage ("*": any other); past it: stage_timeout.
    stage_timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_STAGE_TIMEOUTS))
    grace_seconds: float = 10.0
    rpc_threads: int = 64
    runner: str = DEFAULT_RUNNER  # "module:function" run in each worker (tests name a fake)
    # Prometheus /metrics "host:port" (":0": a free port); None: no endpoint. `secateurs serve`
    # defaults to METRICS_LISTEN; a server embedded in a program only serves metrics when asked.
    metrics_listen: str | None = None
    # How jobs reach a latency probe (target.probe_address): given to each worker's environment,
    # never stored with a job.
    probe_credentials: ProbeCredentials = field(default_factory=ProbeCredentials)


class Server:
    """Owns the store, the scheduler and the gRPC server, from start to stop."""

    def __init__(self, config: ServerConfig) -> None:
        probes = {**config.probes, **parse_probes((), config.probes_files)}  # ValueError naming the line
        self.config = config = replace(config, probes=probes)
        data = config.data_dir
        _check_exposure(config)  # before the lock: a bad option leaves nothing behind
        data_root = _data_root(config.data_root)
        self._lock = _lock_data_dir(data)
        self.store = JobStore(data / "jobs.db")
        self.blobs = BlobStore(data / "blobs", self.store, max_bytes=config.max_blob_bytes)
        self.metrics = ServiceMetrics()  # one registry per server: two in one process keep their counts apart
        self.metrics_endpoint: MetricsEndpoint | None = None
        worker_env = config.probe_credentials.to_environ()
        if config.probe_plaintext:
            worker_env[PLAINTEXT_ENV] = "1"
        self.scheduler = Scheduler(self.store, self.blobs, work_dir=data / "work",
                                   workers=config.workers, runner=config.runner, metrics=self.metrics,
                                   worker_env=worker_env, memory_bytes=config.worker_memory_bytes,
                                   heartbeat_timeout=config.heartbeat_timeout,
                                   stage_timeouts=config.stage_timeouts)
        self.metrics.track_jobs(queued=self.store.count_queued, in_progress=lambda: len(self.scheduler.running()),
                                blob_bytes=self.store.blob_bytes)
        self.jobs = JobService(self.store, self.blobs, self.scheduler, Limits(
            max_upload_bytes=config.max_upload_bytes, max_queued_jobs=config.max_queued_jobs,
            max_queued_per_client=config.max_queued_per_client, retention_seconds=config.retention_seconds))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        # Outermost first: metrics see the status that the error mapping (and the token check
        # behind it) produced.
        rpc_metrics = RpcMetricsInterceptor(self.metrics)
        rpc_metrics.preregister(pb.DESCRIPTOR.services_by_name["CompressionService"])
        interceptors: list[grpc.ServerInterceptor] = [rpc_metrics, ErrorInterceptor()]
        if config.token:
            interceptors.append(TokenInterceptor(config.token))
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=config.rpc_threads,
                                                            thread_name_prefix="rpc"),
                                 interceptors=interceptors,
                                 options=[("grpc.so_reuseport", 0)])  # a taken port is an error
        # Absolute, because the path is stored in each job's spec and read by its worker.
        cache_dir = data.resolve() / "cache"
        policy = RequestPolicy(trust_pickle=config.trust_pickle, allowed_modules=tuple(config.allow_modules),
                               max_model_params=config.max_model_params, probes=dict(config.probes),
                               data_root=data_root, cache_dir=cache_dir)
        pb_grpc.add_CompressionServiceServicer_to_server(
            CompressionServicer(self.jobs, policy, metrics=self.metrics), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._grpc)
        self.port = 0
        self._stopped = threading.Event()
        self._halt = threading.Event()  # tells the retention thread to end
        self._collector = threading.Thread(target=self._collect, name="retention", daemon=True)

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """http://host:port/metrics once started with an endpoint, else None."""
        return self.metrics_endpoint.url if self.metrics_endpoint is not None else None

    def start(self) -> None:
        if self.config.metrics_listen is not None:  # first: a taken port leaves nothing running
            self.metrics_endpoint = self.metrics.serve(self.config.metrics_listen)
        try:
            self._start_serving()
        except BaseException:
            self._close_metrics()
            raise
        if self.metrics_endpoint is not None:
            log.info("metrics on %s", self.metrics_endpoint.url)

    def _start_serving(self) -> None:
        creds = self._credentials()
        if creds is None:
            self.port = self._grpc.add_insecure_port(self.config.listen)
        else:
            self.port = self._grpc.add_secure_port(self.config.listen, creds)
        if not self.port:
            raise OSError(f"cannot listen on {self.config.listen}")
        requeued, failed = self.scheduler.start()
        if requeued:
            log.warning("%d job(s) were running when the server last stopped; queued again to resume: %s",
                        len(requeued), ", ".join(requeued))
        if failed:
            log.warning("%d job(s) were interrupted too often; marked FAILED (interrupted): %s",
                        len(failed), ", ".join(failed))
        self._grpc.start()
        self._collector.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening on %s (data in %s)", self.address, self.config.data_dir)

    def _collect(self) -> None:
        """Remove what the retention time has passed: at start, then every tenth of it (at most 10 min)."""
        every = max(1.0, min(600.0, self.config.retention_seconds / 10))
        while True:
            try:
                _, freed = self.blobs.collect(retention=self.config.retention_seconds)
                self.metrics.collected_bytes.inc(freed)
            except Exception:  # noqa: BLE001 - a failed collection is retried, never fatal
                log.exception("retention: collection failed")
            if self._halt.wait(every):
                return

    def drain(self) -> None:
        """Health NOT_SERVING and refuse new work; in-flight calls continue."""
        self.health.enter_graceful_shutdown()
        self.jobs.drain()

    def stop(self, grace: float | None = None) -> None:
        """Drain, stop running jobs (queued again, to resume at the next start), then stop serving
        within `grace` seconds."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_seconds if grace is None else grace
        self._halt.set()
        self.drain()
        self.scheduler.shutdown(grace * 0.6)
        self._grpc.stop(grace * 0.4).wait()
        self._close_metrics()  # before the store: a scrape reads the queue from it
        if self._collector.is_alive():
            self._collector.join(5.0)
        self.store.close()
        self._lock.close()
        self._stopped.set()

    def _close_metrics(self) -> None:
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _credentials(self) -> grpc.ServerCredentials | None:
        c = self.config
        return server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca)


def _check_exposure(config: ServerConfig) -> None:
    """Refuse a configuration that lets strangers in: a port other machines reach with neither a
    token nor mutual TLS, or a probe off this machine reached in plain text (its token in clear)."""
    host = config.listen.rpartition(":")[0]  # "" or "[::]": every interface
    guarded = bool(config.token) or config.tls_client_ca is not None
    if not is_loopback(host) and not guarded and not config.insecure:
        raise ValueError(
            f"refusing to serve on {config.listen} without a token or mutual TLS: anyone who reaches that port "
            f"could run jobs and read every job's artifacts. Give --token (or $SECATEURS_TOKEN), or "
            f"--tls-client-ca, or --insecure to serve openly anyway")
    for name, address in config.probes.items():
        try:
            probe_host, _ = split_host_port(address)
        except ValueError:
            raise ValueError(f"--probe {name}={address}: not host:port") from None
        if not is_loopback(probe_host) and config.probe_credentials.tls_ca is None and not config.probe_plaintext:
            raise ValueError(
                f"probe {name} at {address} is off this machine and would get the probe token in clear text: give "
                f"--probe-tls-ca (the probes' CA), or --probe-plaintext to send it unencrypted anyway")


def default_worker_memory() -> int | None:
    """Each worker's address-space limit by default: 3/4 of this machine's memory, so a job that
    asks for too much fails out_of_memory instead of bringing the machine's OOM killer to the server."""
    try:
        import psutil

        return int(psutil.virtual_memory().total * 0.75)
    except Exception:  # noqa: BLE001 - no limit when the machine cannot say how much it has
        return None


def parse_probes(entries: Sequence[str], files: Sequence[Path] = ()) -> dict[str, str]:
    """`NAME=host:port` entries (and lines of probe files, `#` comments allowed) -> {name: address}."""
    lines = list(entries)
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"--probes-file {path}: {exc.strerror or exc}") from None
        lines += [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    probes: dict[str, str] = {}
    for line in filter(None, lines):
        name, sep, address = line.partition("=")
        name, address = name.strip(), address.strip()
        if not sep or not _PROBE_NAME.match(name):
            raise ValueError(f"--probe {line!r}: expected NAME=HOST:PORT, NAME of a-z 0-9 _ . - (at most 63)")
        split_host_port(address)
        if name in probes and probes[name] != address:
            raise ValueError(f"--probe {name} is given twice, with different addresses")
        probes[name] = address
    return probes


def _data_root(root: Path | None) -> Path | None:
    """The data root with symlinks resolved, so uris are compared with the real directory."""
    if root is None:
        return None
    resolved = root.resolve()
    if not resolved.is_dir():
        raise ValueError(f"--data-root {root} is not a directory")
    return resolved


def _lock_data_dir(data: Path) -> IO[bytes]:
    """One server per data dir: two writers would each think they own the RUNNING jobs.
    The kernel drops the lock when the process dies, even by kill -9."""
    data.mkdir(parents=True, exist_ok=True)
    handle = open(data / "server.lock", "wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OSError(f"another secateurs server is using {data}") from None
    return handle


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `secateurs serve`."""
    d = ServerConfig()
    parser.add_argument("--listen", default=d.listen, help="host:port to listen on (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=d.data_dir,
                        help="job store, blobs, artifacts and the measurement cache (default %(default)s)")
    parser.add_argument("--workers", type=int, default=d.workers, help="jobs run at once (default %(default)s)")
    parser.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes,
                        help="largest blob accepted (default %(default)s)")
    parser.add_argument("--max-queued-jobs", type=int, default=d.max_queued_jobs,
                        help="CreateJob answers RESOURCE_EXHAUSTED beyond this (default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("SECATEURS_TOKEN"),
                        help="require 'authorization: Bearer <token>' (default: $SECATEURS_TOKEN; none)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle; enables mutual TLS")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="accept pickled whole models (runs code from the file: trusted clients only)")
    parser.add_argument("--data-root", type=Path, default=d.data_root,
                        help="directory whose datasets jobs may name by path (data.train_uri, data.val_uri); "
                             "default: none, such paths are refused")
    trust = parser.add_argument_group("what requests may ask for (nothing a request sends chooses code, "
                                      "an address or a path beyond these)")
    trust.add_argument("--allow-module", action="append", default=[], metavar="PACKAGE[:NAME]",
                       help="let model.arch name module:<PACKAGE...>:<Class> (an nn.Module subclass from this "
                            "package or below), or with :NAME that one factory; repeatable. Default: none")
    trust.add_argument("--max-model-params", type=int, default=d.max_model_params,
                       help="largest architecture (parameters and buffers, counted before allocating; "
                            "default %(default)s)")
    trust.add_argument("--insecure", action="store_true",
                       help="serve on an address other machines reach without --token or --tls-client-ca")
    limits = parser.add_argument_group("resources")
    limits.add_argument("--max-blob-bytes", type=int, default=d.max_blob_bytes,
                        help="uploads and artifacts held in all (default %(default)s)")
    limits.add_argument("--retention", default="7d",
                        help="how long ended jobs keep their artifacts, and unused uploads are kept: 7d, 12h, "
                             "30m (default 7d)")
    limits.add_argument("--max-queued-per-client", type=int, default=d.max_queued_per_client,
                        help="queued jobs one client (its TLS identity, else its address) may have "
                             "(default %(default)s)")
    limits.add_argument("--worker-memory-limit", type=int, default=None, metavar="BYTES",
                        help="address space of each worker (default: 3/4 of this machine's memory; 0: none)")
    limits.add_argument("--heartbeat-timeout", type=float, default=d.heartbeat_timeout,
                        help="kill a worker silent this many seconds (default %(default)s)")
    limits.add_argument("--stage-timeout", action="append", default=[], metavar="[STAGE=]DURATION",
                        help="longest a job's stage may run before the job fails stage_timeout: a bare duration "
                             "sets every stage, STAGE=DURATION one of them (load, profile, search, prune, "
                             "recover, export, benchmark, report); repeatable. Default: 1h each, recover 24h")
    parser.add_argument("--grace", type=float, default=d.grace_seconds,
                        help="seconds to drain on SIGTERM before exiting (default %(default)s)")
    parser.add_argument("--metrics-listen", default=os.environ.get("SECATEURS_METRICS_LISTEN") or METRICS_LISTEN,
                        help="host:port of the Prometheus /metrics endpoint; :0 picks a free port "
                             f"(default: $SECATEURS_METRICS_LISTEN, else {METRICS_LISTEN})")
    parser.add_argument("--no-metrics", action="store_true", help="serve no metrics endpoint")
    probe = parser.add_argument_group("latency probes (jobs whose target.probe names one)")
    probe.add_argument("--probe", action="append", default=[], metavar="NAME=HOST:PORT",
                       help="a latency probe jobs may name (target.probe); repeatable")
    probe.add_argument("--probes-file", action="append", type=Path, default=[], metavar="FILE",
                       help="NAME=HOST:PORT lines ('#' starts a comment); repeatable")
    probe.add_argument("--probe-plaintext", action="store_true",
                       help="reach probes off this machine without TLS (their token travels in clear text)")
    probe.add_argument("--probe-token", default=os.environ.get("SECATEURS_PROBE_TOKEN"),
                       help="bearer token the probes require (default: $SECATEURS_PROBE_TOKEN; none)")
    probe.add_argument("--probe-tls-ca", type=Path, help="PEM CA that signed the probes' certificates; enables TLS")
    probe.add_argument("--probe-tls-cert", type=Path, help="PEM client certificate, for probes requiring mutual TLS")
    probe.add_argument("--probe-tls-key", type=Path, help="PEM private key for --probe-tls-cert")
    parser.add_argument("--runner", default=d.runner, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.workers < 1 or args.max_upload_bytes < 1 or args.max_queued_jobs < 1:
        raise SystemExit("--workers, --max-upload-bytes and --max-queued-jobs must be at least 1")
    metrics_listen = None if args.no_metrics else args.metrics_listen
    if metrics_listen is not None:
        try:
            split_listen(metrics_listen)
        except ValueError as exc:
            raise SystemExit(f"--metrics-listen: {exc}") from None
    try:
        probes = parse_probes(args.probe)
        retention = parse_duration(args.retention)
        stage_timeouts = parse_stage_timeouts(args.stage_timeout)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    memory = default_worker_memory() if args.worker_memory_limit is None else (args.worker_memory_limit or None)
    return ServerConfig(
        listen=args.listen, data_dir=args.data_dir, workers=args.workers,
        max_upload_bytes=args.max_upload_bytes, max_queued_jobs=args.max_queued_jobs, token=args.token or None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        trust_pickle=args.trust_pickle, data_root=args.data_root, grace_seconds=args.grace, runner=args.runner,
        metrics_listen=metrics_listen, allow_modules=tuple(args.allow_module),
        max_model_params=args.max_model_params or None, insecure=args.insecure, probes=probes,
        probes_files=tuple(args.probes_file),
        probe_plaintext=args.probe_plaintext, max_blob_bytes=args.max_blob_bytes, retention_seconds=retention,
        max_queued_per_client=args.max_queued_per_client, worker_memory_bytes=memory,
        heartbeat_timeout=args.heartbeat_timeout, stage_timeouts=stage_timeouts,
        probe_credentials=ProbeCredentials(token=args.probe_token or None, tls_ca=args.probe_tls_ca,
                                           tls_cert=args.probe_tls_cert, tls_key=args.probe_tls_key),
    )


def parse_stage_timeouts(items: Sequence[str]) -> dict[str, float]:
    """['30m', 'recover=12h'] -> {'*': 1800.0, 'recover': 43200.0}; none given: the defaults."""
    limits = dict(DEFAULT_STAGE_TIMEOUTS)
    for item in items:
        stage, _, duration = item.rpartition("=")
        if stage and stage not in STAGES:
            raise ValueError(f"--stage-timeout {item!r}: no stage {stage!r}; the stages are {', '.join(STAGES)}")
        if not stage:
            limits = {}
        limits[stage or "*"] = parse_duration(duration, flag="--stage-timeout")
    return limits


def parse_duration(text: str, *, flag: str = "--retention") -> float:
    """'7d', '12h', '30m', '45s' or plain seconds -> seconds."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a duration such as 7d, 12h or 30m") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{flag} {text!r} must be positive")
    return seconds


def _forget_secrets() -> None:
    """The server keeps its tokens in memory only: worker processes inherit the environment,
    so the variables that carried them are removed once read (workers get the probe
    credentials they need explicitly)."""
    for name in ("SECATEURS_TOKEN", "SECATEURS_PROBE_TOKEN"):
        os.environ.pop(name, None)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then drain and exit within the grace period."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = config_from_args(args)
    _forget_secrets()
    try:
        server = Server(config)
        server.start()
    except (OSError, RuntimeError, ValueError) as exc:  # port taken, data dir locked, bad certificates
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"secateurs listening on {server.address}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("draining (grace %.1fs)", server.config.grace_seconds)
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secateurs serve", description="Run the secateurs gRPC server.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
