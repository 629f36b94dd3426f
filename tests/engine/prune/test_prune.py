"""Groups and structural pruning on real architectures at small input sizes."""

from __future__ import annotations

import copy

import pytest
import torch

from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import Plan, apply_plan, kept_count, prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.size import count_macs, count_params
from secateurs.errors import InvalidRequest

# Four architectures covering residual adds, depthwise convs, concatenations and attention heads.
CASES = [
    ("torchvision:resnet18", {"num_classes": 10}, (1, 3, 64, 64)),
    ("torchvision:mobilenet_v2", {"num_classes": 10}, (1, 3, 64, 64)),
    ("torchvision:densenet121", {"num_classes": 10}, (1, 3, 64, 64)),
    ("torchvision:vit_b_16", {"num_classes": 10, "image_size": 32}, (1, 3, 32, 32)),
    ("zoo:resnet56", {}, (1, 3, 32, 32)),
]


def _model(arch, kwargs):
    torch.manual_seed(0)
    model = build_architecture(arch, kwargs).eval()
    for m in model.modules():  # give BatchNorm non-trivial statistics so importance differs per channel
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("channels,ratio,expected", [
    (64, 0.4, 40), (64, 0.0, 64), (16, 0.5, 8), (16, 0.9, 8), (8, 0.5, 8), (100, 0.5, 48), (1000, 0.99, 8),
])
def test_kept_count_rounds_to_multiples_above_the_floor(channels, ratio, expected):
    assert kept_count(channels, ratio, round_to=8, min_channels=8) == expected


@pytest.mark.parametrize("arch,kwargs,shape", CASES, ids=[c[0] for c in CASES])
def test_prune_shrinks_runs_and_replays(arch, kwargs, shape):
    model = _model(arch, kwargs)
    x = torch.randn(shape)
    result = prune(model, x, PruneSpec(ratio=0.4))
    out = result.model(x)
    assert out.shape == model(x).shape
    assert count_params(result.model) < 0.75 * count_params(model)
    assert count_macs(result.model, x) < count_macs(model, x)
    for g in result.plan.groups:
        if g["unit"] == "channels" and g["after"] < g["before"]:
            assert g["after"] % 8 == 0 and g["after"] >= 8
    # The plan, through JSON, replays on a freshly built original with the same weights.
    replayed = apply_plan(copy.deepcopy(model), x, Plan.from_json(result.plan.to_json()))
    assert torch.allclose(replayed(x), out, atol=1e-6)
    # Deterministic: pruning twice gives the same plan.
    assert prune(model, x, PruneSpec(ratio=0.4)).plan.history == result.plan.history
    # The original is untouched.
    assert count_params(model) == count_params(_model(arch, kwargs))


def test_classifier_output_is_never_pruned():
    model = _model("zoo:resnet20", {})
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, PruneSpec(ratio=0.9))
    assert result.model.fc.out_features == 10


def test_vit_heads_are_pruned():
    arch, kwargs, shape = CASES[3]
    model = _model(arch, kwargs)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(shape)
    groups = describe_groups(prepare(copy.deepcopy(model), x), x)
    head_groups = [g for g in groups if g.unit == "heads"]
    assert len(head_groups) == 12 and all(g.channels == 12 for g in head_groups)
    result = prune(model, x, PruneSpec(group_ratios={head_groups[0].name: 0.5}))
    assert result.plan.heads[head_groups[0].name] == 6
    attention = result.model.get_submodule(head_groups[0].name.rsplit(".", 1)[0])
    assert attention.qkv.out_features == 3 * 6 * 64 and attention.proj.in_features == 6 * 64


def test_groups_describe_residual_coupling():
    model = _model("zoo:resnet20", {})
    x = torch.randn(1, 3, 32, 32)
    groups = describe_groups(prepare(copy.deepcopy(model), x), x)
    # Stem + 9 inner block convs + one residual stream per stage (two of which start at a downsample).
    assert len(groups) == 12
    stem = next(g for g in groups if g.name == "conv1")
    assert "layer1.2.conv2" in stem.layers and "bn1" in stem.layers  # tied by the residual adds
    assert all(0 < g.macs_share <= 1 for g in groups)


