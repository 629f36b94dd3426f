"""Fixtures for service tests: in-process servers on loopback, a server in a subprocess,
ResNet-20 weights as safetensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from secateurs.api.server import Server, ServerConfig
from secateurs_client import Client
from service_helpers import FAKE_MODULES, FAKE_RUNNER, ServerProcess


@pytest.fixture(scope="session", autouse=True)
def metrics_on_free_ports() -> Iterator[None]:
    """Every `secateurs serve` a test starts serves metrics on a free port, so servers started
    side by side (or beside one on the default 9464) do not collide."""
    before = os.environ.get("SECATEURS_METRICS_LISTEN")
    os.environ["SECATEURS_METRICS_LISTEN"] = "127.0.0.1:0"
    yield
    if before is None:
        os.environ.pop("SECATEURS_METRICS_LISTEN", None)
    else:
        os.environ["SECATEURS_METRICS_LISTEN"] = before


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**overrides: Any) -> Server:
        config = dict(listen="127.0.0.1:0", data_dir=tmp_path / "data", grace_seconds=5.0,
                      metrics_listen="127.0.0.1:0")
        if overrides.get("runner") == FAKE_RUNNER:
            config["allow_modules"] = FAKE_MODULES
        config.update(overrides)
        server = Server(ServerConfig(**config))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(grace=3.0)


@pytest.fixture
def fake_server(make_server: Callable[..., Server]) -> Server:
    return make_server(runner=FAKE_RUNNER)


@pytest.fixture
def fake_client(fake_server: Server) -> Iterator[Client]:
    with Client(fake_server.address, timeout=10) as client:
        yield client


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.address, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def resnet20_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_file

    from secateurs.engine.intake.zoo import ZOO

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet20.safetensors"
    save_file({k: v.contiguous() for k, v in ZOO["resnet20"]().state_dict().items()}, str(path))
    return path


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", *args, log=tmp_path / "server.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
