"""Structures the dependency tracer cannot follow: refused in seconds with the modules named
(channel shuffle), or pruned where it can follow them (Swin's MLP widths), and any other
tracer failure described by its operation and the layers around it."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch_pruning as tp
import torchvision

from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.prune.support import (
    WINDOW_HOLD_REASON, describe_tracer_failure, find_channel_shuffles,
)
from secateurs.engine.spec import PruneSpec
from secateurs.errors import UnsupportedModel


def test_shufflenet_is_refused_in_seconds_naming_the_channel_shuffle():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    start = time.perf_counter()
    with pytest.raises(UnsupportedModel) as err:
        prepare(model, x)
    assert time.perf_counter() - start < 10  # before the tracer runs, not after it fails deep inside
    message = str(err.value)
    assert message.startswith("channel shuffle in stage2.0, stage2.1")
    assert "transpose(1, 2)" in message and "no width of this model can be pruned" in message


def test_a_model_without_a_shuffle_has_none_found():
    x = torch.randn(1, 3, 32, 32)
    assert find_channel_shuffles(torchvision.models.resnet18(num_classes=10).eval(), x) == []
    assert len(find_channel_shuffles(torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval(), x)) == 16


def test_a_failure_inside_the_tracer_names_the_operation_and_the_layers_around_it():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(ZeroDivisionError) as err:  # the tracer itself, without our refusal in front of it
        tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    where = describe_tracer_failure(err.value)
    assert where.startswith("while mapping channels through ViewBackward0 after ")
    before, after = where.removeprefix("while mapping channels through ViewBackward0 after ").split(" and before ")
    names = dict(model.named_modules())
    assert before in names and after in names  # real layers of the model, on either side of the shuffle


def test_an_exception_from_elsewhere_describes_nothing():
    assert describe_tracer_failure(ValueError("not from the tracer")) == ""


@pytest.mark.parametrize("arch, kwargs", [
    ("torchvision:swin_t", {}),
    ("timm:swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 4, "embed_dim": 32,
                                           "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 4)}),
])
def test_swin_prunes_its_mlp_widths_and_holds_the_rest_with_the_reason(tmp_path, arch, kwargs):
    if arch.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is the optional 'timm' extra (make test installs it)")
    torch.manual_seed(0)
    model = build_architecture(arch, dict(kwargs, num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    groups = describe_groups(prepare(copy.deepcopy(model), x), x)
    prunable = [g for g in groups if g.prunable]
    assert prunable and all(".mlp." in g.name for g in prunable)
    held = [g for g in groups if not g.prunable]
    assert any(g.reason == WINDOW_HOLD_REASON and "attn" in g.name for g in held)
    if arch.startswith("torchvision:"):  # 28 M parameters: its whole job is in RESULTS "Beyond timm"
        return
    pruned = prune(model, x, PruneSpec(ratio=0.5)).model
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    export_onnx(pruned, x, tmp_path / "m.onnx")
    assert check_parity(pruned, tmp_path / "m.onnx", tuple(x.shape)).passed
