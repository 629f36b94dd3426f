"""MACs reduction versus measured ONNX Runtime CPU speedup, per architecture, at one ratio.

Each model is pruned (uniform L1, ratio 0.4 by default), exported, parity-checked, and
measured interleaved against its unpruned baseline in one process. The gap between the
MACs column and the speedup column is why secateurs measures latency instead of
counting FLOPs.

    .venv/bin/python benchmarks/architectures.py [--ratio 0.4] [--threads 2] [--only resnet18,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from secateurs.engine.pipeline import compress
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, TargetSpec
from secateurs.errors import SecateursError

ARCHITECTURES = [
    ("torchvision:resnet18", "1x3x224x224"),
    ("torchvision:resnet50", "1x3x224x224"),
    ("torchvision:mobilenet_v2", "1x3x224x224"),
    ("torchvision:mobilenet_v3_large", "1x3x224x224"),
    ("torchvision:efficientnet_b0", "1x3x224x224"),
    ("torchvision:vgg16_bn", "1x3x224x224"),
    ("torchvision:densenet121", "1x3x224x224"),
    ("torchvision:convnext_tiny", "1x3x224x224"),
    ("torchvision:vit_b_16", "1x3x224x224"),
    ("zoo:resnet56", "1x3x32x32"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated subset of architecture names")
    args = parser.parse_args()
    protocol = ProtocolSpec(warmup_runs=10, warmup_seconds=1.0, window=25, min_samples=100, max_seconds=60.0)
    rows = []
    for arch, shape in ARCHITECTURES:
        if args.only and arch.split(":")[1] not in args.only.split(","):
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            spec = CompressSpec(model=ModelSpec(arch=arch), input_shape=tuple(int(d) for d in shape.split("x")),
                                out_dir=Path(tmp), ratio=args.ratio, target=TargetSpec(threads=args.threads),
                                protocol=protocol, exports=("onnx", "plan"))
            try:
                r = compress(spec).report
            except SecateursError as exc:
                rows.append(f"| {arch} | {shape} | error: {exc} | | | | | |")
                print(rows[-1], flush=True)
                continue
        lat, size = r["latency"], r["size"]
        b, c = lat["baseline"], lat["compressed"]
        rows.append(
            f"| {arch} | {shape} | {size['macs_reduction']:.2f}x | {size['params_reduction']:.2f}x "
            f"| {b['p50_ms']:.2f} → {c['p50_ms']:.2f} | **{lat['speedup']:.2f}x** "
            f"| {r['parity']['relative_diff']:.0e} ({r['parity']['mode']}) "
            f"| {'yes' if b['stable'] and c['stable'] else 'no'} ({b['n']}) | {time.perf_counter() - start:.0f} s |"
        )
        print(rows[-1], flush=True)
    print(f"\nratio {args.ratio}, ONNX Runtime CPU, {args.threads} threads, batch 1, uniform L1\n")
    print("| model | input | MACs reduction | params reduction | p50 ms before → after | measured speedup "
          "| parity (rel. diff) | stable (n) | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
