"""The search's channel masks map a group's dropped root channels onto its other layers from the
group traced once over all channels. They must zero exactly what tracing the group for those
channels gives (what the pruner removes), through concatenations and reshapes too."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.search.sensitivity import _dropped_indices


def _traced(ctx, root: str, drop: set[int]) -> dict[int, set[int]]:
    module = ctx.model.get_submodule(root)
    handler = ctx.graph.get_pruner_of_module(module).prune_out_channels
    out: dict[int, set[int]] = {}
    for dep, idxs in ctx.graph.get_pruning_group(module, handler, sorted(drop)):
        if isinstance(dep.target.module, nn.Module) and ctx.graph.is_out_channel_pruning_fn(dep.handler) and idxs:
            out.setdefault(id(dep.target.module), set()).update(int(i) for i in idxs)
    return out


def _mapped(ctx, root: str, channels: int, drop: set[int]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for target, handler, idxs in _dropped_indices(ctx, root, ctx.full_group(root, channels), drop):
        if isinstance(target, nn.Module) and ctx.graph.is_out_channel_pruning_fn(handler) and idxs:
            out.setdefault(id(target), set()).update(idxs)
    return out


@pytest.mark.parametrize("arch, kwargs, size", [
    ("torchvision:squeezenet1_1", {"num_classes": 10}, 64),  # Fire modules concatenate two branches
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "num_classes": 10}, 32),  # reshapes into heads
])
def test_masks_from_the_full_group_match_the_traced_group(arch, kwargs, size):
    model = build_architecture(arch, kwargs).eval()
    example = torch.randn(1, 3, size, size)
    ctx = prepare(copy.deepcopy(model), example)
    groups = [g for g in describe_groups(ctx, example) if g.prunable and g.unit == "channels" and g.step == 1]
    assert len(groups) >= 4
    rng = random.Random(0)
    for info in groups:
        drop = set(rng.sample(range(info.channels), rng.randrange(1, info.channels)))
        for root in info.roots:
            mapped = _mapped(ctx, root, info.channels, drop)
            assert mapped == _traced(ctx, root, drop), root
            assert mapped[id(ctx.model.get_submodule(root))] == drop
