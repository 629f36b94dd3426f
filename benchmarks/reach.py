"""Model families beyond the CIFAR zoo, each as one whole job under a 1.5x speedup budget at a small
input: groups found, removable blocks, MACs cut, the measured speedup, whether the budget was met,
parity of the delivered ONNX model on every output, and the job's time.

    .venv/bin/python benchmarks/reach.py [--section hf,dense] [--only NAME,...] [--speedup 1.5]
    .venv/bin/python benchmarks/reach.py --accuracy text|segmentation [--seeds 0,1,2]

Sections: `hf` (transformers from configs: BERT, DistilBERT, RoBERTa sequence classifiers on
token ids, ViT on images), `dense` (torchvision segmentation: FCN, DeepLabV3, LR-ASPP; detection:
RetinaNet, FCOS, SSDlite), `timm` (twelve timm families; benchmarks/timm_reach.py's set).
Random-initialised weights (nothing is downloaded), generated inputs, fidelity to the original as
the quality signal (KL; per pixel for segmentation; per anchor, with box IoU, for detection), a
short protocol (at most 2 s a measurement), no recovery: the table is about reach, not accuracy.

`--accuracy text` is the accuracy case of the text modality: a DistilBERT-shaped classifier
trained here on a synthetic task (tests/support/text_data.py: more 'good' than 'bad' words, a
WordLevel tokenizer trained on its train split), then a 2x speedup job with two epochs of
recovery (distillation and labels) on the train split; accuracy before and after on the test
split, which neither the search nor recovery sees, with its sample count and 95% interval.
`--accuracy segmentation` is the same for LR-ASPP-MobileNetV3 on generated 64x64 scenes in VOC
layout (tests/support/scenes.py: squares, discs and triangles of random colours on noise, one
class per shape), trained here for 12 epochs; mean IoU and pixel accuracy on 1,000 val scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from secateurs.engine.intake.data import load_dataset
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.pipeline import compress
from secateurs.engine.search.sensitivity import recalibrate_batchnorm
from secateurs.engine.spec import DataSpec, ModelSpec, ProtocolSpec, RecoverySpec
from secateurs.engine.validate import build_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

PROTOCOL = ProtocolSpec(warmup_runs=5, warmup_seconds=0.2, window=30, min_samples=90, max_seconds=2.0)
TEXT = "input_ids:1x64:int64,attention_mask:1x64:int64"
_ENCODER = {"vocab_size": 1000, "num_hidden_layers": 4, "num_attention_heads": 4, "hidden_size": 128,
            "intermediate_size": 512, "max_position_embeddings": 128, "num_labels": 2}
SECTIONS: dict[str, list[tuple[str, str, dict, str]]] = {  # (row, arch, kwargs, inputs)
    "hf": [
        ("BERT (4 layers x 128)", "hf:AutoModelForSequenceClassification",
         {"model_type": "bert", **_ENCODER}, TEXT),
        ("RoBERTa (4 layers x 128)", "hf:AutoModelForSequenceClassification",
         {"model_type": "roberta", **_ENCODER, "max_position_embeddings": 130, "pad_token_id": 1}, TEXT),
        ("DistilBERT (4 layers x 128)", "hf:AutoModelForSequenceClassification",
         {"model_type": "distilbert", "vocab_size": 1000, "n_layers": 4, "n_heads": 4, "dim": 128,
          "hidden_dim": 512, "max_position_embeddings": 128, "num_labels": 2}, TEXT),
        ("ViT (4 layers x 128; 64x64)", "hf:AutoModelForImageClassification",
         {"model_type": "vit", "image_size": 64, "patch_size": 8, "hidden_size": 128, "num_hidden_layers": 4,
          "num_attention_heads": 4, "intermediate_size": 512, "num_labels": 10}, "1x3x64x64"),
    ],
    "dense": [
        ("FCN-ResNet50", "torchvision:fcn_resnet50", {"num_classes": 4, "aux_loss": False}, "1x3x64x64"),
        ("DeepLabV3-MobileNetV3", "torchvision:deeplabv3_mobilenet_v3_large",
         {"num_classes": 4, "aux_loss": False}, "1x3x64x64"),
        ("LR-ASPP-MobileNetV3", "torchvision:lraspp_mobilenet_v3_large", {"num_classes": 4}, "1x3x64x64"),
        ("RetinaNet-ResNet50-FPN", "torchvision:retinanet_resnet50_fpn", {"num_classes": 4}, "1x3x128x128"),
        ("FCOS-ResNet50-FPN", "torchvision:fcos_resnet50_fpn", {"num_classes": 4}, "1x3x128x128"),
        ("SSDlite-MobileNetV3", "torchvision:ssdlite320_mobilenet_v3_large", {"num_classes": 4}, "1x3x128x128"),
    ],
    "timm": [(name, f"timm:{name}", {"num_classes": 10, **({"img_size": 64} if sized else {})}, "1x3x64x64")
             for name, sized in (("resnet18", False), ("resnext26ts", False), ("efficientnet_b0", False),
                                 ("mobilenetv3_small_100", False), ("regnetx_002", False), ("convnext_atto", False),
                                 ("ghostnet_100", False), ("densenet121", False), ("vit_tiny_patch16_224", True),
                                 ("deit_tiny_patch16_224", True), ("swin_tiny_patch4_window7_224", True),
                                 ("mixer_s16_224", True))],
}
HEADER = ("| family | spec | groups (prunable) | blocks (dropped) | MACs cut | measured speedup | met | "
          "parity (worst output) | job | note |\n|---|---|---|---|---|---|---|---|---|---|")


def _recalibrated(arch: str, kwargs: dict, inputs: str, tmp: Path) -> Path:
    """Random weights with BatchNorm statistics of generated images in [0, 1]: at torchvision's own
    initialisation a deep detector's features vanish (SSDlite: 1e-14 at the heads), so its outputs
    would be constant and every fidelity figure meaningless."""
    torch.manual_seed(0)
    model = build_architecture(arch, kwargs)
    shape = [int(d) for d in inputs.split("x")]
    recalibrate_batchnorm(model, [torch.rand(8, *shape[1:]) for _ in range(4)])
    path = tmp / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def row(label: str, arch: str, kwargs: dict, inputs: str, speedup: float, tmp: Path) -> str:
    weights = _recalibrated(arch, kwargs, inputs, tmp) if arch.startswith("torchvision:") else None
    spec = build_spec(model=ModelSpec(arch=arch, arch_kwargs=kwargs, weights=weights), input_shape=inputs,
                      out_dir=tmp / "out",
                      limits={"speedup": speedup}, protocol=PROTOCOL, calibration_samples=32,
                      evaluation_samples=64, cache_dir=tmp / "cache")
    start = time.perf_counter()
    report = compress(spec).report
    seconds = time.perf_counter() - start
    groups = report["search"].get("groups") or report["pruning"]["groups"]
    prunable = sum(1 for g in groups if g.get("prunable", True))
    blocks = report["search"].get("blocks") or []
    dropped = len(report["pruning"]["dropped_blocks"])
    size, parity = report["size"], report["parity"]
    outputs = ", ".join(parity.get("outputs") or {}) or report["model"]["output"]
    quality = report["quality"]["after"]
    fidelity = f"agreement {quality['agreement']:.2f}" + (
        f", box IoU {quality['box_agreement']:.2f}" if quality.get("box_agreement") is not None else "")
    return (f"| {label} | `{arch}` | {len(groups)} ({prunable}) | {len(blocks)} ({dropped}) | "
            f"{size['macs_reduction']:.2f}x | {report['latency']['speedup']:.2f}x | "
            f"{'yes' if report['budget_met'] else 'no'} | {'yes' if parity['passed'] else 'NO'} "
            f"({parity['relative_diff']:.0e}; {outputs}) | {seconds:.0f} s | {fidelity} |")


TEXT_MODEL = {"model_type": "distilbert", "n_layers": 4, "n_heads": 4, "dim": 128, "hidden_dim": 512,
              "max_position_embeddings": 64, "num_labels": 2}
TEXT_INPUTS = "input_ids:1x32:int64,attention_mask:1x32:int64"


def _train_base(root: Path, arch: str, kwargs: dict, dataset: Any, logits_of: Any, seed: int, epochs: int) -> Path:
    """The original model: trained here with AdamW on the train split (cross-entropy; label -1, a
    mask's ignore border, left out); its weights file."""
    torch.manual_seed(seed)
    model = build_architecture(arch, kwargs)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(logits_of(model, x), y, ignore_index=-1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = root / f"base-{seed}.pt"
    torch.save(model.state_dict(), path)
    return path


def _job(arch: str, kwargs: dict, weights: Path, inputs: str, data: DataSpec, train: DataSpec, seed: int,
         tmp: Path) -> dict:
    """A 2x speedup job with two epochs of recovery (distillation and labels) on the train split."""
    spec = build_spec(model=ModelSpec(arch=arch, arch_kwargs=kwargs, weights=weights), input_shape=inputs,
                      out_dir=tmp / "out", limits={"speedup": 2.0}, protocol=PROTOCOL, seed=seed, data=data,
                      train_data=train, recovery=RecoverySpec(epochs=2, optimizer="adamw", lr=5e-4, batch_size=32),
                      cache_dir=tmp / "cache")
    return compress(spec).report


def _interval(q: dict) -> str:
    return f"{q['accuracy']:.1%} ({q['interval'][0]:.1%}–{q['interval'][1]:.1%})"


def _case(label: str, arch: str, kwargs: dict, inputs: str, train: DataSpec, evaluate: DataSpec, logits_of: Any,
          figure: Any, seed: int, epochs: int, tmp: Path) -> str:
    """Train the original here, compress it at 2x with recovery, and the table's row: `figure` of the
    quality before and after, on the evaluation split neither the search nor recovery saw."""
    specs = build_spec(model=ModelSpec(arch=arch, arch_kwargs=kwargs), input_shape=inputs, out_dir=tmp / "unused",
                       ratio=0.1).inputs
    start = time.perf_counter()
    weights = _train_base(tmp, arch, kwargs, load_dataset(train, specs), logits_of, seed, epochs)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    report = _job(arch, kwargs, weights, inputs, evaluate, train, seed, tmp)
    before, after = report["quality"]["before"], report["quality"]["after"]
    return (f"| {label} | {seed} | {figure(before)} | {figure(after)} | {after['samples']} | "
            f"{report['latency']['speedup']:.2f}x | {'yes' if report['budget_met'] else 'no'} | "
            f"{len(report['pruning']['dropped_blocks'])} | {trained:.0f} s + {time.perf_counter() - start:.0f} s |")


def accuracy_text(seed: int, tmp: Path) -> str:
    from text_data import write_text_dataset

    texts = write_text_dataset(tmp / "texts", train=4000, test=2000, seed=seed)
    vocab = json.loads((texts / "tokenizer.json").read_text())["model"]["vocab"]
    train, test = (DataSpec(source="jsonl", path=texts, split=split) for split in ("train", "test"))
    return _case("text: DistilBERT 4x128, 2 classes", "hf:AutoModelForSequenceClassification",
                 {**TEXT_MODEL, "vocab_size": len(vocab)}, TEXT_INPUTS, train, test, lambda m, x: m(*x)[0],
                 lambda q: f"accuracy {_interval(q)}", seed, 3, tmp)


def accuracy_segmentation(seed: int, tmp: Path) -> str:
    from scenes import write_voc_scenes

    voc = write_voc_scenes(tmp / "voc", splits={"train": 2000, "val": 1000}, size=64, seed=seed)
    train, val = (DataSpec(source="voc", path=voc, split=split) for split in ("train", "val"))
    return _case("segmentation: LR-ASPP-MobileNetV3, 4 classes, 64x64 scenes", "torchvision:lraspp_mobilenet_v3_large",
                 {"num_classes": 4}, "1x3x64x64", train, val, lambda m, x: m(x)["out"],
                 lambda q: f"mIoU {q['miou']:.1%} (pixels {q['pixel_accuracy']:.1%})", seed, 12, tmp)


ACCURACY = {"text": accuracy_text, "segmentation": accuracy_segmentation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="hf,dense", help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma-separated row names or specs")
    parser.add_argument("--speedup", type=float, default=1.5)
    parser.add_argument("--accuracy", choices=sorted(ACCURACY), help="the accuracy case of a modality instead of "
                                                                      "the table")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    if args.accuracy:
        print("| case | seed | before (95% interval) | after 2 epochs | evaluation samples | measured speedup | met | "
              "blocks dropped | train + job |\n|---|---|---|---|---|---|---|---|---|", flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                print(ACCURACY[args.accuracy](seed, Path(tmp)), flush=True)
        return 0
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    print(HEADER, flush=True)
    for section in args.section.split(","):
        for label, arch, kwargs, inputs in SECTIONS[section]:
            if only and label not in only and arch not in only:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    line = row(label, arch, kwargs, inputs, args.speedup, Path(tmp))
                except Exception as exc:  # one family failing is a row of the table, not the end of it
                    traceback.print_exc(file=sys.stderr)
                    line = f"| {label} | `{arch}` | failed: {type(exc).__name__}: {str(exc)[:160]} | | | | | | | |"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
