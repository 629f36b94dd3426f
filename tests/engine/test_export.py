"""ONNX export, parity that can fail, torch.export."""

from __future__ import annotations

import onnx
import torch

from secateurs.engine.export import check_parity, export_onnx, export_pt2
from secateurs.engine.intake.models import build_architecture


def _resnet20(seed: int = 0):
    torch.manual_seed(seed)
    return build_architecture("zoo:resnet20").eval()


def test_onnx_is_valid_named_and_agrees(tmp_path):
    model = _resnet20()
    info = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert info["opset"] >= 17
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    parity = check_parity(model, tmp_path / "m.onnx", (1, 3, 32, 32))
    assert parity.passed and parity.mode == "outputs" and parity.top1_agreement == 1.0
    assert parity.relative_diff < 1e-5 and parity.reference == "float64" and parity.pytorch_diff < 1e-5


def test_parity_fails_for_a_different_model(tmp_path):
    export_onnx(_resnet20(seed=1), torch.randn(1, 3, 32, 32), tmp_path / "other.onnx")
    parity = check_parity(_resnet20(seed=0), tmp_path / "other.onnx", (1, 3, 32, 32))
    assert not parity.passed and parity.relative_diff > 1e-2


def _cancelling(seed: int) -> torch.nn.Module:
    """Hidden units near 1e4 whose differences are the output: float32 rounds such a model at 1e-3."""
    g = torch.Generator().manual_seed(seed)
    first, second = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)
    with torch.no_grad():
        first.weight.copy_(torch.randn(1, 64, generator=g) * 1e5 / 8 + torch.randn(256, 64, generator=g))
        w = torch.randn(10, 256, generator=g)
        second.weight.copy_(w - w.mean(1, keepdim=True))
        first.bias.zero_(), second.bias.zero_()
    return torch.nn.Sequential(first, second).eval()


def test_parity_is_measured_from_the_exact_result_so_rounding_is_not_blamed_on_the_export(tmp_path):
    # Compared with PyTorch's float32 alone, ONNX Runtime's different rounding of such a model read as
    # a difference past the tolerance (a pruned LR-ASPP whose recalibrated activations ran to thousands
    # failed its job so). Both are measured from the model in float64 instead.
    model = _cancelling(4)
    export_onnx(model, torch.randn(1, 64), tmp_path / "m.onnx")
    parity = check_parity(model, tmp_path / "m.onnx", (1, 64))
    assert parity.reference == "float64" and parity.pytorch_diff > parity.tolerance  # PyTorch's own rounding
    assert parity.passed and parity.relative_diff <= 4 * parity.pytorch_diff
    # and a file of other weights still fails
    other = check_parity(_cancelling(5), tmp_path / "m.onnx", (1, 64))
    assert not other.passed and other.relative_diff > 0.5


def test_dynamic_batch(tmp_path):
    model = _resnet20()
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "d.onnx", dynamic_batch=True)
    assert check_parity(model, tmp_path / "d.onnx", (3, 3, 32, 32)).passed


def test_constant_outputs_get_a_meaningful_check(tmp_path):
    # A randomly built torchvision ViT has a zero head: every output is 0, any graph would "agree".
    # (torchvision's own class at two layers: vit_b_16's twelve made this test 25 s for the same point)
    from torchvision.models import VisionTransformer

    def small_vit() -> torch.nn.Module:
        return VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64,
                                 mlp_dim=128, num_classes=10).eval()

    torch.manual_seed(0)
    vit = small_vit()
    export_onnx(vit, torch.randn(1, 3, 32, 32), tmp_path / "vit.onnx")
    parity = check_parity(vit, tmp_path / "vit.onnx", (1, 3, 32, 32))
    assert parity.mode == "perturbed-classifier" and parity.passed and parity.output_scale > 0
    # and it still detects a wrong graph: the encoder of another seed
    torch.manual_seed(1)
    other = small_vit()
    assert not check_parity(other, tmp_path / "vit.onnx", (1, 3, 32, 32)).passed


def test_torch_export_roundtrip(tmp_path):
    model = _resnet20()
    x = torch.randn(1, 3, 32, 32)
    export_pt2(model, x, tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_an_export_cache_returns_the_same_models_file_and_never_another_models(tmp_path, monkeypatch):
    import secateurs.engine.export as export

    cache, x = tmp_path / "cache", torch.randn(1, 3, 32, 32)
    model = _resnet20()
    first = export_onnx(model, x, tmp_path / "a.onnx", cache_dir=cache)
    kept = list((cache / "exports").glob("*.onnx"))
    assert len(kept) == 1 and kept[0].read_bytes() == (tmp_path / "a.onnx").read_bytes()

    exported = []
    real = export._export
    monkeypatch.setattr(export, "_export", lambda *a: (exported.append(a), real(*a)))
    again = export_onnx(_resnet20(), x, tmp_path / "b.onnx", cache_dir=cache)  # the same model, built again
    assert not exported and again == first
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()

    changed = _resnet20()
    with torch.no_grad():
        changed.fc.weight[0, 0] += 1.0  # one weight: another model, another file
    export_onnx(changed, x, tmp_path / "c.onnx", cache_dir=cache)
    assert len(exported) == 1 and len(list((cache / "exports").glob("*.onnx"))) == 2
    assert check_parity(changed, tmp_path / "c.onnx", (1, 3, 32, 32)).passed
    assert not check_parity(changed, tmp_path / "a.onnx", (1, 3, 32, 32)).passed

    export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "d.onnx", cache_dir=cache)  # another input shape
    assert len(exported) == 2


def test_the_export_cache_keeps_at_most_its_bytes(tmp_path, monkeypatch):
    import secateurs.engine.export as export

    cache, x = tmp_path / "cache", torch.randn(1, 3, 32, 32)
    for seed in range(3):
        export_onnx(_resnet20(seed), x, tmp_path / f"{seed}.onnx", cache_dir=cache, exporters=("torchscript",))
    one = (tmp_path / "0.onnx").stat().st_size
    monkeypatch.setattr(export, "EXPORT_CACHE_BYTES", int(one * 2.5))
    export_onnx(_resnet20(3), x, tmp_path / "3.onnx", cache_dir=cache, exporters=("torchscript",))
    kept = sorted((cache / "exports").glob("*.onnx"))
    assert len(kept) == 2 and len(list((cache / "exports").glob("*.json"))) == 2
    assert (tmp_path / "3.onnx").read_bytes() in {k.read_bytes() for k in kept}  # the newest stays


def test_the_exporters_registry_is_built_once_and_each_export_gets_its_own_copy(tmp_path):
    from torch.onnx._internal.exporter import _registration

    from secateurs.engine.export import reuse_torchlib_registry

    reuse_torchlib_registry()
    first, second = _registration.ONNXRegistry.from_torchlib(), _registration.ONNXRegistry.from_torchlib()
    assert first is not second and first.functions.keys() == second.functions.keys() and first.functions
    target = next(iter(first.functions))
    first.functions[target].append("custom")  # what an export given custom functions does to its copy
    assert "custom" not in second.functions[target] and "custom" not in _registration.ONNXRegistry.from_torchlib().functions[target]
    # exports through the reused registry leave it as they found it: the same model writes the same file
    model = _resnet20()
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "a.onnx")
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert check_parity(model, tmp_path / "b.onnx", (1, 3, 32, 32)).passed
