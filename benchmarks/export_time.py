"""The delivering exporter's time with its operator registry rebuilt on every call (torch's own
behaviour) and built once per process (engine/export.py reuse_torchlib_registry), interleaved in one
process, with the files compared byte for byte.

    .venv/bin/python benchmarks/export_time.py            # ResNet-20 at 32x32, ResNet-50 and MobileNetV2 at 224x224
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import secateurs.engine.export as export
from secateurs.engine.export import export_onnx, reuse_torchlib_registry
from secateurs.engine.intake.models import build_architecture

MODELS = [("zoo:resnet20", 32), ("torchvision:resnet50", 224), ("torchvision:mobilenet_v2", 224)]
ROUNDS = 3


def main() -> None:
    from torch.onnx._internal.exporter import _registration

    warnings.simplefilter("ignore")
    registry = _registration.ONNXRegistry
    rebuilt = registry.__dict__["from_torchlib"]  # torch's own, before the engine replaces it
    reuse_torchlib_registry()
    reused = registry.__dict__["from_torchlib"]
    export.reuse_torchlib_registry = lambda: None  # each side keeps the registry it is given
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, size in MODELS:
            torch.manual_seed(0)
            model, x = build_architecture(arch).eval(), torch.randn(1, 3, size, size)
            export_onnx(model, x, Path(tmp) / "warm.onnx")  # imports and first-call costs, on neither side
            times: dict[str, list[float]] = {"rebuilt": [], "reused": []}
            digests: set[str] = set()
            for _ in range(ROUNDS):
                for label, build in (("rebuilt", rebuilt), ("reused", reused)):
                    registry.from_torchlib = build
                    path = Path(tmp) / f"{label}.onnx"
                    start = time.perf_counter()
                    export_onnx(model, x, path)
                    times[label].append(time.perf_counter() - start)
                    digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
            before, after = statistics.median(times["rebuilt"]), statistics.median(times["reused"])
            rows.append(f"| {arch} | 1x3x{size}x{size} | {before:.2f} s | {after:.2f} s | {before / after:.2f}x | "
                        f"{'yes' if len(digests) == 1 else 'NO'} |")
            print(rows[-1], flush=True)
    registry.from_torchlib = reused
    print(f"\n| model | input | registry rebuilt (median of {ROUNDS}) | built once | faster by | files identical |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
