"""Which layer dimensions each prunable group sets, and what a plan costs in params and MACs.

A group's width moves one dimension of several layers: a conv's outputs, the next conv's
inputs, every conv tied by a residual add, and (for a concatenation) a slice of a later
layer's inputs. For a plan (group -> width) each layer's widths are

    width(layer, dim) = full(layer, dim) - sum over groups touching it of per_unit * removed

where per_unit is how many of the layer's channels one unit of the group is (1 for
channels, 3 x head_dim for a fused qkv layer and head_dim for the output projection).
"""

from __future__ import annotations

from typing import Collection

from torch import nn

from secateurs.engine.prune.groups import GraphContext, GroupInfo
from secateurs.engine.latency.layers import LayerShape


class GroupLayers:
    """Which layer dimensions each group sets: width(layer, dim) = full - sum(per_unit * removed)."""

    def __init__(self, ctx: GraphContext, groups: list[GroupInfo], layers: dict[str, LayerShape]) -> None:
        self.layers = layers
        self.groups = {g.name: g for g in groups}
        self.members: dict[str, list[tuple[str, str, float]]] = {}
        leader = {root: g.name for g in groups for root in g.roots}  # a tied group's roots count as its own
        for root, group in ctx.iter_groups():
            name = leader.get(root)
            if name is None:
                continue
            width = self.groups[name].channels
            seen = set()
            for dep, idxs in group:
                module = dep.target.module
                if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in ctx.graph._module2name:
                    continue
                layer = ctx.name_of(module)
                if layer not in layers:
                    continue
                dim = "out" if ctx.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                if (layer, dim) in seen:
                    continue
                seen.add((layer, dim))
                self.members.setdefault(name, []).append((layer, dim, len(idxs) / width))

    def layer_widths(self, widths: dict[str, int]) -> dict[str, tuple[float, float]]:
        out: dict[str, list[float]] = {n: [s.cin, s.cout] for n, s in self.layers.items()}
        for group, width in widths.items():
            removed = self.groups[group].channels - width
            for layer, dim, per_unit in self.members.get(group, []):
                out[layer][0 if dim == "in" else 1] -= per_unit * removed
        result = {}
        for name, (cin, cout) in out.items():
            if self.layers[name].depthwise:  # depthwise: both follow whichever shrank
                cin = cout = min(cin, cout)
            result[name] = (max(cin, 1.0), max(cout, 1.0))
        return result

    def params_macs(self, widths: dict[str, int], *, removed: Collection[str] = ()) -> tuple[float, float]:
        """Parameters and MACs of every layer at these group widths, but the `removed` layers."""
        params = macs = 0.0
        for name, (cin, cout) in self.layer_widths(widths).items():
            if name in removed:
                continue
            p, m = layer_cost(self.layers[name], cin, cout)
            params += p
            macs += m
        return params, macs


def layer_cost(shape: LayerShape, cin: float, cout: float) -> tuple[float, float]:
    """Parameters and MACs of a layer at the given widths."""
    if shape.kind == "linear":
        tokens = 1
        for d in shape.input_shape[:-1]:
            tokens *= d
        return cin * cout + cout * shape.bias, cin * cout * tokens
    groups = cin if shape.depthwise else shape.groups
    kernel = shape.kernel[0] * shape.kernel[1]
    h = (shape.input_shape[2] + 2 * shape.padding[0] - shape.dilation[0] * (shape.kernel[0] - 1) - 1) // shape.stride[0] + 1
    w = (shape.input_shape[3] + 2 * shape.padding[1] - shape.dilation[1] * (shape.kernel[1] - 1) - 1) // shape.stride[1] + 1
    weights = cin / groups * cout * kernel
    return weights + cout * shape.bias, weights * h * w * shape.input_shape[0]
