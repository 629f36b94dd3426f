"""Structural channel pruning: importance, per-group ratios, rounding, and replayable plans.

The surgery is Torch-Pruning's. What is ours: turning a requested ratio into a channel
count that the hardware likes (a multiple of `round_to`, never below a floor), the
choice of importance, validation, and the plan: the names and removed indices of every
step, stored as JSON, which replays on a freshly built original architecture.
"""

from __future__ import annotations

import copy
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch_pruning as tp
from torch import nn

from secateurs.engine.prune.attention import SelfAttention, convert_attention
from secateurs.engine.prune.blocks import drop_blocks, find_blocks, replace_with_identity
from secateurs.engine.prune.groups import GroupInfo, describe_groups, prepare
from secateurs.engine.prune.importance import accumulate_gradients, head_norm
from secateurs.engine.latency.devicelock import computing
from secateurs.engine.spec import PruneSpec
from secateurs.engine.inputs import Batch, call, shapes
from secateurs.engine.validate import validate_prune_spec
from secateurs.errors import InvalidRequest, UnsupportedModel, machine_limit

PLAN_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What was removed, as names and indices (never a pickled module)."""

    groups: list[dict[str, Any]]
    history: list[tuple[str, bool, list[int]]]
    heads: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # blocks replaced by the identity, after the channel steps
    version: int = PLAN_VERSION

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "groups": self.groups, "heads": self.heads,
                           "dropped": self.dropped,
                           "history": [[n, o, list(map(int, i))] for n, o, i in self.history]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            raw = json.loads(text)
            if raw.get("version") != PLAN_VERSION:
                raise ValueError(f"plan version {raw.get('version')!r}, expected {PLAN_VERSION}")
            return cls(groups=list(raw["groups"]), heads=dict(raw.get("heads", {})),
                       dropped=[str(n) for n in raw.get("dropped", [])],
                       history=[(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in raw["history"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"plan file is not a valid secateurs plan: {exc}", field="plan") from None


@dataclass(frozen=True, kw_only=True)
class PruneResult:
    model: nn.Module
    plan: Plan
    groups: list[GroupInfo]


def kept_count(channels: int, ratio: float, *, round_to: int = 8, min_channels: int = 8, step: int = 1) -> int:
    """Channels to keep for `ratio`: nearest multiple of round_to, at least the floor, at most all.

    step > 1: the channels come in `step` equal groups (those of a grouped convolution), and the
    same number is kept in each, so the count is a multiple of step; round_to gives way to it.
    """
    if ratio <= 0 or channels <= min_channels:
        return channels
    if step > 1:
        per_group = channels // step
        keep_each = max(1, round(per_group * (1 - ratio)), -(-min_channels // step))
        return min(per_group, keep_each) * step
    keep = round(channels * (1 - ratio) / round_to) * round_to
    keep = max(keep, min_channels, round_to)
    return min(keep, channels)


def kept_heads(heads: int, ratio: float) -> int:
    return heads if ratio <= 0 else max(1, min(heads, round(heads * (1 - ratio))))


def requested_ratios(spec: PruneSpec, groups: list[GroupInfo]) -> dict[str, float]:
    """Group name -> ratio, checked against the model's groups."""
    by_name = {g.name: g for g in groups}
    if spec.group_ratios is None:
        return {g.name: float(spec.ratio or 0.0) for g in groups if g.prunable}
    unknown = sorted(set(spec.group_ratios) - set(by_name))
    if unknown:
        shown = ", ".join(unknown[:5])
        raise InvalidRequest(f"group_ratios names {len(unknown)} unknown group(s): {shown}; "
                             f"`secateurs inspect` lists the groups", field="group_ratios")
    for name, r in spec.group_ratios.items():
        if r > 0 and not by_name[name].prunable:
            raise InvalidRequest(f"group {name!r} cannot be pruned: {by_name[name].reason}",
                                 field=f"group_ratios[{name}]")
    return {name: float(r) for name, r in spec.group_ratios.items()}


