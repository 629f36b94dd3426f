"""The client distribution stays light: no torch, only grpcio, protobuf and grpcio-status."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_client_imports_without_torch() -> None:
    code = ("import sys, secateurs_client, secateurs_client.cli; "
            "bad = [m for m in ('torch', 'secateurs', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_client_dependencies() -> None:
    meta = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0].strip() for d in meta["dependencies"])
    assert names == ["grpcio", "grpcio-status", "protobuf"]
