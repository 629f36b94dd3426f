"""TLS and mutual TLS with certificates made by openssl for the test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from secateurs_client import Client

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d)
    return d


def test_tls(make_server, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    with Client(server.address, root_certificates=(pki / "ca.pem").read_bytes(), timeout=10) as client:
        assert list(client.list_jobs()) == []
    with Client(server.address, timeout=3) as plain, pytest.raises(grpc.RpcError) as err:
        list(plain.list_jobs())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate(make_server, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server(tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    ca = (pki / "ca.pem").read_bytes()
    cert = ((pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
    with Client(server.address, root_certificates=ca, client_cert=cert, timeout=10) as client:
        assert list(client.list_jobs()) == []
    with Client(server.address, root_certificates=ca, timeout=3) as anonymous, pytest.raises(grpc.RpcError) as err:
        list(anonymous.list_jobs())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