def prune(model: nn.Module, example: torch.Tensor, spec: PruneSpec,
          batches: Iterable[torch.Tensor] | None = None) -> PruneResult:
    """Prune a copy of `model`; the original is left untouched (it is the teacher and baseline)."""
    with computing():  # graph building and surgery are seconds of CPU on a large model
        return _prune(model, example, spec, batches)


def _prune(model: nn.Module, example: torch.Tensor, spec: PruneSpec,
           batches: Iterable[torch.Tensor] | None) -> PruneResult:
    validate_prune_spec(spec)
    groups = analysed_groups(model, example, spec.min_channels)
    ratios = requested_ratios(spec, groups)

    pruned = copy.deepcopy(model).eval()
    module_ratio: dict[str, float] = {}
    head_keep: dict[str, int] = {}
    planned: dict[str, tuple[int, int]] = {}
    for g in groups:
        r = ratios.get(g.name, 0.0)
        if g.unit == "heads":
            keep = kept_heads(g.channels, r)
            if keep < g.channels:
                head_keep[g.name] = keep
        else:
            keep = kept_count(g.channels, r, round_to=spec.round_to, min_channels=max(spec.min_channels, g.floor),
                              step=g.step)
            if keep < g.channels:
                for root in g.roots:  # a tied group's roots all take its width
                    module_ratio[root] = 1 - (keep + 0.5) / g.channels  # +0.5: the pruner truncates
        planned[g.name] = (g.channels, keep)

    # Build again so the pruner knows each root module's ratio (its scopes are fixed at construction).
    ctx = prepare(pruned, example, criterion=spec.importance,
                  ratios={pruned.get_submodule(n): r for n, r in module_ratio.items()})
    if spec.importance == "taylor":
        accumulate_gradients(pruned, batches or [example], model)
    try:
        ctx.pruner.step()
        for name, keep in head_keep.items():
            remove_heads(ctx.graph, pruned.get_submodule(name.rsplit(".", 1)[0]), keep, p=head_norm(spec.importance))
    except Exception as exc:
        if machine_limit(exc):
            raise
        raise UnsupportedModel(f"pruning failed inside the dependency graph: {type(exc).__name__}: {exc}") from exc
    pruned.zero_grad(set_to_none=True)
    heads = _sync_attributes(pruned)
    actual = _channel_counts(pruned, groups)  # before blocks go: a group inside one keeps its count
    if spec.drop_blocks:
        _check_removable(model, example, spec.drop_blocks)
        pruned = drop_blocks(pruned, spec.drop_blocks)
    _check_forward(pruned, example)

    plan_groups = [
        {"name": g.name, "unit": g.unit, "before": g.channels, "planned": planned[g.name][1],
         "after": actual.get(g.name, g.channels), "ratio_requested": ratios.get(g.name, 0.0),
         **({"tied": list(g.tied)} if g.tied else {})}
        for g in groups
    ]
    history = [(n, bool(o), [int(i) for i in idx]) for n, o, idx in ctx.graph.pruning_history()]
    return PruneResult(model=pruned, plan=Plan(groups=plan_groups, history=history, heads=heads,
                                               dropped=list(spec.drop_blocks)), groups=groups)


# The groups of each model as it stands. A search prunes one model for every candidate it measures, and
# the analysis (a dependency graph traced on a copy) was a second of every prune of a ResNet-50.
_ANALYSED: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, list[GroupInfo]]]" = weakref.WeakKeyDictionary()


def analysed_groups(model: nn.Module, example: Batch, min_channels: int) -> list[GroupInfo]:
    """describe_groups of `model` (on a copy), kept while the model's structure, the input shapes and
    the floor stay the same: groups are structure, not weights."""
    key = (repr(model), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()), tuple(shapes(example)),
           min_channels)
    kept = _ANALYSED.get(model)
    if kept is not None and kept[0] == key:
        return list(kept[1])
    groups = describe_groups(prepare(copy.deepcopy(model), example), example, min_channels=min_channels)
    _ANALYSED[model] = (key, groups)
    return list(groups)


