"""Depth pruning, measured: channels only, blocks only and the joint search under one speedup budget.

    .venv/bin/python benchmarks/depth.py cifar      # zoo ResNet-20 and ResNet-56 at batch 1 and 32, 2x budget:
                                                    # each plan, then the same short recovery, CIFAR-10 accuracy
    .venv/bin/python benchmarks/depth.py resnet50   # torchvision ResNet-50 at 224, batch 1: fidelity only
                                                    # (initialised weights here: the latency side only
                                                    # means something; RESULTS.md)

Every plan is found by the engine's own search (engine/search/run.py) with `depth` off, only and auto,
verified end to end on ONNX Runtime CPU (2 threads) interleaved with the baseline ("in its
search"). Plans come in steps (a block is 4-12% of a small network's latency), so the three
rarely land on the same speedup: when the better of channels-only and blocks-only lands faster
than the joint plan, the joint search runs again with that plan's measured speedup as its
budget, so that the comparison is also made at the same speedup. At the end every plan of a
case is measured again, all in one interleaved run with the baseline ("side by side"): the
column that compares them at one moment of the machine.

Recovery is the same for every plan: BatchNorm recalibration, then distillation from the
unpruned model (CE + KL at T=4, SGD lr 0.01, cosine) on the same training images in the same
order.

`cifar` needs weights from `benchmarks/train_cifar.py` (benchmarks/.cache/<name>.safetensors) and the
CIFAR-10 zip ($SECATEURS_CIFAR10_ZIP or ../shared/datasets/cifar10-jpeg.zip).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from secateurs.engine.budget import Budget
from secateurs.engine.export import export_onnx
from secateurs.engine.latency.target import open_target
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.search.run import SearchResult, search
from secateurs.engine.spec import ProtocolSpec, SearchSpec, TargetSpec
from secateurs.engine.search.sensitivity import Calibration

HERE = Path(__file__).resolve().parent
PROTOCOL = ProtocolSpec(warmup_runs=10, warmup_seconds=0.5, window=50, min_samples=200, max_seconds=20.0)
SIDE_BY_SIDE = replace(PROTOCOL, min_samples=1000, max_seconds=30.0)
MODES = (("channels only", "off"), ("blocks only", "only"), ("joint", "auto"))
SAME_SPEEDUP = 0.03  # a plan this much faster than the joint one is not at the same speedup


@dataclass
class Row:
    label: str
    result: SearchResult
    seconds: float
    score: float = 0.0  # accuracy after recovery (cifar) or top-1 agreement (resnet50)
    side_by_side: float = 0.0


def _run(model: torch.nn.Module, x: torch.Tensor, arch: str, label: str, depth: str, speedup: float,
         calib: Calibration, tmp: Path) -> Row:
    """One search; the cases of a model and batch share one measurement cache."""
    start = time.perf_counter()
    r = search(model, x, tmp / "baseline.onnx",
               SearchSpec(budget=Budget(speedup=speedup), protocol=PROTOCOL, cache_dir=tmp / "cache", arch=arch,
                          depth=depth), calib)
    seconds = time.perf_counter() - start
    pruned = sum(1 for ratio in r.ratios.values() if ratio > 0)
    print(f"  {label}: {r.final.speedup:.2f}x ({'met' if r.budget_met else 'NOT met'}"
          f"{', ' + r.reason if r.reason else ''}); {pruned} groups narrowed, {len(r.dropped)} blocks dropped "
          f"{r.dropped}; {seconds:.0f} s", flush=True)
    return Row(label, r, seconds)


def _compare(model: torch.nn.Module, shape: tuple[int, ...], arch: str, speedup: float, calib: Calibration,
             score: Callable[[SearchResult], float]) -> list[Row]:
    """The three searches, the joint search again at the better single kind's speedup where that
    is faster, and every plan measured side by side."""
    x = torch.randn(shape)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export_onnx(model, x, tmp / "baseline.onnx")
        rows = []
        for label, depth in MODES:
            rows.append(_run(model, x, arch, label, depth, speedup, calib, tmp))
            rows[-1].score = score(rows[-1].result)
        better = max(rows[:2], key=lambda row: row.score)
        joint = rows[2]
        if better.result.budget_met and better.result.final.speedup > joint.result.final.speedup * (1 + SAME_SPEEDUP):
            at = better.result.final.speedup
            rows.append(_run(model, x, arch, f"joint at {at:.2f}x", "auto", at, calib, tmp))
            rows[-1].score = score(rows[-1].result)
        for row, ratio in zip(rows, _side_by_side(model, [row.result.model for row in rows], x, tmp)):
            row.side_by_side = ratio
    best = max(rows[:2], key=lambda row: row.score)
    same = [row for row in rows[2:] if row.side_by_side >= best.side_by_side * (1 - SAME_SPEEDUP)]
    verdict = ("no joint plan at the same speedup" if not same else
               f"joint {max(row.score for row in same):.2%} vs {best.label} {best.score:.2%} "
               f"at {best.side_by_side:.2f}x side by side: "
               + ("joint at least as good" if max(row.score for row in same) >= best.score else "joint WORSE"))
    print(f"  {verdict}", flush=True)
    return rows


def _side_by_side(baseline: torch.nn.Module, models: list[torch.nn.Module], x: torch.Tensor,
                  tmp: Path, repeats: int = 3) -> list[float]:
    """Speedup of each model over the baseline, all measured in one interleaved run; the median
    of `repeats` such runs, each with fresh sessions (a session of a small model can settle in a
    fast or a slow mode: benchmarks/RESULTS.md, fresh sessions)."""
    paths = []
    for i, m in enumerate([baseline, *models]):
        paths.append(tmp / f"side-{i}.onnx")
        export_onnx(m, x, paths[-1])
    runs = []
    for _ in range(repeats):
        target = open_target(TargetSpec())
        try:
            stats = target.measure([target.load(tuple(x.shape), onnx=path) for path in paths], SIDE_BY_SIDE)
        finally:
            target.close()
        runs.append([stats[0].p50_ms / s.p50_ms for s in stats[1:]])
    return [statistics.median(ratios) for ratios in zip(*runs)]


def _cells(row: Row) -> str:
    r = row.result
    return (f"{r.final.speedup:.2f}x{'' if r.budget_met else ' (not met)'} | {row.side_by_side:.2f}x "
            f"| {len(r.dropped)} | {sum(1 for v in r.ratios.values() if v > 0)} | {r.final.params:,}")


def _print_table(quality_columns: list[str], lines: list[str]) -> None:
    """The markdown table of a part: the columns every part shares (`_cells`), then its own."""
    header = ["model", "batch", "search", "speedup in its search", "side by side", "blocks dropped",
              "groups narrowed", "params", *quality_columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(lines))


def cifar(speedup: float, archs: list[str], batches: list[int], train_images: int, epochs: int,
          calibration: int) -> None:
    sys.path.insert(0, str(HERE))
    from cifar_common import CACHE_DIR, cifar_zip_path, evaluate, load_cifar_tensors, normalize, subset, train
    from safetensors.torch import load_file

    from secateurs.engine.search.sensitivity import recalibrate_batchnorm

    train_x, train_y = load_cifar_tensors(cifar_zip_path(), "train")
    test_x, test_y = load_cifar_tensors(cifar_zip_path(), "test")
    picked_x, picked_y = subset(train_x, train_y, 2 * calibration, seed=1)
    calib = Calibration(inputs=list(normalize(picked_x[:calibration]).split(128)),
                        labels=list(picked_y[:calibration].split(128)), real=True,
                        recalibration=list(normalize(picked_x[calibration:]).split(128)))
    tune_x, tune_y = subset(train_x, train_y, train_images, seed=2)
    lines = []
    for arch in archs:
        weights = CACHE_DIR / f"{arch.split(':')[1]}.safetensors"
        if not weights.exists():
            raise SystemExit(f"{weights} missing: run benchmarks/train_cifar.py --arch {arch} --out {weights} first")
        model = build_architecture(arch).eval()
        model.load_state_dict(load_file(str(weights)))
        base_acc = evaluate(model, test_x, test_y)
        print(f"{arch}: test accuracy {base_acc:.2%}", flush=True)
        accuracy: dict[int, tuple[float, float, float]] = {}  # id(result) -> after pruning, recovered, seconds

        def recovered(r: SearchResult) -> float:
            pruned = copy.deepcopy(r.model)
            recalibrate_batchnorm(pruned, calib.recalibration)
            pruned_acc = evaluate(pruned, test_x, test_y)
            start = time.perf_counter()
            train(pruned, tune_x, tune_y, epochs=epochs, lr=0.01, warmup_epochs=0.1, seed=0, teacher=model,
                  distill_alpha=0.5, threads=2)
            accuracy[id(r)] = (pruned_acc, evaluate(pruned, test_x, test_y), time.perf_counter() - start)
            print(f"    recovered: {pruned_acc:.2%} -> {accuracy[id(r)][1]:.2%}", flush=True)
            return accuracy[id(r)][1]

        for batch in batches:
            print(f" batch {batch}, speedup budget {speedup}x", flush=True)
            for row in _compare(model, (batch, 3, 32, 32), arch, speedup, calib, recovered):
                pruned_acc, tuned_acc, tune_seconds = accuracy[id(row.result)]
                lines.append(f"| {arch.split(':')[1]} | {batch} | {row.label} | {_cells(row)} | {pruned_acc:.2%} "
                             f"| **{tuned_acc:.2%}** | {row.seconds:.0f} s | {tune_seconds:.0f} s |")
                print(lines[-1], flush=True)
        print(f"  (baseline {base_acc:.2%})", flush=True)
    print(f"\nCIFAR-10, speedup budget {speedup}x, ONNX Runtime CPU 2 threads; recovery: {epochs} epoch(s) of "
          f"distillation on {train_images} training images, the same for every plan")
    _print_table(["accuracy after pruning (BN recal.)", "after recovery", "search time", "recovery time"], lines)


def resnet50(speedup: float, batch: int) -> None:
    torch.manual_seed(0)
    model = build_architecture("torchvision:resnet50").eval()
    g = torch.Generator().manual_seed(1)
    calib = Calibration(inputs=[torch.randn((8, 3, 224, 224), generator=g)])
    lines = []
    for row in _compare(model, (batch, 3, 224, 224), "torchvision:resnet50", speedup, calib,
                        lambda r: r.quality_after["agreement"]):
        q = row.result.quality_after
        lines.append(f"| resnet50 | {batch} | {row.label} | {_cells(row)} | {q['agreement']:.2%} | {q['kl']:.4f} "
                     f"| {row.seconds:.0f} s |")
        print(lines[-1], flush=True)
    print(f"\ntorchvision ResNet-50 (initialised weights, fidelity on generated inputs), speedup budget {speedup}x")
    _print_table(["top-1 agreement", "KL to the original", "search time"], lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["cifar", "resnet50"])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--arch", default="zoo:resnet20,zoo:resnet56", help="cifar: comma-separated networks")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes (resnet50: the first)")
    parser.add_argument("--train-images", type=int, default=10_000, help="cifar: recovery set size")
    parser.add_argument("--epochs", type=int, default=1, help="cifar: recovery epochs")
    parser.add_argument("--calibration", type=int, default=512, help="cifar: images scoring plans (as many for BN)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(2)
    started = time.perf_counter()
    if args.part == "cifar":
        cifar(args.speedup, args.arch.split(","), batches, args.train_images, args.epochs, args.calibration)
    else:
        resnet50(args.speedup, batches[0])
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
