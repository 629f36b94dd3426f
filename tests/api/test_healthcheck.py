"""secateurs-healthcheck, the containers' health check, against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from secateurs.api.server import Server
from secateurs.healthcheck import main

HEALTHCHECK = Path(sys.executable).parent / "secateurs-healthcheck"


def test_serving_then_draining(make_server: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server(token="secret")  # health is exempt from the token
    assert main(["--address", server.address]) == 0
    assert capsys.readouterr().out.strip() == f"{server.address}: SERVING"
    server.drain()
    assert main(["--address", server.address]) == 1
    assert capsys.readouterr().out.strip() == f"{server.address}: NOT_SERVING"


def test_unreachable_server_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--address", f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_console_script_answers_quickly(make_server: Callable[..., Server]) -> None:
    """It runs every 30 s in each container: it must not import torch."""
    server = make_server()
    started = time.monotonic()
    done = subprocess.run([str(HEALTHCHECK), "--address", server.address], capture_output=True, text=True,
                          timeout=30)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert seconds < 3.0, f"took {seconds:.1f}s"
    check = subprocess.run([sys.executable, "-c", "import sys, secateurs.healthcheck; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=30)
    assert check.stdout.strip() == "False"
