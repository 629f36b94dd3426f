"""A whole job on a segmentation network at a small input: a speedup budget, parity on the dense
output, quality per pixel, the classes and the resolution kept in the exported model."""

from __future__ import annotations

from secateurs.engine.budget import Budget
from secateurs.engine.pipeline import compress
from secateurs.engine.report.schema import validate_report
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no budget asserted


def test_a_segmentation_speedup_job_keeps_its_classes_and_scores_every_pixel(tmp_path):
    import onnxruntime as ort

    spec = CompressSpec(model=ModelSpec(arch="torchvision:lraspp_mobilenet_v3_large", arch_kwargs={"num_classes": 4}),
                        input_shape=(1, 3, 32, 32), out_dir=tmp_path, protocol=QUICK, calibration_samples=16,
                        cache_dir=tmp_path / "cache", budget=Budget(speedup=1.2))
    result = compress(spec)
    report = result.report
    validate_report(report)
    assert report["parity"]["passed"] and report["parity"]["top1_agreement"] is not None  # per pixel, 4 images
    after = report["quality"]["after"]
    assert 0.0 <= after["agreement"] <= 1.0 and after["samples"] > 0  # positions agreeing, not images
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    session = ort.InferenceSession(str(result.artifacts["onnx"]), providers=["CPUExecutionProvider"])
    (output,) = session.get_outputs()
    assert output.shape == [1, 4, 32, 32]  # the classes kept, at the input's resolution