@pytest.mark.parametrize("spec,message,field", [
    (PruneSpec(ratio=1.0), "ratio must be in [0, 1), got 1.0", "ratio"),
    (PruneSpec(ratio=-0.1), "ratio must be in [0, 1), got -0.1", "ratio"),
    (PruneSpec(), "give exactly one of a uniform ratio or per-group ratios", "ratio"),
    (PruneSpec(group_ratios={"conv1": 1.5}), "group_ratios[conv1] must be in [0, 1), got 1.5", "group_ratios[conv1]"),
    (PruneSpec(group_ratios={"nope": 0.5}), "group_ratios names 1 unknown group(s): nope; `secateurs inspect` "
                                            "lists the groups", "group_ratios"),
    (PruneSpec(ratio=0.5, importance="random"), "importance 'random' is not one of l1, l2, bn_scale, taylor",
     "importance"),
])
def test_bad_prune_specs(spec, message, field):
    with pytest.raises(InvalidRequest) as err:
        prune(_model("zoo:resnet20", {}), torch.randn(1, 3, 32, 32), spec)
    assert str(err.value) == message and err.value.field == field


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
def test_importances_choose_different_channels(importance):
    model = _model("zoo:resnet20", {})
    x = torch.randn(4, 3, 32, 32)
    result = prune(model, x, PruneSpec(ratio=0.5, importance=importance), batches=[x])
    assert result.model(x).shape == (4, 10)
    assert count_params(result.model) < count_params(model)


class HardCodedWidth(torch.nn.Module):
    """Reshapes with a width written in the code: pruning cannot know about it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 32 * 8 * 8))


def test_model_that_cannot_be_pruned_gets_a_clear_error():
    from secateurs.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel) as err:
        prune(HardCodedWidth().eval(), torch.randn(1, 3, 8, 8), PruneSpec(ratio=0.5))
    assert str(err.value).startswith("the pruned model no longer runs (RuntimeError: shape '[-1, 2048]' is invalid")


def test_a_group_norm_keeps_two_channels_a_group_so_a_one_by_one_map_still_normalises():
    # FCOS's head: GroupNorm(32, C) on every FPN level, the last at 1x1 for a small input. One channel
    # a group leaves a single value to normalise there, and the pruned model no longer runs.
    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 128, 3, stride=8, padding=1)
            self.conv = torch.nn.Conv2d(128, 128, 1)
            self.norm = torch.nn.GroupNorm(32, 128)
            self.out = torch.nn.Conv2d(128, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.norm(self.conv(torch.relu(self.stem(x))))))

    torch.manual_seed(0)
    model, x = Head().eval(), torch.randn(1, 3, 8, 8)  # a 1x1 map after the stem
    groups = {g.name: g for g in describe_groups(prepare(copy.deepcopy(model), x), x)}
    assert groups["conv"].step == 32 and groups["conv"].floor == 64
    result = prune(model, x, PruneSpec(ratio=0.9))
    assert result.model.norm.num_channels == 64 and result.model(x).shape == (1, 4, 1, 1)


def test_a_models_groups_are_analysed_once_while_its_structure_stands():
    from secateurs.engine.prune import apply

    model, x = _model("zoo:resnet20", {}), torch.randn(1, 3, 32, 32)
    spec = PruneSpec(group_ratios={"conv1": 0.5})
    first = prune(model, x, spec)
    kept = apply._ANALYSED[model]
    second = prune(model, x, spec)
    assert apply._ANALYSED[model] is kept  # the second prune used the first one's analysis
    assert first.plan.history == second.plan.history and first.groups == second.groups
    # another structure is analysed afresh: a smaller classifier, a smaller share of MACs in the last group
    model.fc = torch.nn.Linear(64, 3)
    third = prune(model, x, spec)
    assert apply._ANALYSED[model] is not kept and [g.name for g in third.groups] == [g.name for g in first.groups]
    assert third.groups != first.groups
    model.conv1 = torch.nn.Conv2d(3, 24, 3, padding=1, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(24)
    with pytest.raises(RuntimeError):
        prune(model, x, spec)  # 24 channels into layers built for 16: it no longer runs
