"""The committed stubs are exactly what the generator makes from the .proto."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The generator stamps its own release into the gRPC stub (a floor the runtime checks at import). A
# newer grpcio-tools in a fresh install changes that line and nothing the proto says, so it is not compared.
_GENERATED_VERSION = re.compile(r"^GRPC_GENERATED_VERSION = '[0-9.]+'$", re.MULTILINE)


def _content(path: Path) -> str:
    return _GENERATED_VERSION.sub("GRPC_GENERATED_VERSION = ...", path.read_text())


def _generator():  # clients/python/tools is not a package; load the script as a module
    spec = importlib.util.spec_from_file_location("gen_stubs", REPO / "clients/python/tools/gen_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    committed = REPO / "clients/python/secateurs_client/v1"
    assert {p.name for p in written} == {"compression_pb2.py", "compression_pb2.pyi", "compression_pb2_grpc.py"}
    for path in written:
        assert _content(path) == _content(committed / path.name), (
            f"{path.name} is stale: run python clients/python/tools/gen_stubs.py")


def test_stubs_import_inside_the_package() -> None:
    from secateurs_client.v1 import compression_pb2, compression_pb2_grpc

    assert compression_pb2_grpc.CompressionServiceStub
    assert compression_pb2.DESCRIPTOR.package == "secateurs.v1"
