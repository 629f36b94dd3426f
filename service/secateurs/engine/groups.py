"""Prunable groups from Torch-Pruning's dependency graph (DepGraph).

A group is the set of coupled channels removed together: a conv's output channels,
its BatchNorm, the next layer's input channels, and everything tied to them by a
residual add or a concatenation. We never write graph surgery ourselves; this module
only builds the graph, names the groups and describes them (channels, share of MACs,
prunable or not and why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch_pruning as tp
from torch import nn

from secateurs.engine.attention import convert_attention
from secateurs.engine.size import forward_with_hooks, layer_macs
from secateurs.errors import UnsupportedModel


@dataclass(frozen=True, kw_only=True)
class GroupInfo:
    """One prunable group. `name` is its root layer; `channels` counts heads for attention groups."""

    name: str
    channels: int
    unit: str  # "channels" | "heads"
    layers: tuple[str, ...]
    macs_share: float
    prunable: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "channels": self.channels, "unit": self.unit, "layers": list(self.layers),
            "macs_share": round(self.macs_share, 6), "prunable": self.prunable, "reason": self.reason,
        }


@dataclass
class GraphContext:
    """A model prepared for pruning: attention converted, graph built, classifier found."""

    model: nn.Module
    pruner: tp.pruner.BasePruner
    heads: dict[nn.Module, int]  # qkv Linear -> number of heads
    classifier: str

    @property
    def graph(self) -> tp.DependencyGraph:
        return self.pruner.DG

    def name_of(self, module: nn.Module) -> str:
        return self.graph._module2name[module]

    def iter_groups(self) -> Iterator[tuple[str, Any]]:
        """(root layer name, Torch-Pruning group) for every group outside the ignored layers."""
        seen: set[str] = set()
        for group in self.graph.get_all_groups(
            ignored_layers=self.pruner.ignored_layers, root_module_types=self.pruner.root_module_types
        ):
            name = self.name_of(group[0].dep.target.module)
            if name not in seen:
                seen.add(name)
                yield name, group


def find_classifier(model: nn.Module, example: torch.Tensor) -> str:
    """The last Conv/Linear to run: its outputs are the model's outputs and are never pruned."""
    order: list[str] = []
    forward_with_hooks(model, example, [
        module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Conv1d, nn.Linear))
    ])
    if not order:
        raise UnsupportedModel("the model has no Conv or Linear layer: nothing to prune")
    return order[-1]


def prepare(model: nn.Module, example: torch.Tensor, *, importance: Any = None,
            ratios: dict[nn.Module, float] | None = None) -> GraphContext:
    """Convert attention to a head-prunable form (in place) and build the dependency graph.

    `ratios` maps width-group root layers to the ratio the pruner applies (analysis
    passes none). Heads are removed separately (prune.remove_heads) because the
    pruner's own head logic mixes head and width removal. Raises UnsupportedModel
    when the graph cannot be built.
    """
    model.eval()
    heads_by_name = convert_attention(model)
    heads = {model.get_submodule(name): n for name, n in heads_by_name.items()}
    classifier = find_classifier(model, example)
    try:
        pruner = tp.pruner.BasePruner(
            model, example,
            importance=importance or tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios or {},
            ignored_layers=[model.get_submodule(classifier)],
        )
    except Exception as exc:  # Torch-Pruning raises many kinds; the user needs one clear message
        raise UnsupportedModel(
            f"cannot build the dependency graph of this model: {type(exc).__name__}: {exc}"
        ) from exc
    return GraphContext(model=model, pruner=pruner, heads=heads, classifier=classifier)


def describe_groups(ctx: GraphContext, example: torch.Tensor, *, min_channels: int = 8) -> list[GroupInfo]:
    """Every group with its layers, size, share of MACs and whether it may be pruned."""
    macs = layer_macs(ctx.model, example)
    total = sum(macs.values()) or 1
    infos: list[GroupInfo] = []
    for name, group in ctx.iter_groups():
        layers = []
        for dep, _ in group:
            layer = ctx.name_of(dep.target.module) if dep.target.module in ctx.graph._module2name else str(dep.target)
            if layer not in layers:
                layers.append(layer)
        share = sum(macs.get(layer, 0) for layer in layers) / total
        root = group[0].dep.target.module
        if root in ctx.heads:
            n = ctx.heads[root]
            infos.append(GroupInfo(name=name, channels=n, unit="heads", layers=tuple(layers),
                                   macs_share=share, prunable=n > 1, reason="" if n > 1 else "a single head"))
            continue
        channels = ctx.graph.get_out_channels(group[0].dep.target.module)
        prunable, reason = True, ""
        if channels is None:
            prunable, reason = False, "channel count unknown to the dependency graph"
        elif channels <= min_channels:
            prunable, reason = False, f"{channels} channels, at or below the floor of {min_channels}"
        infos.append(GroupInfo(name=name, channels=int(channels or 0), unit="channels", layers=tuple(layers),
                               macs_share=share, prunable=prunable, reason=reason))
    return infos
