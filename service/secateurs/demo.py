"""`make run`: the service's mission in one run, on this machine, with nothing downloaded.

1. Data: scikit-learn's handwritten digits (1,797 8x8 images that ship with the library) as a
   32x32 ImageFolder zip, in the engine's own fixed stratified split of 1,437 training and 360
   held-out images. With $SECATEURS_CIFAR10_ZIP set: 300 training and 100 held-out images per class
   of that CIFAR-10 copy instead.
2. A CIFAR ResNet-20 trained on the training images, a few epochs, weights as safetensors.
3. The gRPC server on a free loopback port (a temporary data directory, one worker), and one
   job through the typed client: a latency budget (2x faster at batch 32 on ONNX Runtime CPU,
   measured here), recovery by distillation from the unpruned model, accuracy on the held-out
   images, which no search decision sees.
4. The summary, once: the budget and its measured speedup, accuracy before and after with the
   image count, size before and after, and where report.html is (./out/demo).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from secateurs.engine.spec import DataSpec, TransformSpec

OUT = Path("out/demo")
SIDE = 32
BUDGET_SPEEDUP = 2.0
BATCH = 32  # the deployment's batch: at batch 1 this small network is bound by per-operator overhead
PROTOCOL = dict(warmup_runs=5, warmup_seconds=0.1, window=20, min_samples=60, max_seconds=4.0)
CIFAR_ENV = "SECATEURS_CIFAR10_ZIP"


def _as_images(spec_by_split: dict[str, DataSpec]) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Each split read by the engine's own loader, as HWC uint8 images (what a PNG holds)."""
    from secateurs.engine.intake.data import load_dataset

    return {split: [((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), int(label))
                    for x, label in load_dataset(spec)]
            for split, spec in spec_by_split.items()}


def digits_images() -> dict[str, list[tuple[np.ndarray, int]]]:
    """Digits at 32x32 RGB in the engine's fixed stratified split (1,437 train, 360 test)."""
    resize = TransformSpec(resize=(SIDE, SIDE))
    return _as_images({split: DataSpec(source="digits", split=split, channels=3, transform=resize)
                       for split in ("train", "test")})


def cifar_images(path: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, list[tuple[np.ndarray, int]]]:
    """A seeded subset of a CIFAR-10 ImageFolder zip (<split>/<class>/<image>), per split and class."""
    return _as_images({split: DataSpec(source="imagefolder", path=path, split=split, limit_per_class=count, seed=seed)
                       for split, count in per_class.items()})


def write_imagefolder_zip(images: dict[str, list[tuple[np.ndarray, int]]], path: Path) -> Path:
    """<split>/<class>/<n>.png, the layout the server reads (lossless, so what trains is what is read)."""
    from PIL import Image

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, rows in images.items():
            for n, (pixels, label) in enumerate(rows):
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                zf.writestr(f"{split}/{label}/{n:05d}.png", buf.getvalue())
    return path


def train_model(rows: list[tuple[np.ndarray, int]], path: Path, *, epochs: int, seed: int = 0) -> Path:
    """ResNet-20 trained on `rows` (SGD, one-cycle), saved as safetensors; [0, 1] inputs, no
    normalisation, as the server reads the zip without a preset."""
    from safetensors.torch import save_file

    from secateurs.engine.intake.zoo import ZOO

    torch.manual_seed(seed)
    x = torch.from_numpy(np.stack([p for p, _ in rows])).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([label for _, label in rows])
    model = ZOO["resnet20"]()
    batches = (len(x) + 63) // 64
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * batches)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(batches):
            pick = order[i * 64:(i + 1) * 64]
            loss = torch.nn.functional.cross_entropy(model(x[pick]), y[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  training ResNet-20: epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}", file=sys.stderr, flush=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_job(address: str, weights: Path, data: Path, out: Path) -> dict:
    """One budget job through the typed client: upload, create, follow, download; the report."""
    from secateurs_client import Client, build_request
    from secateurs_client.cli import Progress
    from secateurs_client.v1 import compression_pb2 as pb

    with Client(address) as client:
        weights_blob, data_blob = client.upload_blob(weights), client.upload_blob(data)
        request = build_request(arch="zoo:resnet20", input_shape=(1, 3, SIDE, SIDE), weights_blob_id=weights_blob.id,
                                speedup=BUDGET_SPEEDUP, batch=BATCH, protocol=PROTOCOL, epochs=3,
                                train_blob_id=data_blob.id, val_blob_id=data_blob.id, exports=("onnx",),
                                labels={"source": "make-run"})
        job = client.wait(client.create_job(request).id, on_event=Progress(sys.stderr))
        if job.state != pb.SUCCEEDED:
            raise SystemExit(f"job {job.id} {pb.JobState.Name(job.state)}: {job.error.reason}: {job.error.message}")
        out.mkdir(parents=True, exist_ok=True)
        for artifact in job.artifacts:
            client.download_artifact(job.id, artifact.name, out / artifact.filename)
    return json.loads((out / "report.json").read_text())


def main() -> int:
    from secateurs.api.server import Server, ServerConfig
    from secateurs.cli import summary

    started = time.perf_counter()
    cifar = os.environ.get(CIFAR_ENV)
    with tempfile.TemporaryDirectory(prefix="secateurs-demo-") as tmp:
        tmp_path = Path(tmp)
        images = cifar_images(Path(cifar), {"train": 300, "test": 100}) if cifar else digits_images()
        source = f"CIFAR-10 subset of {cifar}" if cifar else "scikit-learn digits at 32x32"
        print(f"data: {source}, {len(images['train']):,} training and {len(images['test']):,} held-out images",
              file=sys.stderr)
        data = write_imagefolder_zip(images, tmp_path / "data.zip")
        weights = train_model(images["train"], tmp_path / "resnet20.safetensors", epochs=12 if cifar else 8)
        server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "server"))
        server.start()
        print(f"server listening on {server.address}; job: speedup {BUDGET_SPEEDUP}x at batch {BATCH}, "
              f"recovery by distillation", file=sys.stderr)
        try:
            report = run_job(server.address, weights, data, OUT)
        finally:
            server.stop(grace=5)
    print(summary(report))
    print(f"report: {(OUT / 'report.html').resolve()}   ({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
