"""`secateurs-client`: compress, get, list, watch, cancel, download.

Exit status: 0 done (job SUCCEEDED for compress/watch), 1 job FAILED or CANCELLED,
2 the call was refused (the message names the status code and the field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import grpc
from google.protobuf import json_format

from secateurs_client._client import DEFAULT_TARGET, Client, build_request
from secateurs_client.errors import describe
from secateurs_client.v1 import compression_pb2 as pb


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _client(args) as client:
            return args.func(client, args)
    except grpc.RpcError as err:
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _client(args: argparse.Namespace) -> Client:
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    cert = (read(args.tls_key), read(args.tls_cert)) if args.tls_cert else None
    return Client(args.server, token=args.token, tls=args.tls, root_certificates=read(args.tls_ca),
                  client_cert=cert, timeout=args.timeout)


def cmd_compress(client: Client, args: argparse.Namespace) -> int:
    uploaded: dict[Path, str] = {}  # one zip for train and val is sent once
    weights, train, val = (_upload(client, path, uploaded) for path in (args.weights, args.train_data, args.val_data))
    program = _upload(client, Path(args.arch[len("pt2:"):]), uploaded) if args.arch.startswith("pt2:") else ""
    req = build_request(
        arch="" if program else args.arch, program_blob_id=program, **_inputs(args.input_shape),
        arch_kwargs=_config(args.hf_config), data_format=args.data_format,
        weights_blob_id=weights, ratio=args.ratio,
        group_ratios=dict(_pair(p, float) for p in args.group_ratio), importance=args.importance,
        round_to=args.round_to, exports=args.export, labels=dict(_pair(p, str) for p in args.label),
        runtime=args.runtime, threads=args.threads, percentile=args.percentile or 0.0, precision=args.precision,
        batch=args.batch, probe=args.probe,
        request_id=args.request_id or "", latency_ms=args.latency_ms, speedup=args.speedup,
        size_bytes=None if args.size_mb is None else round(args.size_mb * 1e6), params=args.params,
        macs=args.macs, max_accuracy_drop=args.max_accuracy_drop, epochs=args.epochs, lr=args.lr,
        kd_weight=args.kd_weight, feature_weight=args.feature_weight, attention_weight=args.attention_weight,
        progressive_steps=args.progressive_steps, optimizer=args.optimizer, batch_size=args.batch_size,
        train_blob_id=train, val_blob_id=val, train_uri=args.train_uri, val_uri=args.val_uri,
        data_preset=args.data_preset, val_split=args.val_split,
        calibration_samples=args.calibration_samples, evaluation_samples=args.evaluation_samples,
        protocol=dict(_protocol_setting(p) for p in args.protocol) or None,
    )
    job = client.create_job(req)
    print(f"job {job.id} queued", file=sys.stderr)
    if args.no_wait:
        print(job.id)
        return 0
    job = client.wait(job.id, on_event=Progress(sys.stderr))
    return _finish(client, job, args.out)


def _upload(client: Client, path: Path | None, uploaded: dict[Path, str]) -> str:
    """Upload a file as a blob (once per path) and return its id ("" for no file)."""
    if path is None:
        return ""
    if path.resolve() not in uploaded:
        blob = client.upload_blob(path)
        print(f"uploaded {path} ({blob.size_bytes} bytes, sha256 {blob.id[:12]}...)", file=sys.stderr)
        uploaded[path.resolve()] = blob.id
    return uploaded[path.resolve()]


def _finish(client: Client, job: pb.Job, out: Path | None) -> int:
    if job.state != pb.SUCCEEDED:
        print(f"job {job.id} {pb.JobState.Name(job.state)}: {job.error.reason}: {job.error.message}", file=sys.stderr)
        return 1
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for art in job.artifacts:
            path = client.download_artifact(job.id, art.name, out / art.filename)
            print(f"{path}  {art.size_bytes} bytes", file=sys.stderr)
    report = _report(job, out)
    if report:
        print("\n".join(summary(report)), file=sys.stderr)
    print(job.id)
    return 0


def _report(job: pb.Job, out: Path | None) -> dict[str, Any]:
    """The job's report: inline when small, else the downloaded report.json."""
    if job.HasField("report"):
        return json_format.MessageToDict(job.report)
    path = out / "report.json" if out is not None else None
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def summary(report: Mapping[str, Any]) -> list[str]:
    """A few lines a person reads first; whatever the report lacks is left out."""
    lines: list[str] = []
    lat, size = report.get("latency") or {}, report.get("size") or {}
    q = _g((report.get("target") or {}).get("percentile", 50))
    base, comp = lat.get("baseline") or {}, lat.get("compressed") or {}
    if f"p{q}_ms" in base and f"p{q}_ms" in comp:
        target = report.get("target") or {}
        where = target.get("measured_on") or {}
        on = f"{target.get('runtime', '')} {target.get('precision', '')}".strip()
        on += f" on the probe {where.get('name') or where['address']}" if where.get("kind") == "probe" else ""
        lines.append(f"  p{q} latency  {base[f'p{q}_ms']:.3f} ms -> {comp[f'p{q}_ms']:.3f} ms   "
                     f"speedup {lat['speedup']:.2f}x" + (f"   ({on})" if on else ""))
    if size.get("baseline") and size.get("compressed"):
        b, c = size["baseline"], size["compressed"]
        lines.append(f"  ONNX bytes   {int(b['onnx_bytes']):,} -> {int(c['onnx_bytes']):,}   "
                     f"params {int(b['params']):,} -> {int(c['params']):,}   "
                     f"MACs {b['macs'] / 1e6:,.1f} M -> {c['macs'] / 1e6:,.1f} M")
    budget = report.get("budget")
    if budget:
        search = report.get("search") or {}
        verdict = "MET" if report.get("budget_met") else "NOT MET"
        miss = report.get("budget_shortfall") or 0.0  # relative excess over the tightest-missed limit
        if not report.get("budget_met") and miss:
            verdict += f", short by {miss:.0%}" if miss < 1 else f", {miss + 1:.1f}x off"
        reason = f" ({search['reason']})" if search.get("reason") else ""
        floor = report.get("accuracy_floor") or {}
        if floor and not floor.get("met"):
            reason = f" (the accuracy limit: {floor.get('outcome', 'missed')})"
        elif search.get("budget_met") and not report.get("budget_met"):
            reason = " (the search's own measurements met it; the final benchmark did not)"
        elif report.get("budget_met") and search and not search.get("budget_met"):
            reason = f" (by the final benchmark; the search's verification did not{': ' + search['reason'] if search.get('reason') else ''})"
        lines.append(f"  budget       {_limits(budget)}: {verdict}{reason}")
    lines.extend(_recovery_lines(report))
    return lines


