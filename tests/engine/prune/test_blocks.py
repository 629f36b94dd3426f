"""Removable blocks, found from the graph: residual blocks that keep their input's shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secateurs.engine.prune.attention import convert_attention
from secateurs.engine.prune.blocks import bypassed, drop_blocks, find_blocks
from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.intake.models import build_architecture

CASES = [
    ("zoo:resnet56", (1, 3, 32, 32), 25, "layer1.0", ["layer2.0", "layer3.0"]),  # 27 blocks, 2 downsample
    ("torchvision:resnet18", (1, 3, 64, 64), 5, "layer1.0", ["layer2.0", "layer3.0", "layer4.0"]),
    ("torchvision:mobilenet_v2", (1, 3, 64, 64), 10, "features.3", ["features.2", "features.4", "features.1"]),
    ("torchvision:vit_b_16", (1, 3, 224, 224), 12, "encoder.layers.encoder_layer_0", ["encoder"]),
]


@pytest.mark.parametrize(("arch", "shape", "count", "first", "not_found"), CASES, ids=[c[0] for c in CASES])
def test_removable_blocks_are_the_residual_blocks_that_keep_their_shape(arch, shape, count, first, not_found):
    torch.manual_seed(0)
    model = build_architecture(arch).eval()
    convert_attention(model)
    blocks = find_blocks(model, torch.randn(shape))
    names = [b.name for b in blocks]
    assert len(blocks) == count and names[0] == first
    assert not set(not_found) & set(names)  # stride, width changes; the ViT encoder adds a constant
    assert all(b.params > 0 for b in blocks)


def test_no_blocks_where_shapes_change_or_nothing_is_added_back():
    model = build_architecture("torchvision:vgg11").eval()
    assert find_blocks(model, torch.randn(1, 3, 64, 64)) == []
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert find_blocks(plain, torch.randn(1, 3, 16, 16)) == []  # same shape, but no skip connection


def test_a_dropped_block_exports_with_parity_and_equals_the_bypassed_model(tmp_path):
    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    names = [b.name for b in find_blocks(model, x)][1::3]
    dropped = drop_blocks(model, names)
    with torch.no_grad(), bypassed(model, names):
        bypass_out = model(x)
    with torch.no_grad():
        assert torch.allclose(dropped(x), bypass_out, atol=1e-6)
        assert not torch.allclose(model(x), bypass_out, atol=1e-3)  # the blocks did something
    assert sum(p.numel() for p in dropped.parameters()) < sum(p.numel() for p in model.parameters())
    export_onnx(dropped, x[:1], tmp_path / "dropped.onnx")
    parity = check_parity(dropped, tmp_path / "dropped.onnx", (1, 3, 32, 32))
    assert parity.passed, parity


def test_block_importance_is_the_quality_of_the_model_without_that_block(tmp_path):
    from secateurs.engine.search.sensitivity import block_importance
    from secateurs.engine.latency.cache import MeasurementCache
    from secateurs.engine.search.sensitivity import Calibration, measure_quality, recalibrated, reference_outputs

    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20", {"width": 8}).eval()
    g = torch.Generator().manual_seed(1)
    calib = Calibration(inputs=[torch.randn(16, 3, 32, 32, generator=g)],
                        labels=[torch.randint(0, 10, (16,), generator=g)], real=True,
                        recalibration=[torch.randn(16, 3, 32, 32, generator=g)])
    blocks = find_blocks(model, torch.randn(1, 3, 32, 32))
    cache = MeasurementCache(tmp_path / "m.sqlite")
    importance = block_importance(model, blocks, calib, cache=cache, model_id="m")
    assert list(importance) == [b.name for b in blocks] and cache.misses == len(blocks)
    last = blocks[-1].name
    dropped = drop_blocks(model, [last])
    with recalibrated(dropped, calib.recalibration):
        expected = measure_quality(dropped, calib, reference_outputs(model, calib))
    assert importance[last].loss == pytest.approx(expected.loss, abs=1e-5)
    again = block_importance(model, blocks, calib, cache=cache, model_id="m")  # from the cache
    assert cache.hits == len(blocks) and again[last].loss == pytest.approx(importance[last].loss)
    cache.close()


def test_prune_drops_blocks_after_the_channels_and_the_plan_replays(tmp_path):
    from secateurs.engine.prune.apply import Plan, apply_plan, prune
    from secateurs.engine.spec import PruneSpec
    from secateurs.errors import InvalidRequest

    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune(model, x[:1], PruneSpec(group_ratios={"layer2.1.conv1": 0.5, "conv1": 0.25},
                                           drop_blocks=("layer1.1", "layer3.2")))
    pruned = result.model
    assert result.plan.dropped == ["layer1.1", "layer3.2"]
    assert not any(True for _ in pruned.get_submodule("layer1.1").parameters())
    assert pruned.get_submodule("layer2.1.conv1").out_channels == 16  # of 32
    export_onnx(pruned, x[:1], tmp_path / "m.onnx")
    assert check_parity(pruned, tmp_path / "m.onnx", (1, 3, 32, 32)).passed
    replayed = apply_plan(build_architecture("zoo:resnet20").eval(),
                          x[:1], Plan.from_json(result.plan.to_json()))
    replayed.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(replayed(x), pruned(x), atol=1e-5)
    with pytest.raises(InvalidRequest, match=r"cannot be dropped: layer2\.0"):  # it changes the stride
        prune(model, x[:1], PruneSpec(ratio=0.0, drop_blocks=("layer2.0",)))


def test_progressive_recovery_drops_the_blocks_at_its_first_step():
    from secateurs.engine.recover.progressive import progressive
    from secateurs.engine.spec import PruneSpec
    from secateurs.engine.spec import RecoverySpec

    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20", {"width": 8}).eval()
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    result = progressive(model, torch.randn(1, 3, 32, 32), {"layer3.1.conv1": 0.5}, loader,
                         RecoverySpec(epochs=2, progressive_steps=2, batch_size=8),
                         prune_spec=PruneSpec(ratio=0.0, round_to=1, min_channels=1, drop_blocks=("layer2.2",)))
    assert result.plan.dropped == ["layer2.2"]
    assert not any(True for _ in result.model.get_submodule("layer2.2").parameters())
    assert result.model.get_submodule("layer3.1.conv1").out_channels == 16  # of 32: both steps ran
