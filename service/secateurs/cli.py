"""`secateurs serve | compress | inspect | probe`: the server's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from secateurs.engine.spec import DEPTH_MODES, IMPORTANCES, CompressSpec, RecoverySpec, TargetSpec
from secateurs.errors import SecateursError

# Defaults are the specs' own (engine/spec.py, torch-free): declared once, read here for --help.
_JOB, _TARGET, _RECOVERY = CompressSpec, TargetSpec(), RecoverySpec()

QUICK_PROTOCOL = dict(warmup_runs=5, warmup_seconds=0.1, window=20, min_samples=60, max_seconds=5.0)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo:<name>, torchvision:<name>, timm:<name>, hf:<AutoClass> "
                                                  "(with --hf-config), module:<pkg.mod>:<callable>, or pt2:FILE "
                                                  "(a torch.export program)")
    p.add_argument("--hf-config", type=Path, metavar="CONFIG_JSON",
                   help="for hf:<AutoClass>: a Hugging Face config.json; its fields become the model's arguments")
    p.add_argument("--kwarg", action="append", default=[], metavar="NAME=VALUE",
                   help="constructor argument, repeatable (e.g. --kwarg num_classes=10)")
    p.add_argument("--weights", type=Path, help="safetensors file or torch state dict")
    p.add_argument("--input", required=True, help="input shape, batch first, e.g. 1x3x224x224; several named inputs as "
                   "NAME:SHAPE[:DTYPE],..., e.g. input_ids:1x128:int64,attention_mask:1x128:int64")
    p.add_argument("--trust-pickled-models", action="store_true",
                   help="allow weights that are a whole pickled nn.Module (runs code from the file)")
    p.add_argument("--threads", type=int, default=_TARGET.threads,
                   help=f"CPU threads of the runtime (default {_TARGET.threads})")
    p.add_argument("--runtime", default=_TARGET.runtime,
                   help="onnxruntime-cpu (default), onnxruntime-cuda, tensorrt, torch-cpu, torch-cuda, "
                        "torch-compile-cpu or torch-compile-cuda")
    p.add_argument("--precision", default=_TARGET.precision, help="fp32 (default) or fp16 (GPU runtimes)")
    p.add_argument("--probe", metavar="HOST:PORT",
                   help="measure every latency on the `secateurs probe` at this address (credentials: "
                        "$SECATEURS_PROBE_TOKEN, $SECATEURS_PROBE_TLS_CA, ...; TLS unless on this machine)")
    p.add_argument("--probe-plaintext", action="store_true",
                   help="reach a probe off this machine without TLS (its token travels in clear text)")
    p.add_argument("--min-channels", type=int, default=_JOB.min_channels,
                   help=f"never prune a group below this (default {_JOB.min_channels})")
    p.add_argument("--quick", action="store_true", help="short latency protocol (for smoke runs; less stable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="list prunable groups and measure the baseline latency")
    _add_model_arguments(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    compress = sub.add_parser("compress", help="prune, export and benchmark a model")
    _add_model_arguments(compress)
    compress.add_argument("--ratio", type=float, help="one pruning ratio for every group, in [0, 1)")
    compress.add_argument("--ratios", type=Path, help="JSON file: {group name: ratio}")
    budget = compress.add_argument_group("budget (the search chooses per-group ratios that meet every limit given)")
    budget.add_argument("--latency-ms", type=float, help="latency ceiling on the target, at --percentile")
    budget.add_argument("--speedup", type=float, help="at least this many times faster than the baseline")
    budget.add_argument("--size-mb", type=float, help="ONNX file size ceiling in MB (10^6 bytes)")
    budget.add_argument("--params", type=int, help="parameter count ceiling")
    budget.add_argument("--macs", type=int, help="MACs ceiling")
    budget.add_argument("--max-accuracy-drop", type=float, help="accuracy points (0.01 = 1 point) that may be lost")
    budget.add_argument("--percentile", type=float, default=_TARGET.percentile,
                        help="latency percentile: 50, 90, 95 or 99")
    budget.add_argument("--depth", choices=DEPTH_MODES, default=_JOB.depth,
                        help="whole residual blocks: auto (default) lets the search drop them where that costs "
                             "less quality than narrowing channels; off: channels only; only: blocks only")
    compress.add_argument("--data", type=Path,
                          help="ImageFolder directory or .zip whose --data-split the accuracy is measured on; "
                               "calibration comes from its train split (or --train-data's), never from that one")
    compress.add_argument("--data-split", default="test", help="split of --data to evaluate on (default test)")
    compress.add_argument("--data-format", choices=("imagefolder", "jsonl", "voc", "coco"), default="imagefolder",
                          help="of --data and --train-data: imagefolder (default); jsonl: <split>.jsonl lines of "
                               "{\"text\", \"label\"} beside a tokenizer.json (tokenizers), for hf: text models; "
                               "voc: Pascal VOC segmentation masks, scored as mIoU; coco: COCO boxes "
                               "(annotations/instances_<split>.json), a detector scored as mAP")
    compress.add_argument("--calibration-samples", type=int, default=_JOB.calibration_samples,
                          help="images that score plans, as many again recalibrate BatchNorm "
                               f"(default {_JOB.calibration_samples})")
    compress.add_argument("--evaluation-samples", type=int, default=_JOB.evaluation_samples,
                          help="a seeded subset of the evaluation split to measure accuracy on (default: all)")
    compress.add_argument("--data-preset", default=None, help="transform preset: cifar10 or imagenet")
    recovery = compress.add_argument_group("recovery (fine-tuning and distillation after pruning)")
    recovery.add_argument("--epochs", type=int, help="recover for this many epochs (off when not given)")
    recovery.add_argument("--lr", type=float, help="peak learning rate (default: SGD 0.01, AdamW 1e-3)")
    recovery.add_argument("--optimizer", default=_RECOVERY.optimizer, help="sgd (Nesterov) or adamw")
    recovery.add_argument("--batch-size", type=int, default=_RECOVERY.batch_size)
    recovery.add_argument("--kd-weight", type=float, default=_RECOVERY.kd_weight, help="output distillation (KL, T=4)")
    recovery.add_argument("--feature-weight", type=float, default=_RECOVERY.feature_weight,
                          help="feature-map distillation")
    recovery.add_argument("--attention-weight", type=float, default=_RECOVERY.attention_weight,
                          help="attention transfer")
    recovery.add_argument("--progressive-steps", type=int, default=_RECOVERY.progressive_steps,
                          help="reach the plan in k prune+recover steps")
    recovery.add_argument("--train-data", type=Path,
                          help="ImageFolder directory or .zip to recover on (split train, --data-preset "
                               "augmentation); without it recovery distils on generated inputs")
    compress.add_argument("--cache-dir", type=Path, default=Path(".secateurs/cache"),
                          help="measurement cache shared across jobs (default .secateurs/cache)")
    compress.add_argument("--importance", default=_JOB.importance,
                          help=f"channel importance: {', '.join(IMPORTANCES)} (default {_JOB.importance}); "
                               "the search and the pruning both rank channels by it")
    compress.add_argument("--round-to", type=int, default=_JOB.round_to, help="channel counts become multiples of this")
    compress.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    compress.add_argument("--batch", type=int, default=_TARGET.batch,
                          help="measure (and export) at this batch instead of --input's")
    compress.add_argument("--out", type=Path, required=True, help="output directory")
    compress.add_argument("--seed", type=int, default=_JOB.seed)

    try:
        from secateurs.api.server import add_serve_arguments
    except ImportError:  # the service layer is optional for engine-only installs
        add_serve_arguments = None
    if add_serve_arguments is not None:
        serve = sub.add_parser("serve", help="run the gRPC compression service")
        add_serve_arguments(serve)
    sub.add_parser("probe", help="measure latency on this device for a server (see `secateurs probe --help`)",
                   add_help=False)
    return parser


def _model_spec(args: argparse.Namespace):
    from secateurs.engine.intake.models import parse_kwargs
    from secateurs.engine.spec import ModelSpec

    if args.model.startswith("pt2:"):  # a torch.export program file, named by its digest
        import hashlib

        program = Path(args.model[len("pt2:"):])
        digest = hashlib.sha256(program.read_bytes()).hexdigest() if program.is_file() else "missing"
        return ModelSpec(arch=f"pt2:{digest}", program=program, weights=args.weights,
                         trust_pickle=args.trust_pickled_models)
    kwargs = parse_kwargs(args.kwarg)
    if args.hf_config is not None:
        from secateurs.engine.intake.hf import read_config_file

        kwargs = {**read_config_file(args.hf_config), **kwargs}
    return ModelSpec(arch=args.model, arch_kwargs=kwargs, weights=args.weights,
                     trust_pickle=args.trust_pickled_models)


def _target(args: argparse.Namespace, **extra: Any):
    from secateurs.engine.spec import TargetSpec
    from secateurs.probe.client import PLAINTEXT_ENV

    if args.probe_plaintext:
        os.environ[PLAINTEXT_ENV] = "1"  # read where the probe is opened (ProbeCredentials.from_environ)
    return TargetSpec(runtime=args.runtime, precision=args.precision, threads=args.threads,
                      probe_address=args.probe or None, **extra)


def _protocol(args: argparse.Namespace):
    from secateurs.engine.spec import ProtocolSpec

    return ProtocolSpec(**QUICK_PROTOCOL) if args.quick else ProtocolSpec()


def _print_progress(event: Any) -> None:
    if event.kind == "started":
        print(f"  {event.stage:<10} ...", file=sys.stderr, flush=True)
    elif event.kind == "finished":
        print(f"  {event.stage:<10} done in {event.data.get('seconds', 0):.1f} s", file=sys.stderr, flush=True)
    elif event.kind == "progress" and event.message:
        print(f"  {event.stage:<10} {event.message}", file=sys.stderr, flush=True)


def _inputs_text(model: dict[str, Any]) -> str:
    """'1x3x32x32', or 'input_ids:1x128:int64, ...' for named inputs."""
    inputs = model.get("inputs") or [{"name": "input", "shape": model["input_shape"], "dtype": "float32"}]
    if len(inputs) == 1 and inputs[0]["name"] == "input" and inputs[0]["dtype"] == "float32":
        return "x".join(map(str, inputs[0]["shape"]))
    return ", ".join(f"{i['name']}:{'x'.join(map(str, i['shape']))}:{i['dtype']}" for i in inputs)


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from secateurs.engine.prune.blocks import find_blocks
    from secateurs.engine.prune.groups import describe_groups, prepare
    from secateurs.engine.export import export_onnx
    from secateurs.engine.intake.models import check_runs, load_model
    from secateurs.engine.inputs import generate
    from secateurs.engine.spec import parse_inputs
    from secateurs.engine.size import count_macs, count_params
    from secateurs.probe.client import open_target
    import copy
    import tempfile

    inputs = parse_inputs(args.input)
    shape = inputs[0].shape
    model = load_model(_model_spec(args))
    check_runs(model, inputs)
    example = generate(inputs, generator=torch.Generator().manual_seed(0))
    groups = describe_groups(prepare(copy.deepcopy(model), example), example, min_channels=args.min_channels)
    blocks = find_blocks(model, example)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example, path, input_names=[i.name for i in inputs])
        target = open_target(_target(args))
        try:
            stats = target.measure([target.load(shape, onnx=path, module=model)], _protocol(args))[0]
        finally:
            target.close()
    fp = target.fingerprint
    if args.json:
        print(json.dumps({"groups": [g.to_dict() for g in groups], "blocks": [b.to_dict() for b in blocks],
                          "latency": stats.to_dict(), "device": fp,
                          "params": count_params(model), "macs": count_macs(model, example)}, indent=2))
        return 0
    width = max((len(g.name) for g in groups), default=10)
    print(f"{'group':<{width}}  {'size':>6} {'unit':<8} {'MACs %':>7} {'layers':>6}  prunable")
    for g in groups:
        print(f"{g.name:<{width}}  {g.channels:>6} {g.unit:<8} {100 * g.macs_share:>6.1f}% {len(g.layers):>6}  "
              f"{'yes' if g.prunable else 'no: ' + g.reason}")
    if blocks:
        print(f"\nremovable blocks (depth pruning): {', '.join(b.name for b in blocks)}")
    print(f"\n{len(groups)} groups, {sum(g.prunable for g in groups)} prunable, {len(blocks)} removable blocks; "
          f"{count_params(model):,} params, {count_macs(model, example) / 1e6:,.1f} M MACs")
    where = f"probe {args.probe}, " if args.probe else ""
    device = (fp.get("gpu") or {}).get("name") or fp["cpu"]
    print(f"baseline on {fp['runtime']} ({where}{fp['threads']} threads, {device}): p50 {stats.p50_ms:.3f} ms, "
          f"p90 {stats.p90_ms:.3f} ms, mean {stats.mean_ms:.3f} ms, n={stats.n}, CoV {stats.cov:.1%}"
          f"{'' if stats.stable else ' (NOT stable: time cap reached)'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from secateurs.engine.pipeline import compress
    from secateurs.engine.spec import DataSpec, RecoverySpec, TransformSpec
    from secateurs.engine.validate import build_spec
    from secateurs.errors import InvalidRequest
    from secateurs.probe.client import open_target

    ratios = None
    if args.ratios is not None:
        try:
            ratios = json.loads(args.ratios.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"cannot read ratios file {args.ratios}: {exc}", field="ratios") from None
        if not isinstance(ratios, dict):
            raise InvalidRequest("ratios file must hold a JSON object {group: ratio}", field="ratios")
    limits = dict(latency_ms=args.latency_ms, speedup=args.speedup, params=args.params, macs=args.macs,
                  size_bytes=int(args.size_mb * 1e6) if args.size_mb else None,
                  max_accuracy_drop=args.max_accuracy_drop)
    data = None
    if args.data is not None:
        data = DataSpec(source=args.data_format, path=args.data, split=args.data_split,
                        transform=TransformSpec.preset(args.data_preset, source=args.data_format) if args.data_preset
                        else None, seed=args.seed)
    recovery = train_data = None
    if args.epochs is not None:
        recovery = RecoverySpec(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
                                kd_weight=args.kd_weight, feature_weight=args.feature_weight,
                                attention_weight=args.attention_weight, progressive_steps=args.progressive_steps,
                                seed=args.seed)
        if args.train_data is not None:
            preset = TransformSpec.preset(args.data_preset, train=True, source=args.data_format) \
                if args.data_preset else None
            train_data = DataSpec(source=args.data_format, path=args.train_data, split="train", transform=preset,
                                  seed=args.seed)
            if data is None:  # only a train split: evaluate on a seeded part of it, never trained on
                from secateurs.engine.intake.calibration import held_out

                data, train_data = held_out(train_data, TransformSpec.preset(args.data_preset, source=args.data_format)
                                            if args.data_preset else None)
    spec = build_spec(  # the function the API builds its jobs with (engine/validate.py)
        model=_model_spec(args), input_shape=args.input, out_dir=args.out, limits=limits,
        target=_target(args, batch=args.batch, percentile=args.percentile), ratio=args.ratio, group_ratios=ratios,
        calibration_samples=args.calibration_samples, evaluation_samples=args.evaluation_samples, data=data,
        train_data=train_data, recovery=recovery, cache_dir=args.cache_dir, importance=args.importance,
        round_to=args.round_to, min_channels=args.min_channels, protocol=_protocol(args),
        dynamic_batch=args.dynamic_batch, seed=args.seed, depth=args.depth)
    start = time.perf_counter()
    result = compress(spec, on_event=_print_progress, target_opener=open_target)
    print(summary(result.report))
    if "report_html" in result.artifacts:
        print(f"report: {result.artifacts['report_html']}")
    print(f"artifacts in {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


def summary(report: dict) -> str:
    """A few lines a person reads first."""
    lat, size = report["latency"], report["size"]
    q = int(report["budget"]["percentile"] if report.get("budget") else report["target"]["percentile"])
    b, c = lat["baseline"], lat["compressed"]
    lines = []
    if report.get("budget"):
        search = report["search"]
        reason = f" ({search['reason']})" if search and search["reason"] else ""
        if search and report["budget_met"] and not search.get("budget_met"):  # the two measurements disagree
            reason = f" (by the final benchmark; the search's verification did not: {search['reason']})"
        lines.append(f"  budget      {', '.join(f'{k}={v}' for k, v in report['budget'].items())}: "
                     f"{'MET' if report['budget_met'] else 'NOT MET'}{reason}")
        dropped = [blk for blk in (search or {}).get("blocks") or [] if blk.get("dropped")]
        if dropped:
            share = sum(blk["latency_share"] or 0.0 for blk in dropped)
            lines.append(f"  blocks      {len(dropped)} dropped ({', '.join(blk['name'] for blk in dropped)}), "
                         f"{share:.0%} of the baseline latency")
        if search and search.get("uniform"):
            u = search["uniform"]
            lines.append(f"  vs uniform  L1 ratio {u['measured']['uniform_ratio']:.2f} at {u['measured']['speedup']:.2f}x: "
                         f"quality loss {u['quality']['loss']:.4f} vs searched {search['quality_after']['loss']:.4f}")
    lines.append(quality_line(report, "  "))
    if report.get("accuracy_floor"):
        floor = report["accuracy_floor"]
        lines.append(f"  floor       max drop {floor['max_drop']:.2%}, measured {floor['drop']:.2%}: "
                     f"{'met' if floor['met'] else 'MISSED by ' + format(floor['missed_by'], '.2%')}"
                     f" ({floor.get('outcome', '')})")
    return "\n".join([
        f"{report['model']['arch']} {_inputs_text(report['model'])} "
        f"on {report['target']['runtime']} ({report['target']['threads']} threads"
        f"{', ' + report['target']['precision'] if report['target'].get('precision', 'fp32') != 'fp32' else ''}"
        f"{', probe ' + report['target']['probe_address'] if report['target'].get('probe_address') else ''})",
        f"  p{q} latency  {b[f'p{q}_ms']:.3f} ms -> {c[f'p{q}_ms']:.3f} ms   speedup {lat['speedup']:.2f}x"
        f"{'' if b['stable'] and c['stable'] else '  (measurement not stable)'}",
        f"  MACs        {size['baseline']['macs'] / 1e6:,.1f} M -> {size['compressed']['macs'] / 1e6:,.1f} M"
        f"   reduction {size['macs_reduction']:.2f}x",
        f"  params      {size['baseline']['params']:,} -> {size['compressed']['params']:,}",
        f"  ONNX bytes  {size['baseline']['onnx_bytes']:,} -> {size['compressed']['onnx_bytes']:,}",
        f"  parity      max rel. diff {report['parity']['relative_diff']:.1e}"
        f"{parity_rounding(report['parity'])}, top-1 agreement {report['parity']['top1_agreement']}",
        *lines,
    ])


def parity_rounding(parity: dict) -> str:
    """PyTorch's own float32 rounding beside ONNX Runtime's difference, both from the float64 result."""
    own = parity.get("pytorch_diff")
    return f" from float64 (PyTorch float32 {own:.1e})" if own is not None else ""


def quality_line(report: dict, indent: str) -> str:
    """Accuracy before and after on the evaluation images, with their count and the 95% interval;
    fidelity to the original model when there were no labels."""
    quality = report.get("quality") or {}
    before, after = quality.get("before") or {}, quality.get("after") or {}
    rec = report.get("recovery")
    how = f" after {len(rec['history'])} epoch(s) of {'label-free distillation' if rec['label_free'] else 'recovery'}" \
        if rec else ""
    n = after.get("samples", 0)
    if after.get("accuracy") is not None:
        lo, hi = after["interval"]
        return (f"{indent}accuracy    {before['accuracy']:.2%} -> {after['accuracy']:.2%} on {n:,} evaluation "
                f"samples (95% interval {lo:.1%}-{hi:.1%}){how}")
    what = "per-pixel" if quality.get("scored") == "per position" else "top-1"
    return f"{indent}fidelity    {what} agreement {after.get('agreement', 0):.2%} on {n:,} generated inputs{how}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:  # before build_parser: the probe must not load the server (and torch)
        from secateurs.probe.server import main as probe_main

        return probe_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "compress":
            return cmd_compress(args)
        from secateurs.api.server import run_serve

        return run_serve(args)
    except SecateursError as exc:
        field = getattr(exc, "field", None)
        print(f"error: {exc}" + (f" [field: {field}]" if field else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