def _recovery_lines(report: Mapping[str, Any]) -> list[str]:
    """Accuracy on the evaluation images (their count, the 95% interval) before and after, else
    fidelity to the original model; and the accuracy limit, when there was one."""
    rec = report.get("recovery")
    quality = report.get("quality") or {}
    before, after = quality.get("before") or {}, quality.get("after") or {}
    how = ""
    if rec:
        how = (f" after {len(rec.get('history') or [])} epoch(s) of "
               f"{'label-free distillation' if rec.get('label_free') else 'recovery'}")
    n = int(after.get("samples") or 0)
    lines = []
    if after.get("accuracy") is not None:
        was = f"{before['accuracy']:.2%} -> " if before.get("accuracy") is not None else ""
        lo, hi = after.get("interval") or (0.0, 1.0)
        lines.append(f"  accuracy     {was}{after['accuracy']:.2%} on {n:,} evaluation samples "
                     f"(95% interval {lo:.1%}-{hi:.1%}){how}")
    elif after.get("miou") is not None:
        was = f"{before['miou']:.2%} -> " if before.get("miou") is not None else ""
        lines.append(f"  mean IoU     {was}{after['miou']:.2%} over {after.get('miou_classes', 0)} classes on {n:,} "
                     f"labelled evaluation images{how}")
    elif after.get("map") is not None:
        was = f"{before['map']:.1%} -> " if before.get("map") is not None else ""
        at_half = after.get("map50") or 0.0
        lines.append(f"  box mAP      {was}{after['map']:.1%} (COCO, IoU .50:.95; at .50 {at_half:.1%}) over "
                     f"{after.get('map_boxes', 0):,} boxes in {after.get('map_images', 0):,} evaluation images{how}")
    elif after.get("agreement") is not None:
        what = "per-pixel" if quality.get("scored") == "per position" else "top-1"
        lines.append(f"  fidelity     {what} agreement {after['agreement']:.2%} on {n:,} held-out inputs{how}")
    floor = report.get("accuracy_floor")
    if floor:
        lines.append(f"  floor        max drop {floor['max_drop']:.2%}, measured {floor['drop']:.2%}: "
                     + ("met" if floor["met"] else f"MISSED by {floor['missed_by']:.2%}"))
    # the note matters when accuracy could not be measured; otherwise it says what the line says
    return lines + ([f"  note         {rec['note']}"] if rec and rec.get("label_free") and rec.get("note") else [])


