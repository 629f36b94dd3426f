"""Depth pruning, measured: channels only, blocks only and the joint search under one speedup budget.

    .venv/bin/python benchmarks/depth.py cifar      # zoo ResNet-20 and ResNet-56 at batch 1 and 32, 2x budget:
                                                    # each plan, then the same short recovery, CIFAR-10 accuracy
    .venv/bin/python benchmarks/depth.py resnet50   # torchvision ResNet-50 at 224, batch 1: fidelity only

Every plan is found by the engine's own search (engine/search.py) with `depth` off, only and auto,
verified end to end on ONNX Runtime CPU (2 threads) interleaved with the baseline; the speedup
printed is that measurement. Recovery is the same for every plan: BatchNorm recalibration, then
distillation from the unpruned model (CE + KL at T=4, SGD lr 0.01, cosine) on the same training
images in the same order.

`cifar` needs weights from `benchmarks/train_cifar.py` (benchmarks/.cache/<name>.safetensors) and the
CIFAR-10 zip ($SECATEURS_CIFAR10_ZIP or ../shared/datasets/cifar10-jpeg.zip).
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
from secateurs.engine.export import export_onnx
from secateurs.engine.models import build_architecture
from secateurs.engine.search import SearchResult, SearchSpec, search
from secateurs.engine.sensitivity import Calibration
from secateurs.engine.spec import ProtocolSpec

HERE = Path(__file__).resolve().parent
PROTOCOL = ProtocolSpec(warmup_runs=10, warmup_seconds=0.5, window=50, min_samples=200, max_seconds=20.0)
MODES = (("channels only", "off"), ("blocks only", "only"), ("joint", "auto"))


def _search_all(model: torch.nn.Module, shape: tuple[int, ...], arch: str, speedup: float, calib: Calibration,
                tmp: Path) -> list[tuple[str, SearchResult, float]]:
    """The three searches on one model and target, sharing one measurement cache."""
    x = torch.randn(shape)
    export_onnx(model, x, tmp / "baseline.onnx")
    out = []
    for label, depth in MODES:
        start = time.perf_counter()
        r = search(model, x, tmp / "baseline.onnx",
                   SearchSpec(budget=Budget(speedup=speedup), protocol=PROTOCOL, cache_dir=tmp / "cache", arch=arch,
                              depth=depth), calib)
        seconds = time.perf_counter() - start
        pruned = sum(1 for ratio in r.ratios.values() if ratio > 0)
        print(f"  {label}: {r.final.speedup:.2f}x ({'met' if r.budget_met else 'NOT met'}{', ' + r.reason if r.reason else ''}); "
              f"{pruned} groups narrowed, {len(r.dropped)} blocks dropped {r.dropped}; {seconds:.0f} s", flush=True)
        out.append((label, r, seconds))
    return out


def cifar(speedup: float, archs: list[str], batches: list[int], train_images: int, epochs: int,
          calibration: int) -> None:
    sys.path.insert(0, str(HERE))
    from cifar_common import CACHE_DIR, cifar_zip_path, evaluate, load_cifar_tensors, normalize, subset, train
    from safetensors.torch import load_file

    from secateurs.engine.sensitivity import recalibrate_batchnorm

    train_x, train_y = load_cifar_tensors(cifar_zip_path(), "train")
    test_x, test_y = load_cifar_tensors(cifar_zip_path(), "test")
    picked_x, picked_y = subset(train_x, train_y, 2 * calibration, seed=1)
    calib = Calibration(inputs=list(normalize(picked_x[:calibration]).split(128)),
                        labels=list(picked_y[:calibration].split(128)), real=True,
                        recalibration=list(normalize(picked_x[calibration:]).split(128)))
    tune_x, tune_y = subset(train_x, train_y, train_images, seed=2)
    rows = []
    for arch in archs:
        weights = CACHE_DIR / f"{arch.split(':')[1]}.safetensors"
        if not weights.exists():
            raise SystemExit(f"{weights} missing: run benchmarks/train_cifar.py --arch {arch} --out {weights} first")
        model = build_architecture(arch).eval()
        model.load_state_dict(load_file(str(weights)))
        base_acc = evaluate(model, test_x, test_y)
        print(f"{arch}: test accuracy {base_acc:.2%}", flush=True)
        for batch in batches:
            print(f" batch {batch}, speedup budget {speedup}x", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                for label, r, seconds in _search_all(model, (batch, 3, 32, 32), arch, speedup, calib, Path(tmp)):
                    pruned = copy.deepcopy(r.model)
                    recalibrate_batchnorm(pruned, calib.recalibration)
                    pruned_acc = evaluate(pruned, test_x, test_y)
                    start = time.perf_counter()
                    train(pruned, tune_x, tune_y, epochs=epochs, lr=0.01, warmup_epochs=0.1, seed=0, teacher=model,
                          distill_alpha=0.5, threads=2)
                    tuned_acc = evaluate(pruned, test_x, test_y)
                    rows.append(f"| {arch.split(':')[1]} | {batch} | {label} | {r.final.speedup:.2f}x "
                                f"{'' if r.budget_met else '(not met)'} | {len(r.dropped)} "
                                f"| {sum(1 for v in r.ratios.values() if v > 0)} | {r.final.params:,} "
                                f"| {pruned_acc:.2%} | **{tuned_acc:.2%}** | {seconds:.0f} s "
                                f"| {time.perf_counter() - start:.0f} s |")
                    print(rows[-1], flush=True)
            print(f"  (baseline {base_acc:.2%})", flush=True)
    print(f"\nCIFAR-10, speedup budget {speedup}x, ONNX Runtime CPU 2 threads; recovery: {epochs} epoch(s) of "
          f"distillation on {train_images} training images, the same for every plan")
    print("| model | batch | search | measured speedup | blocks dropped | groups narrowed | params "
          "| accuracy after pruning (BN recal.) | after recovery | search time | recovery time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def resnet50(speedup: float, batch: int) -> None:
    torch.manual_seed(0)
    model = build_architecture("torchvision:resnet50").eval()
    g = torch.Generator().manual_seed(1)
    calib = Calibration(inputs=[torch.randn((8, 3, 224, 224), generator=g)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, r, seconds in _search_all(model, (batch, 3, 224, 224), "torchvision:resnet50", speedup, calib,
                                             Path(tmp)):
            q = r.quality_after
            rows.append(f"| resnet50 | {batch} | {label} | {r.final.speedup:.2f}x {'' if r.budget_met else '(not met)'} "
                        f"| {len(r.dropped)} | {sum(1 for v in r.ratios.values() if v > 0)} | {r.final.params:,} "
                        f"| {q['agreement']:.2%} | {q['kl']:.4f} | {seconds:.0f} s |")
            print(rows[-1], flush=True)
    print(f"\ntorchvision ResNet-50 (initialised weights, fidelity on generated inputs), speedup budget {speedup}x")
    print("| model | batch | search | measured speedup | blocks dropped | groups narrowed | params "
          "| top-1 agreement | KL to the original | search time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


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
