"""host:port addresses: parsing, and whether one stays on this machine (loopback).

Torch-free and grpc-free, so the server, the probe and the engine's probe client share it.
"""

from __future__ import annotations

import ipaddress


def split_host_port(address: str) -> tuple[str, int]:
    """'10.0.0.7:50052' -> ('10.0.0.7', 50052); '[::1]:7000' -> ('::1', 7000). Raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