def _limits(budget: Mapping[str, Any]) -> str:
    q = _g(budget.get("percentile", 50))
    words = {
        "latency_ms": lambda v: f"p{q} latency <= {_g(v)} ms",
        "speedup": lambda v: f"speedup >= {_g(v)}x at p{q}",
        "size_bytes": lambda v: f"ONNX bytes <= {int(v):,}",
        "params": lambda v: f"params <= {int(v):,}",
        "macs": lambda v: f"MACs <= {int(v):,}",
        "max_accuracy_drop": lambda v: f"accuracy drop <= {_g(v * 100)} points",
    }
    return ", ".join(fmt(budget[k]) for k, fmt in words.items() if budget.get(k) is not None)


def _g(value: float) -> str:
    return f"{value:g}"


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    print(json_format.MessageToJson(client.get_job(args.job_id)))
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    state = pb.JobState.Value(args.state.upper()) if args.state else pb.JOB_STATE_UNSPECIFIED
    for n, job in enumerate(client.list_jobs(state=state, labels=dict(_pair(p, str) for p in args.label))):
        if n >= args.limit:
            break
        labels = ",".join(f"{k}={v}" for k, v in sorted(job.labels.items()))
        print(f"{job.id}  {pb.JobState.Name(job.state):9}  {job.create_time.ToJsonString()}  "
              f"{job.request.model.arch}  {labels}")
    return 0


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    for event in client.watch_job(args.job_id, after_sequence=args.after):
        pct = f" {event.progress:4.0%}" if event.HasField("progress") else ""
        print(f"{event.sequence:5} {event.time.ToJsonString()} {pb.JobState.Name(event.state):9} "
              f"{event.stage}/{event.kind}{pct} {event.message}")
    job = client.get_job(args.job_id)
    return 0 if job.state == pb.SUCCEEDED else 1


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job_id)
    print(f"{job.id} {pb.JobState.Name(job.state)}")
    return 0


