"""The latency-budget search, measured: budget precision, search cost, quality against uniform L1.

    .venv/bin/python benchmarks/search.py precision   # 3 models x speedups 1.5/2/3 on ONNX Runtime CPU
    .venv/bin/python benchmarks/search.py cost        # resnet50 search time, cold cache then warm cache
    .venv/bin/python benchmarks/search.py quality     # CIFAR-10 ResNet-20: searched vs uniform L1 vs
                                                      # Torch-Pruning global, same measured speedup, same fine-tune

`quality` needs weights from `benchmarks/train_cifar.py` (benchmarks/.cache/resnet20.safetensors, or
--arch/--weights)
and the CIFAR-10 zip ($SECATEURS_CIFAR10_ZIP or ../shared/datasets/cifar10-jpeg.zip).
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
from secateurs.engine.latency import OnnxRuntimeBackend, measure_interleaved
from secateurs.engine.models import build_architecture
from secateurs.engine.search import SearchSpec, search
from secateurs.engine.sensitivity import Calibration
from secateurs.engine.spec import ProtocolSpec

HERE = Path(__file__).resolve().parent
PROTOCOL = ProtocolSpec(warmup_runs=10, warmup_seconds=0.5, window=50, min_samples=200, max_seconds=4.0)
MODELS = [("torchvision:resnet50", (1, 3, 224, 224)), ("torchvision:mobilenet_v2", (1, 3, 224, 224)),
          ("zoo:resnet56", (1, 3, 32, 32))]


def _prepare(arch: str, shape: tuple[int, ...], tmp: Path):
    torch.manual_seed(0)
    model = build_architecture(arch).eval()
    x = torch.randn(shape)
    path = tmp / "baseline.onnx"
    export_onnx(model, x, path)
    g = torch.Generator().manual_seed(1)
    calib = Calibration(inputs=[torch.randn((8,) + shape[1:], generator=g)])
    return model, x, path, calib


def precision(only: str, batch: int | None) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, shape in MODELS:
            if only and arch.split(":")[1] not in only.split(","):
                continue
            if batch is not None:
                shape = (batch,) + shape[1:]
            model, x, path, calib = _prepare(arch, shape, Path(tmp))
            for speedup in (1.5, 2.0, 3.0):
                start = time.perf_counter()
                # a fresh cache per run (shared by the model's three budgets): a measurement cached
                # by an earlier run on a busier machine must not decide this one
                r = search(model, x, path, SearchSpec(budget=Budget(speedup=speedup), protocol=PROTOCOL,
                                                      cache_dir=Path(tmp) / "cache", arch=arch), calib)
                seconds = time.perf_counter() - start
                within = r.budget_met and r.final.speedup <= speedup / 0.9
                rows.append(f"| {arch} | {shape[0]} | {speedup}x | {r.final.speedup:.2f}x | {'yes' if r.budget_met else 'NO'} | "
                            f"{'yes' if within else 'no'} | {len([c for c in r.trace if c.stage != 'uniform'])} | "
                            f"{100 * (r.latency_model['mean_abs_error'] or 0):.1f}% | {seconds:.0f} s | {r.reason} |")
                print(rows[-1], flush=True)
    print("\n| model | batch | budget | measured speedup | met | within 10% | rounds | latency model error | time | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    hits = sum("| yes | yes |" in r for r in rows)
    print(f"\nmet and within 10%: {hits} of {len(rows)}")


def cost() -> None:
    arch, shape = MODELS[0]
    with tempfile.TemporaryDirectory() as tmp:
        model, x, path, calib = _prepare(arch, shape, Path(tmp))
        cache = Path(tmp) / "cache"
        times = []
        for label in ("cold cache", "warm cache"):
            start = time.perf_counter()
            r = search(model, x, path, SearchSpec(budget=Budget(speedup=2.0), protocol=PROTOCOL, cache_dir=cache,
                                                  arch=arch), calib)
            times.append(time.perf_counter() - start)
            print(f"{label}: {times[-1]:.0f} s, measured speedup {r.final.speedup:.2f}x, cache {r.cache}", flush=True)
    print(f"\n{arch} search for 2x (no recovery): cold {times[0]:.0f} s, warm {times[1]:.0f} s, "
          f"warm is {times[0] / times[1]:.1f}x faster")


def quality(speedup: float, epochs: float, batch: int, seeds: int, calibration: int, arch: str,
            weights: Path | None) -> None:
    sys.path.insert(0, str(HERE))
    import torch_pruning as tp
    from cifar_common import CACHE_DIR, cifar_zip_path, evaluate, load_cifar_tensors, normalize, subset, train
    from safetensors.torch import load_file

    from secateurs.engine.prune import PruneSpec, prune
    from secateurs.engine.sensitivity import recalibrate_batchnorm

    weights = weights or CACHE_DIR / f"{arch.split(':')[1]}.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights} missing: run benchmarks/train_cifar.py --arch {arch} --out {weights} first")
    model = build_architecture(arch).eval()
    model.load_state_dict(load_file(str(weights)))
    train_x, train_y = load_cifar_tensors(cifar_zip_path(), "train")
    test_x, test_y = load_cifar_tensors(cifar_zip_path(), "test")
    # calibration comes from training data: `calibration` images to score plans, as many to recalibrate BN
    picked_x, picked_y = subset(train_x, train_y, 2 * calibration, seed=1)
    val_x, val_y, recal_x = picked_x[:calibration], picked_y[:calibration], picked_x[calibration:]
    calib = Calibration(inputs=list(normalize(val_x).split(128)), labels=list(val_y.split(128)), real=True,
                        recalibration=list(normalize(recal_x).split(128)))
    shape = (batch, 3, 32, 32)
    x = torch.randn(shape)
    base_acc = evaluate(model, test_x, test_y)
    print(f"baseline {arch} test accuracy {base_acc:.2%}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_onnx(model, x, tmp / "baseline.onnx")
        base_backend = OnnxRuntimeBackend(tmp / "baseline.onnx", shape, threads=2)

        def measured_speedup(m) -> float:
            export_onnx(m, x, tmp / "c.onnx")
            b, c = measure_interleaved([base_backend, OnnxRuntimeBackend(tmp / "c.onnx", shape, threads=2)],
                                       PROTOCOL)
            return b.p50_ms / c.p50_ms

        candidates = {}
        results = {}
        for label, evaluations in (("searched (secateurs)", SearchSpec.refine_evaluations),
                                   ("searched, knapsack only (no joint refinement)", 0)):
            start = time.perf_counter()
            r = search(model, x, tmp / "baseline.onnx",
                       SearchSpec(budget=Budget(speedup=speedup), protocol=PROTOCOL, cache_dir=tmp / "cache",
                                  arch=arch, refine_evaluations=evaluations), calib)
            rounds = [c for c in r.trace if c.stage == "search"]
            print(f"{label}: {r.final.speedup:.2f}x ({r.reason or 'met'}), {len(rounds)} rounds, "
                  f"{time.perf_counter() - start:.0f} s; widths {r.widths}", flush=True)
            for c in rounds:
                if c.refinement:
                    print(f"  round {c.id}: refinement {c.refinement[0]['loss']:.4f} -> {c.refinement[-1]['loss']:.4f}"
                          f" ({len(c.refinement) - 1} moves, {c.refinement[-1]['evaluations']} evaluations)")
            candidates[label], results[label] = r.model, r

        # The classical baselines under the same budget: the least-pruned plan of each kind whose
        # measured speedup meets it (what a user of that method would ship for this budget).
        uniform_plans: dict[tuple, float] = {}
        for step in range(30, 80):  # distinct uniform plans between ratio 0.30 and 0.79
            ratio = step / 100
            m = prune(model, x, PruneSpec(ratio=ratio)).model
            key = tuple(p.shape[0] for p in m.parameters() if p.ndim == 4)
            uniform_plans.setdefault(key, ratio)
        uniform_ratio = None
        for ratio in sorted(uniform_plans.values()):
            s = measured_speedup(prune(model, x, PruneSpec(ratio=ratio)).model)
            print(f"  uniform ratio {ratio:.2f}: {s:.2f}x", flush=True)
            if s >= speedup:
                uniform_ratio = ratio
                break
        if uniform_ratio is not None:
            candidates[f"uniform L1 (ratio {uniform_ratio:.2f})"] = prune(model, x, PruneSpec(ratio=uniform_ratio)).model

        def global_pruned(ratio: float):
            m = copy.deepcopy(model)
            pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                          global_pruning=True, pruning_ratio=ratio, ignored_layers=[m.fc],
                                          round_to=8)
            pruner.step()
            return m

        lo, hi, best = 0.05, 0.9, None
        for _ in range(7):  # bisection on the measured speedup for the least ratio meeting the budget
            mid = (lo + hi) / 2
            try:
                s = measured_speedup(global_pruned(mid))
            except Exception as exc:  # a global ratio can empty a layer: go lower
                print(f"  global ratio {mid:.3f}: {type(exc).__name__}", flush=True)
                hi = mid
                continue
            print(f"  global ratio {mid:.3f}: {s:.2f}x", flush=True)
            if s >= speedup:
                hi, best = mid, mid
            else:
                lo = mid
        if best is not None:
            candidates[f"Torch-Pruning global L1 (ratio {best:.2f})"] = global_pruned(best)

        rows = []
        for name, m in candidates.items():
            speed = measured_speedup(m)
            recalibrate_batchnorm(m, calib.recalibration)
            pruned_acc = evaluate(m, test_x, test_y)
            start = time.perf_counter()
            sub_x, sub_y = subset(train_x, train_y, int(len(train_x) * epochs) if epochs < 1 else len(train_x))
            tuned = []
            for seed in range(seeds):  # the same fine-tunes (data order, augmentation) for every plan
                tuned_model = copy.deepcopy(m)
                train(tuned_model, sub_x, sub_y, epochs=max(1, int(epochs)), lr=0.01, warmup_epochs=0.1, seed=seed,
                      threads=2)
                tuned.append(evaluate(tuned_model, test_x, test_y))
            mean = sum(tuned) / len(tuned)
            rows.append(f"| {name} | {speed:.2f}x | {sum(p.numel() for p in m.parameters()):,} | {pruned_acc:.2%} | "
                        f"{' / '.join(f'{t:.2%}' for t in tuned)} | **{mean:.2%}** | "
                        f"{(time.perf_counter() - start) / seeds:.0f} s |")
            print(rows[-1], flush=True)
    print(f"\n{arch} CIFAR-10 (baseline {base_acc:.2%}), speedup budget {speedup}x at batch {batch}, ONNX Runtime CPU "
          f"2 threads; fine-tune: {epochs} epoch(s), SGD lr 0.01 cosine, seeds 0..{seeds - 1}, same for all")
    print("| plan | measured speedup | params | accuracy after pruning (BN recal.) | after fine-tune, per seed "
          "| mean | tune time per seed |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["precision", "cost", "quality"])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=None,
                        help="batch of the measured input (precision: default each model's 1; quality: 32)")
    parser.add_argument("--seeds", type=int, default=2, help="quality: fine-tunes per plan (seeds 0..n-1)")
    parser.add_argument("--calibration", type=int, default=512,
                        help="quality: training images that score plans (as many again recalibrate BatchNorm)")
    parser.add_argument("--arch", default="zoo:resnet20", help="quality: the CIFAR network")
    parser.add_argument("--weights", type=Path, default=None,
                        help="quality: its trained weights (default benchmarks/.cache/<name>.safetensors)")
    parser.add_argument("--only", default="", help="precision: comma-separated model names")
    args = parser.parse_args()
    if args.part == "precision":
        precision(args.only, args.batch)
    elif args.part == "cost":
        cost()
    else:
        quality(args.speedup, args.epochs, args.batch or 32, args.seeds, args.calibration, args.arch, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
