"""Server TLS credentials from PEM files, shared by `secateurs serve` and `secateurs probe`.

Kept apart from api/server.py so the probe, which must not import torch, can use it.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(cert: Path | None, key: Path | None, client_ca: Path | None) -> grpc.ServerCredentials | None:
    """None for plain text; TLS with cert and key; mutual TLS when a client CA is given."""
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = client_ca.read_bytes() if client_ca else None
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], root_certificates=ca,
                                       require_client_auth=ca is not None)
