"""The latency-budget search, measured: budget precision, search cost, quality against uniform L1.

    .venv/bin/python benchmarks/search.py precision   # 3 models x speedups 1.5/2/3 on ONNX Runtime CPU
    .venv/bin/python benchmarks/search.py cost        # ResNet-50 and MobileNetV2 search time, cold then warm cache
    .venv/bin/python benchmarks/search.py job --epochs 2   # a whole CIFAR-10 ResNet-20 job: where the time goes
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
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.search.run import search
from secateurs.engine.spec import ProtocolSpec, SearchSpec
from secateurs.engine.search.sensitivity import Calibration
from secateurs.engine.size import count_params

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


def _trace_line(r) -> str:
    """The plans a search measured, in order: stage, steering speedup (decisive figure and its sessions),
    blocks dropped: why it landed where it did."""
    parts = []
    for c in r.trace:
        m = c.measured
        figure = (f"{m['steering_speedup']:.2f}x->{m['speedup']:.2f}x/{m['sessions']:.0f}s" if m.get("decisive")
                  else f"{m['speedup']:.2f}x")
        parts.append(f"{c.stage[:5]} {figure}" + (f" -{len(c.plan.dropped_blocks)}b" if c.plan.dropped_blocks else ""))
    return "  trace: " + ", ".join(parts)


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
                print(_trace_line(r), flush=True)
    print("\n| model | batch | budget | measured speedup | met | within 10% | rounds | latency model error | time | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    hits = sum("| yes | yes |" in r for r in rows)
    print(f"\nmet and within 10%: {hits} of {len(rows)}")


def cost(only: str) -> None:
    """Each model's 2x search with a cold cache, then again with the warm one (layer tables,
    sensitivities, steering figures reused; the decisive figure measured again, as always)."""
    rows = []
    for arch, shape in MODELS[:2]:
        if only and arch.split(":")[1] not in only.split(","):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model, x, path, calib = _prepare(arch, shape, Path(tmp))
            cache = Path(tmp) / "cache"
            times, results = [], []
            for label in ("cold cache", "warm cache"):
                start = time.perf_counter()
                r = search(model, x, path, SearchSpec(budget=Budget(speedup=2.0), protocol=PROTOCOL, cache_dir=cache,
                                                      arch=arch), calib)
                times.append(time.perf_counter() - start)
                results.append(r)
                print(f"{arch} {label}: {times[-1]:.0f} s, measured speedup {r.final.speedup:.2f}x "
                      f"({'met' if r.budget_met else 'NOT met'}), cache {r.cache}", flush=True)
                print(_trace_line(r), flush=True)
        rows.append(f"| {arch} | {shape[0]} | {times[0]:.0f} s | {times[1]:.0f} s | {times[0] / times[1]:.1f}x | "
                    f"{results[0].final.speedup:.2f}x / {results[1].final.speedup:.2f}x |")
    print("\n| model | batch | cold cache | warm cache | warm is faster by | measured speedup (cold / warm) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def quality(speedup: float, epochs: float, batch: int, seeds: int, calibration: int, arch: str,
            weights: Path | None) -> None:
    """Searched plan against uniform L1 and Torch-Pruning's global ranking at the same measured budget,
    each fine-tuned alike; `seeds` runs of the whole job for the search (its calibration images, its
    search and its fine-tune), and the same fine-tune seeds for the two fixed classical plans.
    Accuracy on the 10,000 test images, which no search saw (it calibrates on training images)."""
    sys.path.insert(0, str(HERE))
    from cifar_common import CACHE_DIR, cifar_zip_path, evaluate, load_cifar_tensors, normalize, subset, train
    from safetensors.torch import load_file

    weights = weights or CACHE_DIR / f"{arch.split(':')[1]}.safetensors"
    if not weights.exists():
        raise SystemExit(f"{weights} missing: run benchmarks/train_cifar.py --arch {arch} --out {weights} first")
    model = build_architecture(arch).eval()
    model.load_state_dict(load_file(str(weights)))
    train_x, train_y = load_cifar_tensors(cifar_zip_path(), "train")
    test_x, test_y = load_cifar_tensors(cifar_zip_path(), "test")
    shape = (batch, 3, 32, 32)
    x = torch.randn(shape)
    base_acc = evaluate(model, test_x, test_y)
    print(f"baseline {arch} test accuracy {base_acc:.2%} on {len(test_y):,} images", flush=True)
    runs: dict[str, list[tuple[float, float, int]]] = {}  # method -> [(speedup, accuracy, params)] per seed
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_onnx(model, x, tmp / "baseline.onnx")
        base_backend = OnnxRuntimeBackend(tmp / "baseline.onnx", shape, threads=2)

        def measured_speedup(m) -> float:
            export_onnx(m, x, tmp / "c.onnx")
            b, c = measure_interleaved([base_backend, OnnxRuntimeBackend(tmp / "c.onnx", shape, threads=2)],
                                       PROTOCOL)
            return b.p50_ms / c.p50_ms

        def tuned(m, seed: int) -> float:
            tuned_model = copy.deepcopy(m)
            sub_x, sub_y = subset(train_x, train_y, int(len(train_x) * epochs) if epochs < 1 else len(train_x), seed)
            train(tuned_model, sub_x, sub_y, epochs=max(1, int(epochs)), lr=0.01, warmup_epochs=0.1, seed=seed,
                  threads=2)
            return evaluate(tuned_model, test_x, test_y)

        for seed in range(seeds):  # the whole job, per seed: calibration images, search, fine-tune
            picked_x, picked_y = subset(train_x, train_y, 2 * calibration, seed=100 + seed)
            calib = Calibration(inputs=list(normalize(picked_x[:calibration]).split(128)),
                                labels=list(picked_y[:calibration].split(128)), real=True,
                                recalibration=list(normalize(picked_x[calibration:]).split(128)))
            start = time.perf_counter()
            r = search(model, x, tmp / "baseline.onnx",
                       SearchSpec(budget=Budget(speedup=speedup), protocol=PROTOCOL, cache_dir=tmp / "cache",
                                  arch=arch, seed=seed), calib)
            searched = time.perf_counter() - start
            accuracy = tuned(r.model, seed)
            runs.setdefault("searched (secateurs)", []).append((r.final.speedup, accuracy, count_params(r.model)))
            print(f"seed {seed}: searched {r.final.speedup:.2f}x ({'met' if r.budget_met else 'NOT met'}) in "
                  f"{searched:.0f} s, {count_params(r.model):,} params, {len(r.dropped)} blocks dropped; "
                  f"fine-tuned {accuracy:.2%}", flush=True)
        for label, pruned in _classical(model, x, speedup, measured_speedup).items():
            speed = measured_speedup(pruned)
            for seed in range(seeds):
                runs.setdefault(label, []).append((speed, tuned(pruned, seed), count_params(pruned)))
                print(f"{label}, seed {seed}: {speed:.2f}x, fine-tuned {runs[label][-1][1]:.2%}", flush=True)
    print(f"\n{arch} CIFAR-10 (baseline {base_acc:.2%} on 10,000 test images), speedup budget {speedup}x at batch "
          f"{batch}, ONNX Runtime CPU 2 threads; fine-tune {epochs} epoch(s), SGD lr 0.01 cosine; {seeds} seeds")
    print("| plan | measured speedup per seed | params | accuracy after fine-tune, per seed | mean | spread |")
    print("|---|---|---|---|---|---|")
    for label, rows in runs.items():
        accs = [a for _, a, _ in rows]
        mean = sum(accs) / len(accs)
        print(f"| {label} | {' / '.join(f'{s:.2f}x' for s, _, _ in rows)} | {rows[0][2]:,} | "
              f"{' / '.join(f'{a:.2%}' for a in accs)} | **{mean:.2%}** | {max(accs) - min(accs):.2%} |")


def _classical(model, x, speedup: float, measured_speedup) -> dict[str, torch.nn.Module]:
    """The least-pruned plan of uniform L1, and of Torch-Pruning's global L1 ranking, whose measured
    speedup meets the budget (what a user of each method would ship for it)."""
    import torch_pruning as tp

    from secateurs.engine.prune.apply import prune
    from secateurs.engine.spec import PruneSpec

    out: dict[str, torch.nn.Module] = {}
    plans: dict[tuple, float] = {}
    for step in range(30, 80):  # distinct uniform plans between ratio 0.30 and 0.79
        m = prune(model, x, PruneSpec(ratio=step / 100)).model
        plans.setdefault(tuple(p.shape[0] for p in m.parameters() if p.ndim == 4), step / 100)
    for ratio in sorted(plans.values()):
        s = measured_speedup(prune(model, x, PruneSpec(ratio=ratio)).model)
        print(f"  uniform ratio {ratio:.2f}: {s:.2f}x", flush=True)
        if s >= speedup:
            out[f"uniform L1 (ratio {ratio:.2f})"] = prune(model, x, PruneSpec(ratio=ratio)).model
            break

    def global_pruned(ratio: float):
        m = copy.deepcopy(model)
        tp.pruner.MetaPruner(m, x, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
                             pruning_ratio=ratio, ignored_layers=[m.fc], round_to=8).step()
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
        out[f"Torch-Pruning global L1 (ratio {best:.2f})"] = global_pruned(best)
    return out


def job(speedup: float, epochs: int, batch: int, arch: str, weights: Path | None) -> None:
    """A whole job as a user runs it: the search, recovery on the CIFAR-10 training images, the
    evaluation on the 10,000 test images, export and benchmark; where the time goes, stage by stage."""
    sys.path.insert(0, str(HERE))
    from cifar_common import CACHE_DIR, cifar_zip_path

    from secateurs.engine.spec import DataSpec, TransformSpec
    from secateurs.engine.pipeline import compress
    from secateurs.engine.spec import RecoverySpec
    from secateurs.engine.spec import CompressSpec, ModelSpec, TargetSpec

    weights = weights or CACHE_DIR / f"{arch.split(':')[1]}.safetensors"
    data = cifar_zip_path()
    with tempfile.TemporaryDirectory() as tmp:
        spec = CompressSpec(
            model=ModelSpec(arch=arch, weights=weights), input_shape=(batch, 3, 32, 32), out_dir=Path(tmp) / "out",
            budget=Budget(speedup=speedup), target=TargetSpec(batch=batch), cache_dir=Path(tmp) / "cache",
            data=DataSpec(source="imagefolder", path=data, split="test", transform=TransformSpec.preset("cifar10")),
            train_data=DataSpec(source="imagefolder", path=data, split="train",
                                transform=TransformSpec.preset("cifar10", train=True)),
            recovery=RecoverySpec(epochs=epochs, batch_size=128), exports=("onnx",))
        start = time.perf_counter()
        report = compress(spec).report
        total = time.perf_counter() - start
    q, stages = report["quality"], report["stage_seconds"]
    print(f"{arch} at batch {batch}, {speedup}x budget, {epochs} epoch(s) of recovery: {total:.0f} s in all")
    print("| stage | seconds | share |\n|---|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.0f} | {seconds / total:.0%} |")
    lo, hi = q["after"]["interval"]
    print(f"\nbudget met: {report['budget_met']} (measured {report['latency']['speedup']:.2f}x); accuracy "
          f"{q['before']['accuracy']:.2%} -> {q['after']['accuracy']:.2%} on {q['after']['samples']:,} test images "
          f"(95% interval {lo:.1%}-{hi:.1%}); calibration: {report['data']['calibration']['note']}")
    print(f"search: {stages.get('search', 0) / total:.0%} of the job")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["precision", "cost", "quality", "job"])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=None,
                        help="batch of the measured input (precision: default each model's 1; quality: 32)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="quality: runs of the whole job per method (seeds 0..n-1: calibration, search, fine-tune)")
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
        cost(args.only)
    elif args.part == "job":
        job(args.speedup, int(args.epochs) if args.epochs >= 1 else 2, args.batch or 32, args.arch, args.weights)
    else:
        quality(args.speedup, args.epochs, args.batch or 32, args.seeds, args.calibration, args.arch, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
