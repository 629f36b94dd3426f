"""How much quality each group loses at each ratio, when only that group is pruned.

Pruning for real needs a fresh dependency graph per trial, which is too slow for
dozens of groups times several ratios. Removing a channel is the same function as
zeroing it at every layer that produces it (a conv's output, its BatchNorm's output,
each producer tied by a residual add), so a trial here zeroes the least important
channels (L1, as the pruner chooses them) with forward hooks on the original model,
recalibrates BatchNorm on real data when there is some, and compares outputs with the
unpruned model. Under LayerNorm the zeroed channels still enter the statistics, so
for transformers the figure is an approximation; the final plan is always measured.

Quality: with labelled data, the increase in cross-entropy (and accuracy); without,
the KL divergence to the original outputs (and top-1 agreement).
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from secateurs.engine.outputs import Agreement, Output, class_scores, compare
from secateurs.engine.inputs import Batch, call, tensors
from secateurs.engine.events import EventSink, counted, ignore_events
from secateurs.engine.prune.blocks import BlockInfo, bypassed
from secateurs.engine.prune.groups import GraphContext, GroupInfo
from secateurs.engine.latency.cache import MeasurementCache, cache_key
from secateurs.engine.latency.devicelock import computing
from secateurs.engine.prune.apply import kept_count, kept_heads, weakest_heads
from secateurs.engine.search.types import SearchPlan

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Inputs the quality is measured on. `labels` None means fidelity only; `real` says whether
    the inputs come from data (then BatchNorm is recalibrated on `recalibration`)."""

    inputs: list[Batch]
    labels: list[torch.Tensor] | None = None
    real: bool = False
    recalibration: list[Batch] | None = None

    def identity(self) -> str:
        h = hashlib.sha256()
        for x in self.inputs:
            for t in tensors(x):
                h.update(t.numpy().tobytes())
        for y in self.labels or []:
            h.update(y.numpy().tobytes())
        for x in self.recalibration or []:
            h.update(tensors(x)[0].numpy().tobytes()[:4096])
        return h.hexdigest()[:24]


@dataclass(frozen=True, kw_only=True)
class Quality:
    loss: float  # what the solver minimises (CE increase, or KL to the original)
    agreement: float  # top-1 agreement with the original
    kl: float
    accuracy: float | None = None

    def to_dict(self) -> dict:
        return {"loss": self.loss, "agreement": self.agreement, "kl": self.kl, "accuracy": self.accuracy}


def laid_out(x: Batch) -> Batch:
    """Images in channels-last order: convolutions on the CPU run about a quarter faster so, and the
    search evaluates thousands of them (the values are the same)."""
    if isinstance(x, (tuple, list)):
        return tuple(laid_out(t) for t in x)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d weights in channels-last order, in place (values unchanged)."""
    return model.to(memory_format=torch.channels_last)


def reference_outputs(model: nn.Module, calib: Calibration) -> list[Output]:
    with torch.no_grad(), computing():
        return [call(model, laid_out(x)) for x in calib.inputs]


def measure_quality(model: nn.Module, calib: Calibration, reference: Sequence[Output]) -> Quality:
    totals, ce, ce_ref, correct = Agreement(), 0.0, 0.0, 0.0
    with torch.no_grad():
        for i, (x, ref) in enumerate(zip(calib.inputs, reference)):
            with computing():
                out = call(model, laid_out(x))
            totals = totals.add(compare(out, ref))  # a dense output is compared position by position
            if calib.labels is not None:
                y, scores, ref_scores = calib.labels[i], class_scores(out), class_scores(ref)
                ce += float(F.cross_entropy(scores, y, reduction="sum"))
                ce_ref += float(F.cross_entropy(ref_scores, y, reduction="sum"))
                correct += float((scores.argmax(-1) == y).sum())
    n = totals.rows  # rows of scores: examples, or positions of a dense output
    if calib.labels is not None:
        return Quality(loss=(ce - ce_ref) / n, agreement=totals.agreement, kl=totals.divergence, accuracy=correct / n)
    return Quality(loss=totals.fidelity_loss, agreement=totals.agreement, kl=totals.divergence)


@contextmanager
def recalibrated(model: nn.Module, batches: Sequence[Batch] | None) -> Iterator[None]:
    """Re-estimate BatchNorm statistics on `batches` (forward passes only), restore them after."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS)]
    if not batches or not norms:
        yield
        return
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum, m.num_batches_tracked.clone())
             for m in norms]
    try:
        recalibrate_batchnorm(model, batches)
        yield
    finally:
        for m, (mean, var, momentum, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
        model.eval()


def recalibrate_batchnorm(model: nn.Module, batches: Sequence[Batch]) -> None:
    """Cumulative-average BatchNorm statistics over `batches`; everything else in eval mode.
    Each layer's momentum is restored, so later training behaves as before."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: an exact average over the batches, not an exponential one
        m.train()
    try:
        with torch.no_grad():
            for x in batches:
                with computing():
                    call(model, laid_out(x))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def _channel_dim(module: nn.Module) -> int:
    """Where a layer's output keeps its channels. A LayerNorm over channels-first maps (timm's
    LayerNorm2d subclasses nn.LayerNorm) keeps them at 1: its hook decides from the shape it sees."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


