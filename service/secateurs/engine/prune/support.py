"""What the dependency tracer cannot follow, found before it runs, and where it failed when it did.

Torch-Pruning maps a removed channel through every operation between two layers. Two
structures defeat it, and both are found here from the model itself, in seconds:

- a **channel shuffle** (view to (N, groups, C/groups, ...), transpose of dims 1 and 2, view
  back; ShuffleNet): it interleaves the channels of two branches, and building the graph fails
  inside the tracer (a division by zero in its reshape mapping). The model is refused, naming
  every module that shuffles.
- **shifted-window attention** (Swin, torchvision and timm): the residual width passes through
  window partition, roll and a channels-last concatenation, and grouping it never ends (index
  lists multiplied at every reshape). Only the MLP widths inside each block are offered; every
  other layer is held whole, with the reason, before the tracer sees it.

Any other failure inside the tracer is described by the operation and the layers around it
(`describe_tracer_failure`), never by a traceback.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from secateurs.engine.inputs import Batch, call
from secateurs.errors import UnsupportedModel

WINDOW_HOLD_REASON = ("the residual width and the heads of a shifted-window transformer pass through window "
                      "partition and roll, which the dependency graph cannot follow: only its MLP widths are pruned")


class _ShuffleSpy(TorchFunctionMode):
    """Records the module in which a channel shuffle happens, by watching views and transposes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.split: dict[int, torch.Tensor] = {}  # id -> a view that split the channel dimension in two
        self.found: list[str] = []

    def __torch_function__(self, func: Any, types_: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is None or not isinstance(out, torch.Tensor):
            return out
        if name in ("view", "reshape") and _splits_channels(source, out):
            self.split[id(out)] = out
        elif name in ("transpose", "swapaxes") and id(source) in self.split and len(args) >= 3:
            if sorted(int(d) % source.dim() for d in args[1:3]) == [1, 2]:
                where = self.stack[-1] if self.stack else "(the model's own forward)"
                if where not in self.found:
                    self.found.append(where)
        return out


def _splits_channels(source: torch.Tensor, out: torch.Tensor) -> bool:
    return (source.dim() >= 3 and out.dim() == source.dim() + 1 and out.shape[0] == source.shape[0]
            and out.shape[1] > 1 and out.shape[1] * out.shape[2] == source.shape[1]
            and tuple(out.shape[3:]) == tuple(source.shape[2:]))


def find_channel_shuffles(model: nn.Module, example: Batch) -> list[str]:
    """Names of the modules whose forward shuffles channels, in forward order."""
    spy = _ShuffleSpy()
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _i, name=name: spy.stack.append(name)))
            handles.append(module.register_forward_hook(lambda _m, _i, _o: spy.stack.pop() and None))
    try:
        with torch.no_grad(), spy:
            call(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return spy.found


def _window_attention_types() -> tuple[type, ...]:
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    found: list[type] = [ShiftedWindowAttention]  # its V2 subclasses it
    try:
        from timm.models import swin_transformer, swin_transformer_v2
    except ImportError:  # timm is an optional extra
        return tuple(found)
    return (*found, swin_transformer.WindowAttention, swin_transformer_v2.WindowAttention)


def window_attention_holds(model: nn.Module, classifier: str) -> dict[str, str]:
    """Layer name -> reason for every Conv/Linear to hold whole in a shifted-window transformer;
    empty for any other model. What stays free: each window block's MLP layers but the last."""
    kinds = _window_attention_types()
    free: set[str] = set()
    for name, block in model.named_modules():
        if not any(isinstance(child, kinds) for child in block.children()):
            continue
        mlp = getattr(block, "mlp", None)
        linears = [n for n, m in mlp.named_modules() if isinstance(m, nn.Linear)] if mlp is not None else []
        free.update(f"{name}.mlp.{n}" for n in linears[:-1])
    if not free:
        return {}
    return {name: WINDOW_HOLD_REASON for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name not in free and name != classifier}


def refuse_untraceable(model: nn.Module, example: torch.Tensor) -> None:
    """Raise UnsupportedModel, naming the modules, when the model shuffles channels."""
    shuffles = find_channel_shuffles(model, example)
    if shuffles:
        shown = ", ".join(shuffles[:6]) + (f" and {len(shuffles) - 6} more" if len(shuffles) > 6 else "")
        raise UnsupportedModel(
            f"channel shuffle in {shown} (view to (N, groups, C/groups, ...), transpose(1, 2), view back): it "
            f"interleaves the channels of two branches, and the dependency graph cannot map a removed channel "
            f"through it, so no width of this model can be pruned")


def describe_tracer_failure(exc: BaseException) -> str:
    """The operation the tracer was mapping when it failed and the layers around it, from the
    failing frames; empty when the failure happened elsewhere."""
    from torch_pruning.dependency.node import Node

    graph, node = None, None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:  # the innermost frame holding a node is where mapping failed; its first is the op
        values = list(tb.tb_frame.f_locals.values())
        node = next((v for v in values if isinstance(v, Node)), node)
        graph = next((v for v in values if hasattr(v, "_module2name") and hasattr(v, "module2node")), graph)
        tb = tb.tb_next
    if node is None or graph is None:
        return ""
    names = graph._module2name
    op = type(node.grad_fn).__name__ if node.grad_fn is not None else type(node.module).__name__
    before, after = _nearest(node, "inputs", names), _nearest(node, "outputs", names)
    where = " and ".join(part for part in (f"after {before}" if before else "", f"before {after}" if after else "")
                         if part)
    return f"while mapping channels through {op}" + (f" {where}" if where else "")


def _nearest(node: Any, direction: str, names: dict[nn.Module, str]) -> str:
    """The closest named layer reached from `node` along its inputs or outputs."""
    seen, frontier = set(), list(getattr(node, direction))
    while frontier:
        current = frontier.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.module in names:
            return names[current.module]
        frontier.extend(getattr(current, direction))
    return ""
