"""A whole job on a torchvision detector at a small input, under a speedup budget: both outputs
parity-checked against their own scales, quality per anchor with box agreement and as COCO mAP
against boxes in COCO layout, recovery distilling on the training images, the anchors and the
classes kept in the exported model, and the report saying what the graph leaves out."""

from __future__ import annotations

import torch

from secateurs.engine.budget import Budget
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.pipeline import compress
from secateurs.engine.report.schema import validate_report
from secateurs.engine.search.sensitivity import recalibrate_batchnorm
from secateurs.engine.spec import CompressSpec, DataSpec, ModelSpec, ProtocolSpec, RecoverySpec
from scenes import write_coco_scenes

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no budget asserted


def _detector_weights(path, arch: str, kwargs: dict, size: int):
    """Random weights with BatchNorm statistics of generated images: at torchvision's own
    initialisation SSDlite's features vanish (1e-14 at the heads), so every output would be constant."""
    torch.manual_seed(0)
    model = build_architecture(arch, kwargs)
    recalibrate_batchnorm(model, [torch.rand(8, 3, size, size) for _ in range(2)])
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        return model(torch.rand(1, 3, size, size))


def test_a_detection_speedup_job_keeps_its_heads_and_scores_its_boxes(tmp_path):
    import onnxruntime as ort

    arch, kwargs = "torchvision:ssdlite320_mobilenet_v3_large", {"num_classes": 4}  # the scenes' 3 and background
    original = _detector_weights(tmp_path / "ssdlite.pt", arch, kwargs, 64)
    coco = write_coco_scenes(tmp_path / "coco", splits={"train": 16, "val": 12}, size=80)
    spec = CompressSpec(model=ModelSpec(arch=arch, arch_kwargs=kwargs, weights=tmp_path / "ssdlite.pt"),
                        input_shape=(1, 3, 64, 64), out_dir=tmp_path, protocol=QUICK, calibration_samples=8,
                        data=DataSpec(source="coco", path=coco, split="val"),
                        train_data=DataSpec(source="coco", path=coco, split="train"),
                        recovery=RecoverySpec(epochs=1, batch_size=8),
                        cache_dir=tmp_path / "cache", budget=Budget(speedup=1.2, max_accuracy_drop=0.99), depth="off",
                        round_to=16, exports=("onnx",))  # torch.export of the detector is seconds more
    result = compress(spec)
    report = result.report
    validate_report(report)
    assert report["model"]["task"] == "detection" and report["model"]["outputs"] == ["scores", "boxes"]
    assert "non-maximum suppression" in report["model"]["graph"]
    parity = report["parity"]
    assert parity["passed"] and parity["mode"] == "outputs" and set(parity["outputs"]) == {"scores", "boxes"}
    assert report["quality"]["scored"] == "per anchor"
    before, after = report["quality"]["before"], report["quality"]["after"]
    assert 0.0 < after["box_agreement"] < 1.0 and 0.0 < after["agreement"] <= 1.0  # pruned: boxes moved
    # COCO mAP on the 12 val images, none of them calibrated on, at their own 80x80 pixels
    assert after["samples"] == after["map_images"] == 12 and after["map_boxes"] >= 12 and after["accuracy"] is None
    assert 0.0 <= before["map"] <= 1.0 and 0.0 <= after["map"] <= after["map50"] <= 1.0
    assert report["quality"]["postprocess"]["per_image"] == 100
    assert report["accuracy_floor"]["measured_as"].startswith("COCO box mAP")
    assert report["recovery"]["label_free"] is True  # the boxes score the evaluation; recovery distils
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    session = ort.InferenceSession(str(result.artifacts["onnx"]), providers=["CPUExecutionProvider"])
    scores, boxes = session.get_outputs()
    assert (scores.name, boxes.name) == ("scores", "boxes")
    assert scores.shape[1:] == list(original.scores.shape[1:]) and boxes.shape[1:] == list(original.boxes.shape[1:])
