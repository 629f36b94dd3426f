"""A whole job on a segmentation network at a small input: a speedup budget, parity on the dense
output, quality per pixel (agreement with the original, and mean IoU against VOC-layout masks,
which recovery trains on pixel by pixel), the classes and the resolution kept in the exported model."""

from __future__ import annotations

from secateurs.engine.budget import Budget
from secateurs.engine.pipeline import compress
from secateurs.engine.report.schema import validate_report
from secateurs.engine.spec import CompressSpec, DataSpec, ModelSpec, ProtocolSpec, RecoverySpec
from scenes import write_voc_scenes

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no budget asserted


def test_a_segmentation_speedup_job_keeps_its_classes_and_scores_every_pixel(tmp_path):
    import onnxruntime as ort

    voc = write_voc_scenes(tmp_path / "voc", splits={"train": 48, "val": 24}, size=40)
    spec = CompressSpec(model=ModelSpec(arch="torchvision:lraspp_mobilenet_v3_large", arch_kwargs={"num_classes": 4}),
                        input_shape=(1, 3, 32, 32), out_dir=tmp_path / "out", protocol=QUICK, calibration_samples=16,
                        cache_dir=tmp_path / "cache", budget=Budget(speedup=1.2, max_accuracy_drop=0.99),
                        data=DataSpec(source="voc", path=voc, split="val"),
                        train_data=DataSpec(source="voc", path=voc, split="train"),
                        recovery=RecoverySpec(epochs=1, batch_size=16),
                        round_to=16,  # half the widths to tabulate and score: what is tested is the dense path
                        depth="off", exports=("onnx",))  # channels only: whole blocks of a dense network are the search tests' ground
    result = compress(spec)
    report = result.report
    validate_report(report)
    assert report["parity"]["passed"] and report["parity"]["top1_agreement"] is not None  # per pixel, 4 images
    before, after = report["quality"]["before"], report["quality"]["after"]
    assert 0.0 <= after["agreement"] <= 1.0 and after["samples"] == 24  # the val split, none of it calibrated on
    assert after["accuracy"] is None and 0.0 <= after["miou"] <= 1.0 and 1 <= after["miou_classes"] <= 4
    assert before["miou"] is not None and report["accuracy_floor"]["measured_as"].startswith("mean IoU")
    assert report["recovery"]["label_free"] is False  # cross-entropy on the masks' pixels, beside distillation
    assert report["recovery"]["history"][0]["train_accuracy"] is not None  # per labelled pixel
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    session = ort.InferenceSession(str(result.artifacts["onnx"]), providers=["CPUExecutionProvider"])
    (output,) = session.get_outputs()
    assert output.shape == [1, 4, 32, 32]  # the classes kept, at the input's resolution
