"""timm architectures: built without weights, nothing downloaded, only size arguments accepted,
and pruned, exported and checked like the others."""

from __future__ import annotations

import copy

import pytest
import torch

from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.spec import PruneSpec
from secateurs.errors import InvalidRequest

pytest.importorskip("timm", reason="timm is the optional 'timm' extra (make test installs it)")


@pytest.mark.parametrize("kwargs, refused", [
    ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),  # timm would torch.load a path the request chose
    ({"pretrained": True}, "pretrained"),  # would download
    ({"pretrained_cfg_overlay": {"url": "http://example.invalid/w.pth"}}, "pretrained_cfg_overlay"),
])
def test_timm_arguments_that_load_or_download_are_refused_before_anything_is_built(kwargs, refused):
    with pytest.raises(InvalidRequest) as exc:
        build_architecture("timm:resnet18", kwargs)
    assert refused in str(exc.value) and exc.value.field == "model.arch_kwargs"


def test_an_unknown_timm_name_is_refused():
    with pytest.raises(InvalidRequest, match="timm has no model named 'no_such_net'"):
        build_architecture("timm:no_such_net")


@pytest.mark.parametrize("arch, kwargs, size", [
    ("timm:resnet10t", {}, 32),
    ("timm:mobilenetv3_small_050", {}, 32),
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32),
])
def test_a_timm_model_prunes_exports_and_keeps_parity(tmp_path, arch, kwargs, size):
    torch.manual_seed(0)
    model = build_architecture(arch, dict(kwargs, num_classes=10)).eval()
    x = torch.randn(1, 3, size, size)
    groups = describe_groups(prepare(copy.deepcopy(model), x), x)  # analysis converts attention in place
    assert any(g.prunable for g in groups)
    pruned = prune(model, x, PruneSpec(ratio=0.3)).model
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    export_onnx(pruned, x, tmp_path / "m.onnx")
    assert check_parity(pruned, tmp_path / "m.onnx", tuple(x.shape)).passed


def test_a_group_through_a_channels_first_layernorm_is_masked_on_its_channel_axis():
    from secateurs.engine.search.sensitivity import masked

    torch.manual_seed(0)
    model = build_architecture("timm:convnext_atto", {"num_classes": 10}).eval()
    x = torch.randn(2, 3, 32, 32)
    ctx = prepare(model, x)
    info = next(g for g in describe_groups(ctx, x) if g.prunable and any(".norm" in layer for layer in g.layers))
    with torch.no_grad():
        before = model(x)
        with masked(ctx, info.name, info, keep=info.channels // 2):  # timm's LayerNorm2d: channels at dim 1
            after = model(x)
    assert after.shape == before.shape and not torch.allclose(after, before)
