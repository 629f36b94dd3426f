"""`secateurs-healthcheck`: ask a server's grpc.health.v1 service whether it is SERVING.

Exit status 0 when it is, 1 otherwise (NOT_SERVING while draining, unreachable, refused),
2 for bad options. Containers use it as their health check; it imports only grpc (no torch),
so it answers in a fraction of a second.

    secateurs-healthcheck                                   # 127.0.0.1:50051, overall health
    secateurs-healthcheck --address pod:50051 --tls --tls-ca ca.pem --tls-server-name secateurs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


def check(address: str, *, service: str = "", timeout: float = 3.0, root_certificates: bytes | None = None,
          client_cert: tuple[bytes, bytes] | None = None, tls: bool = False,
          server_name: str | None = None) -> str:
    """The serving status name the server reports for `service` ("" is the whole server):
    "SERVING", "NOT_SERVING", ...; raises grpc.RpcError when the call fails.

    `client_cert` is (private key PEM, certificate chain PEM) for mutual TLS; `server_name`
    overrides the name checked against the server's certificate (a probe dials 127.0.0.1,
    which a certificate rarely names)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls or root_certificates or client_cert:
        key, chain = client_cert or (None, None)
        creds = grpc.ssl_channel_credentials(root_certificates, key, chain)
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `secateurs-healthcheck`."""
    parser = argparse.ArgumentParser(prog="secateurs-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=os.environ.get("SECATEURS_HEALTH_ADDRESS") or DEFAULT_ADDRESS,
                        help=f"host:port (default: $SECATEURS_HEALTH_ADDRESS, else {DEFAULT_ADDRESS})")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default %(default)s)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle that signed the server's certificate")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate chain (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-server-name", help="name to check the server's certificate against")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        ca = args.tls_ca.read_bytes() if args.tls_ca else None
        cert = (args.tls_key.read_bytes(), args.tls_cert.read_bytes()) if args.tls_cert else None
    except OSError as exc:
        print(f"secateurs-healthcheck: {exc}", file=sys.stderr)
        return 2
    try:
        status = check(args.address, service=args.service, timeout=args.timeout, root_certificates=ca,
                       client_cert=cert, tls=args.tls, server_name=args.tls_server_name)
    except grpc.RpcError as err:
        print(f"{args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
