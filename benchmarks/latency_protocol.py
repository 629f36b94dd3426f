"""How far the latency protocol can be trusted on this machine.

1. Repeatability: the same model measured in five separate processes; the spread
   (coefficient of variation) of p50 across the runs. Goal: <= 3%.
2. Interleaving: the latency ratio of two models (baseline and pruned) from separate
   runs versus interleaved in one process, window by window (the default) and run by
   run (A B A B ...), all three in each repetition, with spreads.
3. Sessions (--sessions): in one process, one baseline session and a fresh session of the
   pruned model for each interleaved measurement, with 2 threads and with 1; then the median
   of three such measurements (what the search does near a budget). A session of a small
   model on few cores can settle in a slow or a fast mode and stay there; this shows how
   much of the spread that is.
4. Session length (--caps 10,5): the decisive figure as the search takes it (the job's default
   protocol, a fresh session of both models per measurement, 2 threads), with each session capped
   at each of the given seconds: whether a shorter session spreads more than a longer one.

    .venv/bin/python benchmarks/latency_protocol.py [--runs 5] [--model torchvision:resnet18] [--input 1x3x112x112]
    .venv/bin/python benchmarks/latency_protocol.py --sessions --runs 9 --model zoo:resnet20 --input 1x3x32x32
    .venv/bin/python benchmarks/latency_protocol.py --caps 10,5 --runs 9 --model zoo:resnet20 --input 32x3x32x32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from secateurs.engine.export import export_onnx
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec

MEASURE = """
import json, sys
from secateurs.engine.latency import OnnxRuntimeBackend, measure_interleaved
from secateurs.engine.spec import ProtocolSpec
shape = tuple(json.loads(sys.argv[2]))
backends = [OnnxRuntimeBackend(p, shape, threads=int(sys.argv[3])) for p in sys.argv[4:]]
stats = measure_interleaved(backends, ProtocolSpec(**json.loads(sys.argv[1])))
print(json.dumps([s.to_dict() for s in stats]))
"""


def run(paths: list[Path], shape: tuple[int, ...], threads: int, protocol: dict) -> list[dict]:
    """One measurement in a fresh process (a 'separate run')."""
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(protocol), json.dumps(shape), str(threads),
                          *map(str, paths)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def cov(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--input", default="1x3x112x112")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--sessions", action="store_true", help="part 3 only: fresh sessions in one process")
    parser.add_argument("--caps", default="", help="part 4 only: comma-separated session caps in seconds")
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.input.split("x"))
    protocol = dict(warmup_runs=20, warmup_seconds=1.0, window=100, min_samples=500, max_seconds=30.0, tolerance=0.03)

    torch.manual_seed(0)
    model = build_architecture(args.model).eval()
    x = torch.randn(shape)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "baseline.onnx", Path(tmp) / "pruned.onnx"
        export_onnx(model, x, a)
        export_onnx(prune(model, x, PruneSpec(ratio=args.ratio)).model, x, b)
        if args.sessions:
            return sessions(a, b, shape, args)
        if args.caps:
            return session_length(a, b, shape, args)
        sep_a, sep_b, inter, by_run = [], [], [], []
        for i in range(args.runs):
            sep_a.append(run([a], shape, args.threads, protocol)[0])
            sep_b.append(run([b], shape, args.threads, protocol)[0])
            inter.append(run([a, b], shape, args.threads, protocol))
            by_run.append(run([a, b], shape, args.threads, dict(protocol, interleave="run")))
            print(f"run {i + 1}/{args.runs}: A p50 {sep_a[-1]['p50_ms']:.3f} ms, B p50 {sep_b[-1]['p50_ms']:.3f} ms, "
                  f"separate A/B {sep_a[-1]['p50_ms'] / sep_b[-1]['p50_ms']:.3f}, "
                  f"window-interleaved {inter[-1][0]['p50_ms'] / inter[-1][1]['p50_ms']:.3f}, "
                  f"run-interleaved {by_run[-1][0]['p50_ms'] / by_run[-1][1]['p50_ms']:.3f}", flush=True)

    p50_a = [s["p50_ms"] for s in sep_a]
    ratios_sep = [sa["p50_ms"] / sb["p50_ms"] for sa, sb in zip(sep_a, sep_b)]
    ratios_int = [ia["p50_ms"] / ib["p50_ms"] for ia, ib in inter]
    ratios_run = [ia["p50_ms"] / ib["p50_ms"] for ia, ib in by_run]
    print(f"\n{args.model} {args.input}, ONNX Runtime CPU, {args.threads} threads, {args.runs} runs each")
    print("| measure | value |\n|---|---|")
    print(f"| p50 of A across {args.runs} separate runs | {min(p50_a):.3f}–{max(p50_a):.3f} ms, "
          f"CoV **{cov(p50_a):.2%}** (goal ≤ 3%) |")
    print(f"| runs that reached the stability criterion | {sum(s['stable'] for s in sep_a + sep_b)}"
          f"/{2 * args.runs} separate, {sum(i[0]['stable'] and i[1]['stable'] for i in inter)}/{args.runs} interleaved |")
    print(f"| A/B ratio from separate runs (run i of A / run i of B) | median {statistics.median(ratios_sep):.3f}, "
          f"CoV {cov(ratios_sep):.2%} |")
    print(f"| A/B ratio, interleaved window by window (default) | median {statistics.median(ratios_int):.3f}, "
          f"CoV {cov(ratios_int):.2%} |")
    print(f"| A/B ratio, interleaved run by run | median {statistics.median(ratios_run):.3f}, "
          f"CoV {cov(ratios_run):.2%} |")
    return 0


def sessions(a: Path, b: Path, shape: tuple[int, ...], args: argparse.Namespace) -> int:
    from secateurs.engine.latency import OnnxRuntimeBackend, measure_interleaved
    from secateurs.engine.spec import ProtocolSpec

    search = ProtocolSpec(warmup_runs=10, warmup_seconds=0.5, window=50, min_samples=200, max_seconds=20.0)
    rows = []
    for threads in sorted({args.threads, 1}, reverse=True):
        base = OnnxRuntimeBackend(a, shape, threads=threads)
        ratios, cov_base = [], []
        for i in range(args.runs):
            sa, sb = measure_interleaved([base, OnnxRuntimeBackend(b, shape, threads=threads)], search)
            ratios.append(sa.p50_ms / sb.p50_ms)
            cov_base.append(sa.cov)
            print(f"{threads} threads, fresh session {i + 1}/{args.runs}: baseline {sa.p50_ms:.3f} ms, "
                  f"pruned {sb.p50_ms:.3f} ms, ratio {ratios[-1]:.3f}", flush=True)
        medians = [statistics.median(ratios[i:i + 3]) for i in range(0, len(ratios) - 2, 3)]
        rows.append((f"{threads}", ratios, statistics.fmean(cov_base)))
        rows.append((f"{threads}, median of 3 sessions", medians, statistics.fmean(cov_base)))
    print(f"\n{args.model} {args.input} against itself pruned at {args.ratio}, ONNX Runtime CPU, one process, "
          f"{args.runs} interleaved measurements, each with a fresh session of the pruned model")
    print("| threads | A/B ratio median | min–max | spread (max/min − 1) | CoV | CoV of the baseline's runs |")
    print("|---|---|---|---|---|---|")
    for label, values, run_cov in rows:
        print(f"| {label} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} "
              f"| {max(values) / min(values) - 1:.1%} | {cov(values):.2%} | {run_cov:.2f} |")
    return 0


def session_length(a: Path, b: Path, shape: tuple[int, ...], args: argparse.Namespace) -> int:
    """Fresh sessions of both models per measurement, the job's default protocol capped at each of
    args.caps seconds, the caps taken in turn so that a drift of the machine reaches all of them."""
    from secateurs.engine.latency import OnnxRuntimeBackend, measure_interleaved
    from secateurs.engine.spec import ProtocolSpec

    caps = [float(c) for c in args.caps.split(",")]
    ratios: dict[float, list[float]] = {c: [] for c in caps}
    seconds: dict[float, list[float]] = {c: [] for c in caps}
    for i in range(args.runs):
        for cap in caps:
            start = time.perf_counter()
            pair = [OnnxRuntimeBackend(p, shape, threads=args.threads) for p in (a, b)]
            sa, sb = measure_interleaved(pair, ProtocolSpec(max_seconds=cap))
            seconds[cap].append(time.perf_counter() - start)
            ratios[cap].append(sa.p50_ms / sb.p50_ms)
            print(f"run {i + 1}/{args.runs}, cap {cap:g} s: ratio {ratios[cap][-1]:.3f} "
                  f"in {seconds[cap][-1]:.1f} s (stable: {sa.stable and sb.stable})", flush=True)
    print(f"\n{args.model} {args.input} against itself pruned at {args.ratio}, ONNX Runtime CPU, {args.threads} "
          f"threads, {args.runs} measurements per cap, each in fresh sessions of both models")
    print("| session cap | A/B ratio median | min–max | spread (max/min − 1) | CoV | median of 3: spread | seconds each |")
    print("|---|---|---|---|---|---|---|")
    for cap in caps:
        values = ratios[cap]
        medians = [statistics.median(values[i:i + 3]) for i in range(0, len(values) - 2, 3)]
        print(f"| {cap:g} s | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} "
              f"| {max(values) / min(values) - 1:.1%} | {cov(values):.2%} | {max(medians) / min(medians) - 1:.1%} "
              f"| {statistics.fmean(seconds[cap]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
