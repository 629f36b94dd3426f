"""`make run`: a server on embedded defaults, the client against it, a report summary.

Starts the gRPC server in this process (a temp data dir, a free loopback port,
one worker process), writes ResNet-20 weights as safetensors (random init, no
download), runs `secateurs-client compress` against the server (upload, job,
live progress, download into ./out/demo), prints the report summary and stops.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from secateurs.api.server import Server, ServerConfig

OUT = Path("out/demo")


def _weights(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from secateurs.engine.zoo import ZOO

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in ZOO["resnet20"]().state_dict().items()}, str(path))
    return path


def _summary(report: dict) -> str:
    try:
        from secateurs.cli import summary

        return summary(report)
    except (ImportError, KeyError, TypeError):  # fall back to the raw numbers
        return json.dumps({k: report.get(k) for k in ("latency", "size", "parity")}, indent=2)[:4000]


def main() -> int:
    from secateurs_client.cli import main as client_main

    with tempfile.TemporaryDirectory(prefix="secateurs-demo-") as tmp:
        server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=Path(tmp) / "data"))
        server.start()
        print(f"server listening on {server.address} (data in {tmp})", file=sys.stderr)
        try:
            weights = _weights(Path(tmp) / "resnet20.safetensors")
            rc = client_main(["--server", server.address, "compress", "--arch", "zoo:resnet20",
                              "--weights", str(weights), "--input-shape", "1x3x32x32", "--ratio", "0.5",
                              "--label", "source=demo", "--out", str(OUT)])
            if rc != 0:
                return rc
            print(_summary(json.loads((OUT / "report.json").read_text())))
            print(f"artifacts in {OUT}/: {', '.join(sorted(p.name for p in OUT.iterdir()))}")
            return 0
        finally:
            server.stop(grace=5)
            print("server stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
