"""Grouped convolutions (ResNeXt, RegNet) and depthwise ones with a channel multiplier: widths
that respect the groups in the plan, the surgery and the latency model, and budgets met end to end."""

from __future__ import annotations

import copy

import onnxruntime as ort
import pytest
import torch
from torch import nn

from secateurs.engine.budget import Budget
from secateurs.engine.export import export_onnx
from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.latency.layers import LayerShape, collect_layers, layer_onnx, width_grid
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.search.run import search
from secateurs.engine.spec import ProtocolSpec, SearchSpec
from secateurs.engine.search.sensitivity import Calibration
from secateurs.engine.size import count_macs

FAST = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=20, min_samples=60, max_seconds=2.0)
BRIEF = ProtocolSpec(warmup_runs=2, warmup_seconds=0.0, window=10, min_samples=10, max_seconds=0.2)  # counts decide
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class ChannelMultiplier(nn.Module):
    """A depthwise convolution that doubles its channels (groups == in_channels < out_channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, groups=32), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.dw(self.stem(x))).mean((2, 3)))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"regnet_x_400mf": build_architecture("torchvision:regnet_x_400mf").eval(),
            "resnext50_32x4d": build_architecture("torchvision:resnext50_32x4d").eval(),
            "channel_multiplier": ChannelMultiplier().eval()}


MODELS = _models()


def _small_families() -> dict[str, nn.Module]:
    """The same families, fewer blocks (torchvision's own classes): latency budgets at test cost."""
    from torchvision.models.regnet import BlockParams, RegNet
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    return {"regnet_x (depth 6)": RegNet(BlockParams.from_init_params(depth=6, w_0=24, w_a=24.48, w_m=2.54,
                                                                      group_width=8)).eval(),
            "resnext (1 block a stage, 8x8d)": ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=8).eval(),
            "channel_multiplier": MODELS["channel_multiplier"]}


SMALL = _small_families()


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_widths_are_whole_groups_and_what_was_planned(name: str) -> None:
    model = MODELS[name]
    groups = describe_groups(prepare(copy.deepcopy(model), X), X)
    assert any(g.step > 1 for g in groups)  # the family's grouped widths are known
    result = prune(model, X, PruneSpec(ratio=0.4))
    assert all(g["planned"] == g["after"] for g in result.plan.groups)  # the search's widths are the model's
    assert sum(g["after"] < g["before"] for g in result.plan.groups) > 0
    for layer in collect_layers(result.model, X).values():
        assert layer.cin % layer.groups == 0 and layer.cout % layer.groups == 0
    result.model(X)


def test_a_multipliers_input_is_held_and_its_multiplier_is_pruned() -> None:
    groups = {g.name: g for g in describe_groups(prepare(copy.deepcopy(MODELS["channel_multiplier"]), X), X)}
    assert not groups["stem.0"].prunable and "channel multiplier" in groups["stem.0"].reason
    assert groups["dw.0"].prunable and groups["dw.0"].step == 32


def test_the_latency_model_measures_grouped_layers_at_valid_widths() -> None:
    shape = LayerShape(kind="conv", cin=400, cout=400, input_shape=(1, 400, 7, 7), kernel=(3, 3), padding=(1, 1),
                       groups=25)
    grid = width_grid(400, round_to=8, step=25)
    assert grid[-1] == 400 and all(w % 25 == 0 for w in grid) and len(grid) > 3
    for w in grid:
        session = ort.InferenceSession(layer_onnx(shape.resized(w, 400)), providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": torch.randn(1, w, 7, 7).numpy()})[0].shape == (1, 400, 7, 7)


def _budget_search(name: str, budget: Budget, tmp_path, example: torch.Tensor = X, **spec) -> object:
    model = SMALL[name]
    assert any(g.step > 1 for g in describe_groups(prepare(copy.deepcopy(model), X), X))
    export_onnx(model, example, tmp_path / "baseline.onnx")
    calib = Calibration(inputs=[torch.randn((4, *example.shape[1:]), generator=torch.Generator().manual_seed(1))])
    result = search(model, example, tmp_path / "baseline.onnx",
                    SearchSpec(budget=budget, cache_dir=tmp_path, arch="test:" + name, refine_evaluations=8,
                               depth="off", **({"protocol": FAST} | spec)), calib)
    layers = collect_layers(result.model, example)
    assert all(s.cin % s.groups == 0 and s.cout % s.groups == 0 for s in layers.values())
    return result


@pytest.mark.parametrize("name", ["regnet_x (depth 6)", "channel_multiplier"])  # ResNeXt: the latency test
def test_a_macs_budget_on_a_grouped_family_is_met(name: str, tmp_path) -> None:
    # counted, not timed: the plan, the pruned model's widths and its count agree for every family
    macs = count_macs(SMALL[name], X)
    result = _budget_search(name, Budget(macs=int(macs * 0.6)), tmp_path, max_rounds=2, tighten_rounds=0,
                            protocol=BRIEF)
    assert result.budget_met, result.reason
    assert count_macs(result.model, X) <= macs * 0.6 and any(g["chosen"] < g["channels"] for g in result.groups)


@pytest.mark.measures
def test_a_latency_budget_on_a_grouped_family_is_met(tmp_path) -> None:
    # the ResNeXt member: enough work per operator that its latency follows its widths (the RegNet member
    # at 32x32 runs in 0.1 ms, mostly per-operator overhead). Aimed 15% inside the budget: what is tested
    # is the grouped path end to end on a shared machine; how close a search lands is benchmarks/search.py's.
    # At batch 8 and 64x64: at batch 1 its fixed per-operator cost let a fresh clone's run miss by 13%
    # (2026-12-02), and at 32x32 its decisive figures missed by up to 8.4% in one fresh-clone run of four
    # (2026-12-04): four times the work per operator is what makes the decisive figure follow the widths.
    result = _budget_search("resnext (1 block a stage, 8x8d)", Budget(speedup=1.25), tmp_path, max_rounds=5,
                            aim=0.85, example=torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert result.budget_met, result.reason
    assert result.final.speedup >= 1.25