def cmd_download(client: Client, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    names = args.names or [a.name for a in job.artifacts]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(client.download_artifact(job.id, name, args.out))
    return 0


class Progress:
    """One redrawn line per stage: `prune  [#######-------]  50%  message`."""

    def __init__(self, stream: TextIO, width: int = 24) -> None:
        self._out, self._width, self._stage = stream, width, ""
        self._tty = stream.isatty()

    def __call__(self, event: pb.JobEvent) -> None:
        if event.kind == "state":
            self._line(f"[{pb.JobState.Name(event.state)}] {event.message}", done=True)
            return
        if event.stage != self._stage and self._stage:
            self._out.write("\n" if self._tty else "")
        self._stage = event.stage
        frac = event.progress if event.HasField("progress") else (1.0 if event.kind == "finished" else 0.0)
        bar = "#" * round(frac * self._width)
        self._line(f"{event.stage:10} [{bar:-<{self._width}}] {frac:4.0%}  {event.message[:60]}",
                   done=event.kind == "finished")

    def _line(self, text: str, *, done: bool) -> None:
        if self._tty:
            self._out.write("\r\033[K" + text + ("\n" if done else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()


def _shape(text: str) -> list[int]:
    try:
        return [int(d) for d in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise ValueError(f"--input-shape {text!r}: expected e.g. 1x3x32x32") from None


def _inputs(text: str) -> dict[str, Any]:
    """build_request's input_shape ('1x3x32x32'), or its named inputs ('NAME:SHAPE[:DTYPE],...')."""
    if ":" not in text:
        return {"input_shape": _shape(text)}
    named = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"--input-shape {part!r}: expected NAME:SHAPE[:DTYPE], e.g. input_ids:1x128:int64")
        named.append((fields[0], [int(d) for d in fields[1].lower().split("x")], fields[2] if len(fields) == 3 else ""))
    return {"inputs": named}


def _config(path: Path | None) -> dict[str, Any] | None:
    """A Hugging Face config.json as arch_kwargs: its label map becomes num_labels; bookkeeping fields go
    (the server refuses any field that is not the model's own)."""
    if path is None:
        return None
    config = json.loads(Path(path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"--hf-config {path}: not a JSON object")
    labels = config.pop("id2label", None)
    config.pop("label2id", None)
    if isinstance(labels, dict):
        config.setdefault("num_labels", len(labels))
    for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        config.pop(key, None)
    return config


def _count(text: str) -> int:
    """An integer, also written as 1.5e5."""
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _pair(text: str, cast: type) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected NAME=VALUE")
    return key, cast(value)


def _protocol_setting(text: str) -> tuple[str, object]:
    """One latency protocol field as NAME=VALUE, cast to the field's type (the server checks the bounds)."""
    fields = pb.LatencyProtocol.DESCRIPTOR.fields_by_name
    key, value = _pair(text, str)
    if key not in fields:
        raise ValueError(f"--protocol {key!r}: expected one of {', '.join(fields)}")
    return key, (float(value) if fields[key].type == fields[key].TYPE_DOUBLE else int(value))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="secateurs-client", description=__doc__.splitlines()[0])
    p.add_argument("--server", default=os.environ.get("SECATEURS_SERVER", DEFAULT_TARGET),
                   help="host:port (default: $SECATEURS_SERVER or %(default)s)")
    p.add_argument("--token", default=os.environ.get("SECATEURS_TOKEN"), help="bearer token ($SECATEURS_TOKEN)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    p.add_argument("--tls-ca", help="PEM roots to verify the server")
    p.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="client private key (mutual TLS)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="upload weights and data, run a job, download its artifacts")
    c.add_argument("--arch", required=True, help="e.g. zoo:resnet20, torchvision:resnet18, "
                                                 "hf:AutoModelForSequenceClassification (with --hf-config), or "
                                                 "pt2:FILE (a torch.export program, uploaded)")
    c.add_argument("--hf-config", type=Path, metavar="CONFIG_JSON",
                   help="for hf:<AutoClass>: a Hugging Face config.json, sent as the model's arguments")
    c.add_argument("--weights", type=Path, help=".safetensors or state-dict file")
    c.add_argument("--input-shape", required=True,
                   help="e.g. 1x3x32x32; named inputs: input_ids:1x128:int64,attention_mask:1x128:int64")
    c.add_argument("--ratio", type=float, help="uniform channel pruning ratio in [0, 1)")
    c.add_argument("--group-ratio", action="append", default=[], metavar="GROUP=RATIO")
    b = c.add_argument_group("budget", "instead of --ratio: a search picks each group's ratio so that every "
                                       "limit given holds")
    b.add_argument("--latency-ms", type=float, help="latency at --percentile on the target, milliseconds")
    b.add_argument("--speedup", type=float, help="baseline / compressed latency, > 1")
    b.add_argument("--size-mb", type=float, help="ONNX file size, MB (10^6 bytes)")
    b.add_argument("--params", type=_count, help="parameter count (e.g. 150000 or 1.5e5)")
    b.add_argument("--macs", type=_count, help="multiply-accumulates per input (e.g. 2e7)")
    b.add_argument("--max-accuracy-drop", type=float,
                   help="with another limit: accuracy lost, 0.01 = one point (fidelity without labelled data)")
    r = c.add_argument_group("recovery", "fine-tuning with the unpruned model as teacher, after pruning; "
                                         "on when --epochs is given")
    r.add_argument("--epochs", type=int, help="epochs of recovery (required for recovery)")
    r.add_argument("--lr", type=float, help="peak learning rate (default: SGD 0.01, AdamW 1e-3)")
    r.add_argument("--optimizer", default="", help="sgd (Nesterov, default) or adamw")
    r.add_argument("--batch-size", type=int, default=0, help="default 128")
    r.add_argument("--kd-weight", type=float, help="output distillation (KL at T=4; default 1, 0: off)")
    r.add_argument("--feature-weight", type=float, default=0.0, help="feature-map distillation (default off)")
    r.add_argument("--attention-weight", type=float, default=0.0, help="attention transfer (default off)")
    r.add_argument("--progressive-steps", type=int, default=0, help="reach the plan in k prune+recover steps")
    dg = c.add_argument_group("data", "ImageFolder trees (<split>/<class>/<image>): a .zip uploaded first, or a "
                                      "path under the server's --data-root")
    dg.add_argument("--train-data", type=Path, metavar="FILE.zip", help="what recovery trains on (split train)")
    dg.add_argument("--val-data", type=Path, metavar="FILE.zip",
                    help="the accuracy is measured on its --val-split (calibration comes from a train split, never "
                         "from that one); without it: fidelity on generated inputs")
    dg.add_argument("--train-uri", default="", help="server-side path instead of --train-data")
    dg.add_argument("--val-uri", default="", help="server-side path instead of --val-data")
    dg.add_argument("--val-split", default="", help="split folder of the val data (default test)")
    dg.add_argument("--data-preset", default="", help="normalisation and augmentation: cifar10 or imagenet")
    dg.add_argument("--data-format", default="", choices=("", "imagefolder", "jsonl", "voc", "coco"),
                    help="jsonl: text, <split>.jsonl lines of {\"text\", \"label\"} beside tokenizer.json; "
                         "voc: Pascal VOC segmentation masks (scored as mIoU); coco: COCO boxes, "
                         "annotations/instances_<split>.json (a detector scored as mAP)")
    dg.add_argument("--calibration-samples", type=int, default=0,
                    help="images the search decides on (as many again recalibrate BatchNorm); default 128")
    dg.add_argument("--evaluation-samples", type=int, default=0,
                    help="a seeded subset of the evaluation split to measure accuracy on; default: all of it")
    c.add_argument("--percentile", type=float, help="where latency is read: 50 (default), 90, 95, 99")
    c.add_argument("--importance", default="", help="l1 (default), l2, bn_scale, taylor")
    c.add_argument("--round-to", type=int, default=0)
    c.add_argument("--export", action="append", default=[], help="onnx, pt2, plan (default: all)")
    c.add_argument("--runtime", default="", help="onnxruntime-cpu (default), onnxruntime-cuda, tensorrt, torch-cpu, "
                                                  "torch-cuda, torch-compile-cpu, torch-compile-cuda")
    c.add_argument("--precision", default="", help="fp32 (default) or fp16 (GPU runtimes)")
    c.add_argument("--threads", type=int, default=0, help="CPU threads of the runtime (default 2)")
    c.add_argument("--protocol", action="append", default=[], metavar="NAME=VALUE",
                   help="a latency protocol field (warmup_runs, warmup_seconds, window, min_samples, max_seconds, "
                        "tolerance) over the server's default; e.g. --protocol max_seconds=2 for a shorter "
                        "measurement")
    c.add_argument("--batch", type=int, default=0, help="measure (and export) at this batch (default: the input's)")
    c.add_argument("--probe", default="", metavar="NAME",
                   help="measure every latency on the latency probe of this name, one the server lists "
                        "(secateurs serve --probe NAME=HOST:PORT)")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    c.add_argument("--out", type=Path, default=Path("secateurs-out"), help="artifact directory")
    c.add_argument("--no-wait", action="store_true", help="print the job id and return")
    c.set_defaults(func=cmd_compress)

    g = sub.add_parser("get", help="print a job as JSON")
    g.add_argument("job_id")
    g.set_defaults(func=cmd_get)

    ls = sub.add_parser("list", help="list jobs, newest first")
    ls.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    ls.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)

    w = sub.add_parser("watch", help="print a job's events until it ends")
    w.add_argument("job_id")
    w.add_argument("--after", type=int, default=0, help="replay events after this sequence number")
    w.set_defaults(func=cmd_watch)

    x = sub.add_parser("cancel", help="cancel a job")
    x.add_argument("job_id")
    x.set_defaults(func=cmd_cancel)

    d = sub.add_parser("download", help="download a job's artifacts")
    d.add_argument("job_id")
    d.add_argument("names", nargs="*",
                   help="artifact names (onnx, pt2, plan, report, report_html) or filenames (default: all)")
    d.add_argument("--out", type=Path, default=Path("."))
    d.set_defaults(func=cmd_download)
    return p


if __name__ == "__main__":
    sys.exit(main())
