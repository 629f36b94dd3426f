"""Train a CIFAR-10 model from scratch on the CPU and save its weights for the compression benchmarks.

SGD (momentum 0.9, Nesterov, weight decay 5e-4), linear warm-up then cosine annealing, random
crop + flip. Prints one line per epoch; writes the weights as safetensors and, next to them,
a JSON sidecar (arch, epochs, test accuracy, seconds, command, date, per-epoch history).
The dataset path comes from $SECATEURS_CIFAR10_ZIP (default ../shared/datasets/cifar10-jpeg.zip).

    .venv/bin/python benchmarks/train_cifar.py --arch zoo:resnet20 --epochs 30 --lr 0.1 \\
        --out benchmarks/.cache/resnet20.safetensors [--subset 5000] [--seed 0] [--eval-every 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: cifar_common sits beside it

from cifar_common import CACHE_DIR, EpochStats, cifar_zip_path, evaluate, load_cifar_tensors, subset, train  # noqa: E402

from secateurs.engine.intake.models import build_architecture  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="zoo:resnet20")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--subset", type=int, default=None, help="train on this many random training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=1, help="test-set evaluation every k epochs (and the last)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; use 1 while another process keeps a core busy (2 threads then ran 4x slower)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: the whole training set is moved there once")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=CACHE_DIR / "resnet20.safetensors")
    args = parser.parse_args()
    if args.epochs < 1 or args.eval_every < 1:
        parser.error("--epochs and --eval-every must be >= 1")

    zip_path = cifar_zip_path()
    train_x, train_y = load_cifar_tensors(zip_path, "train")
    test_x, test_y = load_cifar_tensors(zip_path, "test")
    if args.subset is not None:
        train_x, train_y = subset(train_x, train_y, args.subset, seed=args.seed)
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU on this machine")
    train_x, train_y = train_x.to(args.device), train_y.to(args.device)
    torch.manual_seed(args.seed)  # the model's initialisation follows the seed too
    model = build_architecture(args.arch, {"num_classes": 10})
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_y):,} training images, {args.epochs} epochs, lr {args.lr}, threads {args.threads}", flush=True)

    rows: list[dict[str, float | int | None]] = []
    started = time.perf_counter()

    def report(stats: EpochStats, trained: nn.Module) -> None:
        test_acc = None
        if stats.epoch % args.eval_every == 0 or stats.epoch == args.epochs:
            test_acc = evaluate(trained, test_x, test_y, channels_last=args.channels_last)
        rows.append({**dataclasses.asdict(stats), "test_acc": test_acc})
        shown = f"{test_acc:.4f}" if test_acc is not None else "  -   "
        print(f"epoch {stats.epoch:3d}/{args.epochs}  loss {stats.loss:.4f}  train {stats.train_acc:.4f}  "
              f"test {shown}  lr {stats.lr:.5f}  {stats.seconds:6.1f}s  (total {time.perf_counter() - started:7.1f}s)",
              flush=True)

    train(model, train_x, train_y, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
          weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
          seed=args.seed, on_epoch=report, channels_last=args.channels_last, threads=args.threads)
    seconds = time.perf_counter() - started

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # safetensors wants plain contiguous tensors (channels_last weights are not).
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(args.out))
    sidecar = {
        "arch": args.arch,
        "arch_kwargs": {"num_classes": 10},
        "epochs": args.epochs,
        "device": args.device,
        "test_accuracy": rows[-1]["test_acc"],
        "train_images": len(train_y),
        "seconds": round(seconds, 1),
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "history": rows,
    }
    sidecar_path = args.out.with_suffix(".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"test accuracy {rows[-1]['test_acc']:.4f} after {seconds:.0f}s; weights {args.out}, sidecar {sidecar_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
