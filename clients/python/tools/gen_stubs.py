"""Regenerate the protobuf/gRPC stubs in secateurs_client/v1/ from proto/secateurs/v1/.

protoc is run with `-I proto`, so generated modules import each other as
`secateurs.v1.*`; that name belongs to the server package, so the imports are
rewritten to `secateurs_client.v1.*` (a plain, deterministic text substitution).
tests/api/test_stubs.py runs `generate()` into a temp dir and compares.

    python clients/python/tools/gen_stubs.py        # needs grpcio-tools
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto"
PACKAGE_DIR = REPO / "clients" / "python" / "secateurs_client" / "v1"
_IMPORT = re.compile(r"^from secateurs\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs for every proto/secateurs/v1/*.proto into out_dir; return their paths."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "secateurs" / "v1").glob("*.proto"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "secateurs" / "v1").iterdir()):
            text = _IMPORT.sub("from secateurs_client.v1 import ", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
        return written


if __name__ == "__main__":
    for path in generate(PACKAGE_DIR):
        print(path.relative_to(REPO))
    sys.exit(0)