def _check_removable(model: nn.Module, example: torch.Tensor, names: Iterable[str]) -> None:
    removable = {b.name for b in find_blocks(model, example)}
    unknown = sorted(set(names) - removable)
    if unknown:
        raise InvalidRequest(f"{len(unknown)} block(s) cannot be dropped: {', '.join(unknown[:5])}; "
                             f"`secateurs inspect` lists the removable blocks", field="drop_blocks")


def apply_plan(model: nn.Module, example: torch.Tensor, plan: Plan) -> nn.Module:
    """Replay a plan on the original architecture (in place) and return it."""
    model.eval()
    convert_attention(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    try:
        graph.load_pruning_history([list(step) for step in plan.history])
    except (AttributeError, IndexError, RuntimeError) as exc:
        raise InvalidRequest(f"the plan does not fit this architecture: {exc}", field="plan") from None
    for name, n in plan.heads.items():
        model.get_submodule(name.rsplit(".", 1)[0]).num_heads = int(n)
    _sync_attributes(model)
    for name in plan.dropped:
        replace_with_identity(model, name)
    _check_forward(model, example)
    return model


def remove_heads(graph: tp.DependencyGraph, attention: SelfAttention, keep: int, p: int = 1) -> None:
    """Remove the least important heads (mean |w|^p of their q, k, v rows and output columns).

    The removal goes through the dependency graph from the output projection's inputs,
    so the fused qkv rows follow and the step is recorded in the plan's history.
    """
    heads = attention.num_heads
    head_dim = attention.proj.in_features // heads
    drop = weakest_heads(attention, heads - keep, p=p)
    idxs = [h * head_dim + i for h in drop for i in range(head_dim)]
    graph.get_pruning_group(attention.proj, tp.prune_linear_in_channels, idxs).prune()
    attention.num_heads = keep


def weakest_heads(attention: SelfAttention, count: int, p: int = 1) -> list[int]:
    """The `count` heads with the smallest mean |w|^p over their q, k, v rows and output columns."""
    heads = attention.num_heads
    head_dim = attention.proj.in_features // heads
    with torch.no_grad():
        qkv = attention.qkv.weight.abs().pow(p).reshape(3, heads, head_dim, -1).mean(dim=(0, 2, 3))
        out = attention.proj.weight.abs().pow(p).reshape(-1, heads, head_dim).mean(dim=(0, 2))
        score = qkv / qkv.mean() + out / out.mean()
    return sorted(torch.argsort(score)[:count].tolist())


def _sync_attributes(model: nn.Module) -> dict[str, int]:
    """Widths some modules keep as plain ints (not tensors) must follow the pruned weights;
    returns the head count of every attention module by its qkv layer's name."""
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, SelfAttention):
            out[f"{name}.qkv"] = module.num_heads
        # torchvision's VisionTransformer reshapes with self.hidden_dim
        conv_proj = getattr(module, "conv_proj", None)
        if isinstance(getattr(module, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
            module.hidden_dim = conv_proj.out_channels
    return out


def _check_forward(model: nn.Module, example: Batch) -> None:
    try:
        with torch.no_grad():
            call(model, example)
    except Exception as exc:
        if machine_limit(exc):
            raise
        raise UnsupportedModel(
            f"the pruned model no longer runs ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"a layer keeps a width the dependency graph does not know about"
        ) from exc


def _channel_counts(model: nn.Module, groups: list[GroupInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in groups:
        module = model.get_submodule(g.name)
        if g.unit == "heads":
            parent = model.get_submodule(g.name.rsplit(".", 1)[0])
            counts[g.name] = getattr(parent, "num_heads", g.channels)
        elif isinstance(module, nn.Linear):
            counts[g.name] = module.out_features
        elif hasattr(module, "out_channels"):
            counts[g.name] = module.out_channels
    return counts


def write_plan(plan: Plan, path: Path) -> Path:
    path.write_text(plan.to_json())
    return path
