"""Prunable groups from Torch-Pruning's dependency graph (DepGraph).

A group is the set of coupled channels removed together: a conv's output channels,
its BatchNorm, the next layer's input channels, and everything tied to them by a
residual add or a concatenation. We never write graph surgery ourselves; this module
only builds the graph, names the groups and describes them (channels, share of MACs,
prunable or not and why).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch
import torch_pruning as tp
from torch import nn

from secateurs.engine.prune.attention import convert_attention
from secateurs.engine.prune.importance import head_norm, importance_of
from secateurs.engine.intake.detection import holds as detection_holds
from secateurs.engine.intake.hf import constraints as transformer_constraints
from secateurs.engine.prune.support import describe_tracer_failure, refuse_untraceable, window_attention_holds
from secateurs.engine.size import forward_with_hooks, layer_macs
from secateurs.errors import UnsupportedModel, machine_limit


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
    step: int = 1  # the channels come in this many equal groups (a grouped convolution's): widths are multiples
    tied: tuple[str, ...] = ()  # other groups' roots that always take this group's width (one config field)
    # The fewest channels it may keep, above the job's floor: a GroupNorm of G groups keeps 2G, as one
    # channel a group would leave a single value to normalise on a 1x1 map (FCOS's last FPN level)
    floor: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "channels": self.channels, "unit": self.unit, "layers": list(self.layers),
            "macs_share": round(self.macs_share, 6), "prunable": self.prunable, "reason": self.reason,
            "step": self.step, "tied": list(self.tied),
        }

    @property
    def roots(self) -> tuple[str, ...]:
        """Every group root this entry sets: its own, then the tied ones."""
        return (self.name, *self.tied)


@dataclass
class GraphContext:
    """A model prepared for pruning: attention converted, graph built, classifier found."""

    model: nn.Module
    pruner: tp.pruner.BasePruner
    heads: dict[nn.Module, int]  # qkv Linear -> number of heads
    classifier: str
    criterion: str = "l1"
    held: dict[str, str] = field(default_factory=dict)  # group root -> why the pruner must leave it whole
    ties: list[tuple[str, ...]] = field(default_factory=list)  # group roots that take one width together
    # A root's group over all its channels, built once: Torch-Pruning re-derives every index mapping of
    # the graph per group it builds (seconds per call on a detector's reshapes), and masks never change it
    _full_groups: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def head_norm(self) -> int:
        return head_norm(self.criterion)

    @property
    def importance(self) -> Any:
        """The criterion that ranks channels within a group (engine/prune/importance.py)."""
        return self.pruner.importance

    @property
    def graph(self) -> tp.DependencyGraph:
        return self.pruner.DG

    def name_of(self, module: nn.Module) -> str:
        return self.graph._module2name[module]

    def traced_group(self, root: str, channels: list[int]) -> Any:
        """The Torch-Pruning group that removing output `channels` of layer `root` takes with it."""
        module = self.model.get_submodule(root)
        handler = self.graph.get_pruner_of_module(module).prune_out_channels
        return self.graph.get_pruning_group(module, handler, channels)

    def full_group(self, root: str, channels: int) -> Any:
        """The group of layer `root` over all `channels` of its output, traced once."""
        if root not in self._full_groups:
            self._full_groups[root] = self.traced_group(root, list(range(channels)))
        return self._full_groups[root]

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


def prepare(model: nn.Module, example: torch.Tensor, *, criterion: str = "l1",
            ratios: dict[nn.Module, float] | None = None) -> GraphContext:
    """Convert attention to a head-prunable form (in place) and build the dependency graph.

    `criterion`: the importance that ranks channels (engine/prune/importance.py). `ratios` maps
    width-group root layers to the ratio the pruner applies (analysis passes none). Heads are removed separately (prune.remove_heads) because the
    pruner's own head logic mixes head and width removal. Raises UnsupportedModel
    when the graph cannot be built.
    """
    model.eval()
    refuse_untraceable(model, example)
    heads_by_name = convert_attention(model)
    heads = {model.get_submodule(name): n for name, n in heads_by_name.items()}
    classifier = find_classifier(model, example)
    held = window_attention_holds(model, classifier)  # before the tracer: grouping them would never end
    config_held, ties = transformer_constraints(model, classifier)
    held.update(config_held)
    held.update(detection_holds(model))
    try:
        with warnings.catch_warnings():  # its recursion-depth notice is the windows above, already handled
            warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
            pruner = tp.pruner.BasePruner(
                model, example,
                importance=importance_of(criterion),
                pruning_ratio=0.0,
                pruning_ratio_dict=ratios or {},
                ignored_layers=[model.get_submodule(name) for name in (classifier, *held)],
            )
    except Exception as exc:  # Torch-Pruning raises many kinds; the user needs one clear message
        if machine_limit(exc):
            raise
        where = describe_tracer_failure(exc)
        raise UnsupportedModel(
            f"cannot build the dependency graph of this model{' ' + where if where else ''}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    ctx = GraphContext(model=model, pruner=pruner, heads=heads, classifier=classifier, criterion=criterion,
                       held=dict(held), ties=ties)
    # Groups the pruner cannot cut (nor score) are held whole: it must never see them.
    for name, group in list(ctx.iter_groups()):
        multiplied = _feeds_channel_multiplier(ctx, group)
        if multiplied:
            ctx.held[name] = (f"feeds {multiplied}, a depthwise convolution with a channel multiplier: its input "
                              f"sets its groups (its multiplier is pruned instead)")
            pruner.ignored_layers.append(model.get_submodule(name))
    return ctx


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
        step = int(ctx.pruner._get_channel_groups(group))  # the pruner's own count of equal channel groups
        floor = max((2 * dep.target.module.num_groups for dep, _ in group
                     if isinstance(dep.target.module, nn.GroupNorm)), default=0)
        prunable, reason = True, ""
        if channels is None:
            prunable, reason = False, "channel count unknown to the dependency graph"
        elif channels <= max(min_channels, floor):
            prunable, reason = False, f"{channels} channels, at or below the floor of {max(min_channels, floor)}"
        elif channels % step:
            prunable, reason = False, f"{channels} channels do not split into {step} equal groups"
        infos.append(GroupInfo(name=name, channels=int(channels or 0), unit="channels", layers=tuple(layers),
                               macs_share=share, prunable=prunable, reason=reason, step=step if prunable else 1,
                               floor=floor))
    for name, reason in ctx.held.items():
        module = ctx.model.get_submodule(name)
        width = getattr(module, "out_channels", None) or getattr(module, "out_features", 0)  # some run functionally
        infos.append(GroupInfo(name=name, channels=int(width), unit="channels",
                               layers=(name,), macs_share=macs.get(name, 0) / total, prunable=False, reason=reason))
    return _tie(infos, ctx.ties)


def _tie(infos: list[GroupInfo], ties: list[tuple[str, ...]]) -> list[GroupInfo]:
    """One entry per tie, at its first root, covering every tied group (all prunable, all one width)."""
    by_name = {g.name: g for g in infos}
    for roots in ties:
        members = [by_name.get(r) for r in roots]
        if any(m is None or not m.prunable or m.channels != members[0].channels for m in members):
            continue  # not all free and alike: each stays its own group
        lead = members[0]
        by_name[lead.name] = replace(lead, tied=tuple(roots[1:]), macs_share=sum(m.macs_share for m in members),
                                     layers=tuple(layer for m in members for layer in m.layers))
        for follower in roots[1:]:
            del by_name[follower]
    return [by_name[g.name] for g in infos if g.name in by_name]


def _feeds_channel_multiplier(ctx: GraphContext, group: Any) -> str | None:
    """The name of a depthwise convolution with a channel multiplier (groups == in_channels <
    out_channels) whose inputs this group's channels are, or None. Removing one of its inputs
    would have to remove a block of its outputs and a group, which the pruner cannot do."""
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels < module.out_channels \
                and not ctx.graph.is_out_channel_pruning_fn(dep.handler):
            return ctx.name_of(module)
    return None
