"""Removable blocks: residual blocks that can become the identity, found from the graph.

Channel pruning removes arithmetic; removing a whole block also removes its per-operator
overhead, which dominates small inputs and small batches. A module is a removable block
when, on the example input,

  1. its output has exactly the shape of its input (a block that changes the width, the
     resolution or the stride cannot be skipped), and
  2. its own traced forward adds its input to a branch computed from it: a residual connection (ResNet
     BasicBlock/Bottleneck without downsampling, MobileNetV2's inverted residual with
     `use_res_connect`, a transformer encoder layer). The trace treats every submodule as
     a leaf, so only the block's top-level dataflow matters; the input may pass through
     identity-like modules (Identity, an empty Sequential, Dropout) on its way to the add.

Nothing here knows an architecture by name. Dropping a block replaces it with the
identity, which for a residual block means its branch contributes nothing: with the
post-add ReLU of a ResNet block that is exact, because the block's input is already
non-negative.
"""

from __future__ import annotations

import copy
import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.fx
from torch import nn

from secateurs.engine.inputs import Batch, call
from secateurs.engine.intake.hf import encoder_layers


_PASS_THROUGH = (nn.Identity, nn.Dropout)
_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True, kw_only=True)
class BlockInfo:
    """A module that could be removed: its name, type, parameter count and the shape it keeps."""

    name: str
    kind: str
    params: int
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "shape": list(self.shape)}


def find_blocks(model: nn.Module, example: torch.Tensor) -> list[BlockInfo]:
    """Every removable block of `model` (outermost first when blocks nest), in forward order."""
    shapes = _io_shapes(model, example)
    found: list[BlockInfo] = []
    for name, module in model.named_modules():
        if not name or name not in shapes or not any(True for _ in module.parameters()):
            continue
        shape_in, shape_out = shapes[name]
        if shape_in is None or shape_in != shape_out:
            continue
        if any(name.startswith(outer.name + ".") for outer in found):
            continue  # inside a block already found: dropping the outer one covers it
        if _adds_its_input(module):
            found.append(BlockInfo(name=name, kind=type(module).__name__, shape=shape_in,
                                   params=sum(p.numel() for p in module.parameters())))
    for name in encoder_layers(model):  # a transformer's encoder layers: removable whole (engine/intake/hf.py)
        if name in shapes and not any(name == b.name or name.startswith(b.name + ".") for b in found):
            layer = model.get_submodule(name)
            found.append(BlockInfo(name=name, kind=type(layer).__name__, shape=shapes[name][0] or (),
                                   params=sum(p.numel() for p in layer.parameters())))
    order = list(shapes)
    return sorted(found, key=lambda b: order.index(b.name))


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of `model` with the named blocks replaced by the identity."""
    dropped = copy.deepcopy(model)
    for name in names:
        replace_with_identity(dropped, name)
    return dropped


def replace_with_identity(model: nn.Module, name: str) -> None:
    """Replace the named block of `model`, in place, by the identity."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, _Skip())


@contextmanager
def bypassed(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Run `model` as if the named blocks were dropped (forward hooks return the block's input);
    the same function as drop_blocks without copying the model."""
    handles = [model.get_submodule(n).register_forward_hook(lambda _m, inputs, _out: inputs[0]) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Skip(nn.Module):
    """The identity, for any call signature a block had (extra arguments are ignored)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


def _io_shapes(model: nn.Module, example: Batch) -> dict[str, tuple[tuple[int, ...] | None, Any]]:
    """Shape of each module's first input and of its output, in the order modules finish."""
    shapes: dict[str, tuple[tuple[int, ...] | None, Any]] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(_m: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            out = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            shapes.setdefault(name, (tuple(first.shape) if first is not None else None, out))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in handles:
            h.remove()
    return shapes


class _TopLevelTracer(torch.fx.Tracer):
    """Trace only the block's own forward: every submodule is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _adds_its_input(module: nn.Module) -> bool:
    try:
        graph = _TopLevelTracer().trace(module)
    except Exception:  # not traceable (data-dependent control flow): not provably residual
        return False
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return False
    source = placeholders[0]

    def from_input(node: Any) -> bool:
        while isinstance(node, torch.fx.Node):
            if node is source:
                return True
            if node.op == "call_module" and _passes_through(module.get_submodule(str(node.target))):
                node = node.args[0] if node.args else None
                continue
            return False
        return False

    def depends_on_input(node: Any) -> bool:
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            if not isinstance(n, torch.fx.Node) or n in seen:
                continue
            if n is source:
                return True
            seen.add(n)
            todo.extend(n.all_input_nodes)
        return False

    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) < 2:
            continue
        a, b = node.args[:2]
        # a skip connection adds the input to a branch computed from it (adding a position
        # embedding or a bias to the input is not one)
        if (from_input(a) and depends_on_input(b) and not from_input(b)) or (
                from_input(b) and depends_on_input(a) and not from_input(a)):
            return True
    return False


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, _PASS_THROUGH) or (isinstance(module, nn.Sequential) and len(module) == 0)
