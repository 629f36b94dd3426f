"""`secateurs probe --listen ADDR`: the LatencyProbe service's lifecycle and command line.

The same token and TLS options as `secateurs serve` (rpc/auth.py, rpc/tls.py), the same
error mapping (rpc/errors.py) and grpc.health.v1. Imports nothing that loads torch, so
it starts in about a second on a device with onnxruntime alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from secateurs.addresses import is_loopback
from secateurs.rpc.auth import TokenInterceptor
from secateurs.rpc.errors import ErrorInterceptor
from secateurs.rpc.tls import server_credentials
from secateurs.probe.service import LatencyProbeServicer
from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

log = logging.getLogger("secateurs.probe")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LatencyProbe"].full_name


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Everything `secateurs probe` can be told."""

    listen: str = "127.0.0.1:50052"
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_model_bytes: int = 2 << 30  # one request's models in all
    max_store_bytes: int = 8 << 30  # models kept on disk between requests
    store_dir: Path | None = None  # where uploads go; None: a temporary directory of this process
    insecure: bool = False  # listen off loopback without a token or mutual TLS
    grace_seconds: float = 5.0


class ProbeServer:
    """Owns the probe's gRPC server, from start to stop."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        host = config.listen.rpartition(":")[0]
        if not is_loopback(host) and not (config.token or config.tls_client_ca) and not config.insecure:
            raise ValueError(f"refusing to serve on {config.listen} without a token or mutual TLS: anyone who "
                             f"reaches it could occupy the device; give --token (or $SECATEURS_PROBE_TOKEN), "
                             f"--tls-client-ca, or --insecure")
        self._tmp = None if config.store_dir else tempfile.TemporaryDirectory(prefix="secateurs-probe-")
        store_dir = config.store_dir or Path(self._tmp.name)
        interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor()]
        if config.token:
            interceptors.append(TokenInterceptor(config.token))
        # Few threads: measurements run one at a time; Describe and health answer meanwhile.
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe"),
                                 interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        self.servicer = LatencyProbeServicer(store_dir=store_dir, max_model_bytes=config.max_model_bytes,
                                             max_store_bytes=config.max_store_bytes)
        pb_grpc.add_LatencyProbeServicer_to_server(self.servicer, self._grpc)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> None:
        creds = server_credentials(self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca)
        listen = self.config.listen
        self.port = self._grpc.add_secure_port(listen, creds) if creds else self._grpc.add_insecure_port(listen)
        if not self.port:
            raise OSError(f"cannot listen on {listen}")
        self._grpc.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self._grpc.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "ProbeServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    d = ProbeConfig()
    parser = argparse.ArgumentParser(prog="secateurs probe",
                                     description="Measure latency on this device for a secateurs server.")
    parser.add_argument("--listen", default=d.listen, help="host:port to listen on; :0 picks a free port "
                                                           "(default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("SECATEURS_PROBE_TOKEN"),
                        help="require 'authorization: Bearer <token>' (default: $SECATEURS_PROBE_TOKEN; none)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle; enables mutual TLS")
    parser.add_argument("--max-model-bytes", type=int, default=d.max_model_bytes,
                        help="most bytes of models one request may send (default %(default)s)")
    parser.add_argument("--max-store-bytes", type=int, default=d.max_store_bytes,
                        help="bytes of models kept on disk between requests (default %(default)s)")
    parser.add_argument("--store-dir", type=Path, default=None,
                        help="directory for uploaded models (default: a temporary one, removed at exit)")
    parser.add_argument("--insecure", action="store_true",
                        help="listen off loopback without --token or --tls-client-ca")
    parser.add_argument("--grace", type=float, default=d.grace_seconds,
                        help="seconds in-flight measurements get on SIGTERM (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_model_bytes < 1:
        print("error: --max-model-bytes must be at least 1", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = ProbeConfig(listen=args.listen, token=args.token or None, tls_cert=args.tls_cert, tls_key=args.tls_key,
                         tls_client_ca=args.tls_client_ca, max_model_bytes=args.max_model_bytes,
                         max_store_bytes=args.max_store_bytes, store_dir=args.store_dir, insecure=args.insecure,
                         grace_seconds=args.grace)
    try:
        server = ProbeServer(config)
        server.start()
    except (OSError, RuntimeError, ValueError) as exc:  # port taken, bad certificates
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"secateurs probe listening on {server.address}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