@contextmanager
def masked(ctx: GraphContext, group_name: str, info: GroupInfo, keep: int) -> Iterator[None]:
    """Zero the (width - keep) least important channels (or heads) of one group (and of the groups tied to it)."""
    hooks = []
    if info.unit == "heads":
        attention = ctx.model.get_submodule(group_name.rsplit(".", 1)[0])  # heads groups are SelfAttention.qkv
        drop = weakest_heads(attention, info.channels - keep, p=ctx.head_norm)
        head_dim = attention.proj.in_features // attention.num_heads
        idx = torch.tensor([h * head_dim + i for h in drop for i in range(head_dim)], dtype=torch.long)
        hooks.append(attention.proj.register_forward_pre_hook(
            lambda _m, inputs: (inputs[0].index_fill(-1, idx, 0.0),) + tuple(inputs[1:])))
    else:
        for root in (group_name, *info.tied):
            hooks.extend(_channel_masks(ctx, root, info, keep))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _channel_masks(ctx: GraphContext, root: str, info: GroupInfo, keep: int) -> list[Any]:
    """Hooks zeroing the weakest channels of the group rooted at `root`, ranked by the job's criterion."""
    group = ctx.full_group(root, info.channels)
    scores = ctx.importance(group)  # the job's criterion: the channels the final pruning removes
    if info.step > 1:  # as the pruner does: the same positions in each of the step groups
        per_group = info.channels // info.step
        weakest = torch.argsort(scores.view(info.step, per_group).mean(0))[: per_group - keep // info.step]
        drop = {int(p) + g * per_group for g in range(info.step) for p in weakest}
    else:
        drop = set(torch.argsort(scores)[: info.channels - keep].tolist())
    hooks = []
    for target, handler, idxs in _dropped_indices(ctx, root, group, drop):
        if isinstance(target, nn.Module) and ctx.graph.is_out_channel_pruning_fn(handler) and idxs:
            hooks.append(target.register_forward_hook(_zeroing(idxs, _channel_dim(target))))
    return hooks


def _dropped_indices(ctx: GraphContext, root: str, group: Any, drop: set[int]) -> Iterator[tuple[Any, Any, list[int]]]:
    """(layer, pruning function, its indices) that dropping root channels `drop` removes. Each index of
    the full group remembers the root channel it follows (Torch-Pruning's root_idxs), so no new group
    is traced; an expand (grouped-query attention) forgets it, and then the group is traced for `drop`."""
    if any(r is None for item in group for r in item.root_idxs):
        for dep, idxs in ctx.traced_group(root, sorted(drop)):
            yield dep.target.module, dep.handler, sorted({int(i) for i in idxs})
        return
    for item in group:
        yield item.dep.target.module, item.dep.handler, sorted(
            {int(i) for i, r in zip(item.idxs, item.root_idxs) if r in drop})


def _zeroing(channels: list[int], dim: int) -> Callable[..., torch.Tensor]:
    """A forward hook zeroing `channels` of a layer's output along `dim`: one multiplication by a
    broadcast mask, which keeps a channels-last tensor channels-last (index_fill would not)."""
    masks: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        axis = dim % out.dim()
        if isinstance(module, nn.LayerNorm) and out.dim() > 2 and out.shape[-1] != module.normalized_shape[-1]:
            axis = 1  # normalised over channels-first maps
        size = out.shape[axis]
        key = (size, out.dim(), out.dtype)
        if key not in masks:
            mask = torch.ones(size, dtype=out.dtype)
            mask[channels] = 0
            masks[key] = mask.view([size if i == axis else 1 for i in range(out.dim())])
        return out * masks[key]

    return hook


def group_widths(info: GroupInfo, ratios: Sequence[float], *, round_to: int, min_channels: int) -> list[int]:
    """The distinct widths the grid of ratios gives for a group, widest first."""
    if info.unit == "heads":
        widths = {kept_heads(info.channels, r) for r in ratios}
    else:
        widths = {kept_count(info.channels, r, round_to=round_to, min_channels=max(min_channels, info.floor),
                             step=info.step)
                  for r in ratios}
    return sorted(widths, reverse=True)


def sensitivity(ctx: GraphContext, groups: Sequence[GroupInfo], widths: dict[str, list[int]], calib: Calibration,
                *, cache: MeasurementCache, model_id: str,
                on_event: EventSink = ignore_events) -> dict[str, dict[int, Quality]]:
    """Quality of the model with one group at each of its widths (others whole).

    Every other width is measured (and always the narrowest); the widths between are
    interpolated linearly, which halves the cost and loses little: loss grows smoothly
    with the number of channels removed.
    """
    reference = reference_outputs(ctx.model, calib)
    base = measure_quality(ctx.model, calib, reference)
    data_id = calib.identity()
    result: dict[str, dict[int, Quality]] = {}
    plan = {g.name: _measured_widths(widths[g.name]) for g in groups}
    total = sum(len(plan[g.name]) for g in groups)
    done = 0
    for info in groups:
        result[info.name] = {info.channels: base}
        for width in plan[info.name]:
            result[info.name][width], _ = cached_quality(
                ctx.model, calib, reference, lambda: [masked(ctx, info.name, info, width)], cache=cache,
                kind="sensitivity", key=cache_key("sensitivity", model_id, data_id, ctx.criterion, info.name, width))
            done += 1
            counted(on_event, "sensitivity", done, total)
        _interpolate(result[info.name], widths[info.name])
    return result


def block_importance(model: nn.Module, blocks: Sequence[BlockInfo], calib: Calibration, *,
                     cache: MeasurementCache, model_id: str) -> dict[str, Quality]:
    """Quality lost when each block alone is dropped (BatchNorm recalibrated on real data when
    there is some), measured like channel sensitivity and cached with it."""
    reference = reference_outputs(model, calib)
    data_id = calib.identity()
    out: dict[str, Quality] = {}
    for block in blocks:
        out[block.name], _ = cached_quality(
            model, calib, reference, lambda name=block.name: [bypassed(model, [name])], cache=cache,
            kind="block-importance", key=cache_key("block-importance", model_id, data_id, block.name))
    return out


def _measured_widths(widths: Sequence[int]) -> list[int]:
    """Widths (widest first, the full width at index 0) to measure: the middle one and the narrowest, the
    others interpolated; the whole-plan refinement measures the plans that matter, so these only seed it."""
    chosen = [widths[len(widths) // 2]] if len(widths) > 2 else []
    if len(widths) > 1 and widths[-1] not in chosen:
        chosen.append(widths[-1])
    return chosen


def _interpolate(known: dict[int, Quality], widths: Sequence[int]) -> None:
    measured = dict(known)
    for w in widths:
        if w not in known:
            known[w] = quality_at(measured, w)


def quality_at(known: dict[int, Quality], width: int) -> Quality:
    """The quality at `width`, interpolated linearly between the nearest widths in `known`
    (beyond them, the nearest one's)."""
    if width in known:
        return known[width]
    above = min((p for p in known if p > width), default=None)
    below = max((p for p in known if p < width), default=None)
    if above is None or below is None:
        return known[below if above is None else above]
    f = (above - width) / (above - below)
    a, b = known[above], known[below]
    mix = lambda x, y: x + f * (y - x)  # noqa: E731
    return Quality(loss=mix(a.loss, b.loss), agreement=mix(a.agreement, b.agreement), kl=mix(a.kl, b.kl),
                   accuracy=None if a.accuracy is None else mix(a.accuracy, b.accuracy))


def cached_quality(model: nn.Module, calib: Calibration, reference: Sequence[torch.Tensor],
                   changes: Callable[[], Sequence[AbstractContextManager]], *, cache: MeasurementCache, kind: str,
                   key: str) -> tuple[Quality, bool]:
    """Quality of `model` while `changes()` (masks, bypassed blocks) are applied, after BatchNorm
    recalibration on real data, cached under `key`. Returns (quality, whether it was measured now)."""
    cached = cache.get(key, kind=kind)
    if cached is not None:
        return Quality(**cached), False
    with ExitStack() as stack:
        for change in changes():
            stack.enter_context(change)
        stack.enter_context(recalibrated(model, calib.recalibration if calib.real else None))
        quality = measure_quality(model, calib, reference)
    cache.put(key, kind, quality.to_dict())
    return quality, True


def model_identity(model: nn.Module, arch: str, input_shape: tuple) -> str:
    """A hash of the weights and architecture (cache key for sensitivity)."""
    h = hashlib.sha256(f"{arch}|{input_shape}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class JointQuality:
    """Measured quality of a whole plan (every group at its width at once), cached."""

    def __init__(self, ctx: GraphContext, groups: Sequence[GroupInfo], calib: Calibration,
                 reference: Sequence[torch.Tensor], *, cache: MeasurementCache, model_id: str) -> None:
        self.ctx, self.calib, self.reference, self.cache, self.model_id = ctx, calib, reference, cache, model_id
        self.groups = {g.name: g for g in groups}
        self.data_id = calib.identity()
        self.evaluations = 0  # measured here, not read from the cache

    def __call__(self, plan: SearchPlan) -> Quality:
        """Quality with every group at its width and the plan's dropped blocks bypassed."""
        pruned = sorted((n, w) for n, w in plan.widths.items() if n in self.groups and w < self.groups[n].channels)
        dropped = list(plan.dropped_blocks)
        parts: list = [pruned, dropped] if dropped else [pruned]  # without blocks, the key of a channels-only plan
        quality, measured = cached_quality(
            self.ctx.model, self.calib, self.reference,
            lambda: [masked(self.ctx, name, self.groups[name], width) for name, width in pruned]
            + ([bypassed(self.ctx.model, dropped)] if dropped else []),
            cache=self.cache, kind="joint-quality",
            key=cache_key("joint-quality", self.model_id, self.data_id, self.ctx.criterion, *parts))
        self.evaluations += measured
        return quality
