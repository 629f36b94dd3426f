"""Whole jobs on families beyond the CNNs the engine grew up on, at small inputs: a speedup
budget, the search, pruning, export with parity and a report that validates."""

from __future__ import annotations

import pytest

from secateurs.engine.budget import Budget
from secateurs.engine.pipeline import compress
from secateurs.engine.report.schema import validate_report
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no budget asserted
SMALL_SWIN = {"img_size": 32, "window_size": 4, "embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 4),
              "num_classes": 10}


# CNN families of timm prune, export and keep parity in tests/engine/intake/test_timm.py; whole jobs on
# twelve families are benchmarks/timm_reach.py (RESULTS "timm families").
@pytest.mark.parametrize("arch, kwargs, size", [
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "depth": 4}, 32),
])
def test_a_timm_speedup_job_prunes_exports_with_parity_and_reports(tmp_path, arch, kwargs, size):
    pytest.importorskip("timm", reason="timm is the optional 'timm' extra (make test installs it)")
    spec = CompressSpec(model=ModelSpec(arch=arch, arch_kwargs={**kwargs, "num_classes": 10}),
                        input_shape=(1, 3, size, size), out_dir=tmp_path, protocol=QUICK, calibration_samples=32,
                        cache_dir=tmp_path / "cache", budget=Budget(speedup=1.2), exports=("onnx",))
    report = compress(spec).report
    validate_report(report)
    assert report["parity"]["passed"]
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    # The speedup is measured while the other test worker computes: the report carries it, the test does not
    # assert it (benchmarks/timm_reach.py measures these families alone).
    if "vit" in arch:
        assert any(g["unit"] == "heads" for g in report["pruning"]["groups"])  # heads are a dimension of the search


def test_a_swin_speedup_job_prunes_mlp_widths_or_blocks_and_reports(tmp_path):
    pytest.importorskip("timm", reason="timm is the optional 'timm' extra (make test installs it)")
    spec = CompressSpec(model=ModelSpec(arch="timm:swin_tiny_patch4_window7_224", arch_kwargs=SMALL_SWIN),
                        input_shape=(1, 3, 32, 32), out_dir=tmp_path, protocol=QUICK, calibration_samples=32,
                        cache_dir=tmp_path / "cache", budget=Budget(speedup=1.2), exports=("onnx",))
    report = compress(spec).report
    validate_report(report)
    assert report["parity"]["passed"]
    groups = report["pruning"]["groups"]
    cut = [g for g in groups if g["after"] < g["before"]]
    assert all(".mlp.fc1" in g["name"] for g in cut)  # the residual width and the heads are held
    assert any(".attn.qkv" in g["name"] for g in groups)  # listed, whole
    assert cut or report["pruning"]["dropped_blocks"]  # something was taken out, by width or by depth
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]

