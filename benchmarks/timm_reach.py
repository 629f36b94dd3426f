"""timm families end to end at small inputs: groups, removable blocks, parity after pruning, and the
measured speedup a 1.5x latency-budget search reaches on ONNX Runtime CPU.

    .venv/bin/python benchmarks/timm_reach.py [--only resnet18,vit_tiny_patch16_224] [--size 64]

Random-initialised weights (timm builds without weights and downloads nothing), fidelity (KL) as
the quality signal, a short protocol (at most 2 s a measurement), no recovery.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

from secateurs.engine.budget import Budget
from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.prune.blocks import find_blocks
from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.search.run import search
from secateurs.engine.search.sensitivity import Calibration
from secateurs.engine.spec import ProtocolSpec, PruneSpec, SearchSpec

PROTOCOL = ProtocolSpec(warmup_runs=5, warmup_seconds=0.2, window=30, min_samples=90, max_seconds=2.0)
FAMILIES = ["resnet18", "resnext26ts", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "convnext_atto",
            "ghostnet_100", "densenet121", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
            "swin_tiny_patch4_window7_224", "mixer_s16_224"]
# position embeddings or windows: the input size is an argument
SIZED = {"vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mixer_s16_224"}


def row(name: str, size: int, tmp: Path) -> str:
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, **({"img_size": size} if name in SIZED else {})}
    model = build_architecture(f"timm:{name}", kwargs).eval()
    x = torch.randn(1, 3, size, size)
    groups = describe_groups(prepare(copy.deepcopy(model), x), x)
    heads = sum(g.unit == "heads" for g in groups)
    blocks = len(find_blocks(model, x))
    uniform = prune(model, x, PruneSpec(ratio=0.3)).model
    export_onnx(uniform, x, tmp / f"{name}-uniform.onnx")
    parity = check_parity(uniform, tmp / f"{name}-uniform.onnx", tuple(x.shape))
    baseline = tmp / f"{name}.onnx"
    export_onnx(model, x, baseline)
    calib = Calibration(inputs=[torch.randn((8, 3, size, size), generator=torch.Generator().manual_seed(1))])
    start = time.perf_counter()
    r = search(model, x, baseline, SearchSpec(budget=Budget(speedup=1.5), protocol=PROTOCOL,
                                              cache_dir=tmp / "cache", arch=f"timm:{name}"), calib)
    seconds = time.perf_counter() - start
    return (f"| {name} | {len(groups)} ({sum(g.prunable for g in groups)} prunable, {heads} of heads) | {blocks} | "
            f"{'yes' if parity.passed else 'NO'} ({parity.relative_diff:.0e}) | {r.final.speedup:.2f}x | "
            f"{'yes' if r.budget_met else 'no'} | {len(r.plan.dropped_blocks)} | {seconds:.0f} s | {r.reason} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAMILIES:
            if args.only and name not in args.only.split(","):
                continue
            try:
                rows.append(row(name, args.size, Path(tmp)))
            except Exception as exc:  # one family failing is a row of the table, not the end of it
                rows.append(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} | | | | | | | |")
            print(rows[-1], flush=True)
    print(f"\n1x3x{args.size}x{args.size}, ONNX Runtime CPU, speedup budget 1.5x at p50")
    print("| timm model | groups | removable blocks | parity after 30% uniform | measured speedup | met | "
          "blocks dropped | search | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
