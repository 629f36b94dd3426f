"""Baseline and pruned ResNet-50 measured on this machine's NVIDIA GPU, through the whole pipeline.

For each GPU runtime that can run here (torch-cuda always when torch sees a GPU; tensorrt
when TensorRT and cuda-python are installed): `compress` ResNet-50 at 224x224 with uniform
L1 pruning, the baseline and the pruned model measured interleaved on that runtime, and
print the measured speedup. With --results, append a dated section to benchmarks/RESULTS.md,
only for runtimes that really ran.

    .venv/bin/python benchmarks/gpu_check.py [--ratio 0.5] [--batch 1] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from secateurs.engine.latency.runtimes import unavailable_reason
from secateurs.engine.pipeline import compress
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, TargetSpec

PROTOCOL = ProtocolSpec(warmup_runs=20, warmup_seconds=1.0, window=50, min_samples=300, max_seconds=20.0)
CASES = (("torch-cuda", "fp32"), ("torch-cuda", "fp16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"))


def run(runtime: str, precision: str, ratio: float, batch: int, out: Path) -> dict:
    spec = CompressSpec(model=ModelSpec(arch="torchvision:resnet50"), input_shape=(batch, 3, 224, 224), out_dir=out,
                        ratio=ratio, exports=("onnx",), protocol=PROTOCOL,
                        target=TargetSpec(runtime=runtime, precision=precision, threads=2))
    start = time.perf_counter()
    report = compress(spec).report
    lat, size = report["latency"], report["size"]
    row = {"runtime": runtime, "precision": precision, "batch": batch, "ratio": ratio,
           "base_p50": lat["baseline"]["p50_ms"], "pruned_p50": lat["compressed"]["p50_ms"],
           "speedup": lat["speedup"], "macs_reduction": size["macs_reduction"],
           "stable": lat["baseline"]["stable"] and lat["compressed"]["stable"], "n": lat["compressed"]["n"],
           "gpu_compute": [lat[k].get("components", {}).get("gpu_compute", {}).get("p50_ms") for k in
                           ("baseline", "compressed")],
           "gpu": (report["device"].get("gpu") or {}).get("name"), "seconds": time.perf_counter() - start,
           "device": report["device"], "engine": report["exports"].get("tensorrt")}
    print(json.dumps({k: v for k, v in row.items() if k != "device"}, default=str), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--results", type=Path, help="append the measured rows to this RESULTS.md")
    args = parser.parse_args()
    rows, skipped = [], []
    for runtime, precision in CASES:
        reason = unavailable_reason(runtime)
        if reason is not None:
            skipped.append(f"{runtime} {precision}: {reason}")
            print(f"skipped {runtime} {precision}: {reason}", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rows.append(run(runtime, precision, args.ratio, args.batch, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - one runtime failing must not hide the others
                skipped.append(f"{runtime} {precision}: failed: {type(exc).__name__}: {exc}")
                print(f"FAILED {runtime} {precision}: {type(exc).__name__}: {exc}", flush=True)
    for r in rows:
        print(f"{r['runtime']:<12} {r['precision']}  p50 {r['base_p50']:.3f} -> {r['pruned_p50']:.3f} ms  "
              f"speedup {r['speedup']:.2f}x  (MACs {r['macs_reduction']:.2f}x fewer)")
    if not rows:
        print("nothing was measured: " + "; ".join(skipped), file=sys.stderr)
        return 1
    if args.results is not None:
        _append(args.results, rows, skipped, args)
    return 0


def _append(path: Path, rows: list[dict], skipped: list[str], args: argparse.Namespace) -> None:
    import onnxruntime
    import torch

    device = rows[0]["device"]
    gpu = device.get("gpu") or {}
    engines = [r["engine"] for r in rows if r.get("engine") and r["engine"].get("ok")]
    lines = [
        "", f"## GPU runtimes: ResNet-50 baseline and pruned on {gpu.get('name', 'an NVIDIA GPU')}", "",
        f"{datetime.date.today().isoformat()} · `bash benchmarks/gpu_check.sh` · {gpu.get('name')} (compute "
        f"capability {gpu.get('compute_capability')}, driver {gpu.get('driver')}), {device.get('cpu')}; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}"
        + (f", TensorRT {engines[0]['tensorrt']}" if engines else "")
        + f". torchvision ResNet-50, random-initialised, 1x3x224x224 at batch {args.batch}, uniform L1 pruning at "
          f"ratio {args.ratio}; baseline and pruned measured interleaved in one process (window "
          f"{PROTOCOL.window}, ≥{PROTOCOL.min_samples} samples, {PROTOCOL.max_seconds:.0f} s cap), each run timed "
          f"host to host (input copied in, output copied out); GPU compute alone in its own column.", "",
        "| runtime | precision | p50 ms before → after | measured speedup | GPU compute p50 ms before → after | "
        "MACs reduction | stable (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compute = r["gpu_compute"]
        compute_text = f"{compute[0]:.3f} → {compute[1]:.3f}" if None not in compute else "n/a"
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['base_p50']:.3f} → {r['pruned_p50']:.3f} | "
                     f"**{r['speedup']:.2f}x** | {compute_text} | {r['macs_reduction']:.2f}x | "
                     f"{'yes' if r['stable'] else 'no'} ({r['n']}) |")
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    for e in engines:
        lines += ["", f"TensorRT engine ({e['precision']}): {e['plan_bytes']:,} bytes, built in "
                      f"{e['build_seconds']:.0f} s, parity against ONNX Runtime {e['parity']['relative_diff']:.1e} "
                      f"(top-1 agreement {e['parity']['top1_agreement']})."]
    with open(path, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    sys.exit(main())
