"""A latency model of the whole network built from its layers measured in isolation.

Measuring the whole model once per (group, width) is what the latency-aware search
wants, but on a 2-core machine it would take tens of minutes for a ResNet-50. So each
Conv/Linear layer is measured alone as a one-node ONNX model on the target, at the
input shape it sees in the network, for a grid of input and output widths. The
prediction for a plan is the measured baseline plus the sum of each layer's change:

    predicted(plan) = measured(baseline) + sum_L [t_L(in_L(plan), out_L(plan)) - t_L(full)]

with t_L(i, o) ~= t_L(i, full) * t_L(full, o) / t_L(full) (cost is near-bilinear in the
two widths) and linear interpolation between measured widths. Everything else in
the graph (pooling, adds, activations) is assumed constant; the search reports the
prediction error against end-to-end measurement and the verification loop corrects it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from secateurs.engine.events import EventSink, counted, ignore_events
from secateurs.engine.size import forward_with_hooks

LAYER_OPSET = 18


@dataclass(frozen=True, kw_only=True)
class LayerShape:
    """A Conv2d or Linear as it runs inside the network."""

    kind: str  # "conv" | "linear"
    cin: int
    cout: int
    input_shape: tuple[int, ...]  # with cin at dim 1 (conv) or last (linear)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin == self.cout

    def resized(self, cin: int, cout: int) -> LayerShape:
        shape = list(self.input_shape)
        shape[1 if self.kind == "conv" else -1] = cin
        groups = cin if self.depthwise else self.groups
        return replace(self, cin=cin, cout=cout, input_shape=tuple(shape), groups=groups)

    def key(self) -> tuple:
        return (self.kind, self.cin, self.cout, self.input_shape, self.kernel, self.stride, self.padding,
                self.dilation, self.groups, self.bias)


def collect_layers(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """Every Conv2d and Linear with the input shape it receives for `example`."""
    shapes: dict[str, LayerShape] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]
            if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
                shapes[name] = LayerShape(
                    kind="conv", cin=module.in_channels, cout=module.out_channels, input_shape=tuple(x.shape),
                    kernel=tuple(module.kernel_size), stride=tuple(module.stride), padding=tuple(module.padding),
                    dilation=tuple(module.dilation), groups=module.groups, bias=module.bias is not None)
            elif isinstance(module, nn.Linear):
                shapes[name] = LayerShape(kind="linear", cin=module.in_features, cout=module.out_features,
                                          input_shape=tuple(x.shape), bias=module.bias is not None)
        return record

    forward_with_hooks(model, example, [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
                                        if isinstance(m, (nn.Conv2d, nn.Linear))])
    return shapes


def layer_onnx(shape: LayerShape, seed: int = 0) -> bytes:
    """A one-node ONNX model computing the layer on random weights."""
    rng = np.random.default_rng(seed)
    if shape.kind == "conv":
        weight = rng.standard_normal((shape.cout, shape.cin // shape.groups, *shape.kernel), dtype=np.float32)
        inits = [numpy_helper.from_array(weight, "W")]
        inputs = ["x", "W"]
        if shape.bias:
            inits.append(numpy_helper.from_array(np.zeros(shape.cout, np.float32), "B"))
            inputs.append("B")
        pads = [shape.padding[0], shape.padding[1], shape.padding[0], shape.padding[1]]
        node = helper.make_node("Conv", inputs, ["y"], strides=list(shape.stride), pads=pads,
                                dilations=list(shape.dilation), group=shape.groups, kernel_shape=list(shape.kernel))
        nodes = [node]
    else:
        weight = rng.standard_normal((shape.cin, shape.cout), dtype=np.float32)
        inits = [numpy_helper.from_array(weight, "W")]
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y" if not shape.bias else "m"])]
        if shape.bias:
            inits.append(numpy_helper.from_array(np.zeros(shape.cout, np.float32), "B"))
            nodes.append(helper.make_node("Add", ["m", "B"], ["y"]))
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", LAYER_OPSET)])
    model.ir_version = 9
    return model.SerializeToString()


class Curve:
    """Latency of one layer as one width varies (the other at full), interpolated linearly."""

    def __init__(self, points: dict[int, float]) -> None:
        self.widths = sorted(points)
        self.values = [points[w] for w in self.widths]

    def __call__(self, width: float) -> float:
        ws, vs = self.widths, self.values
        if width <= ws[0]:
            return vs[0] * width / ws[0] if ws[0] else vs[0]  # below the grid: proportional
        if width >= ws[-1]:
            return vs[-1]
        i = bisect.bisect_left(ws, width)
        if ws[i] == width:
            return vs[i]
        f = (width - ws[i - 1]) / (ws[i] - ws[i - 1])
        return vs[i - 1] + f * (vs[i] - vs[i - 1])


def width_grid(full: int, *, round_to: int = 8, points: int = 8, step: int = 1) -> list[int]:
    """Widths at which a layer dimension is measured: full and multiples of round_to below it.

    step > 1: the dimension of a grouped convolution, which only takes multiples of its groups
    (a one-layer model at any other width would not be a valid convolution)."""
    unit = step if step > 1 else round_to
    if full <= unit:
        return [full]
    grid = {full}
    for k in range(1, points):
        w = int(round(full * k / points / unit)) * unit
        if 0 < w < full:
            grid.add(w)
    return sorted(grid)


def _step(shape: LayerShape) -> int:
    """The multiple a layer's widths move in: its groups, for a grouped (not depthwise) convolution."""
    return 1 if shape.kind != "conv" or shape.depthwise else shape.groups


class LayerLatencyModel:
    """Predicts the model's latency for any per-layer widths from isolated-layer measurements."""

    def __init__(self, layers: dict[str, LayerShape], measure: Callable[[LayerShape], float], *,
                 round_to: int = 8, on_event: EventSink = ignore_events) -> None:
        self.layers = layers
        self.full: dict[str, float] = {}
        self.in_curves: dict[str, Curve] = {}
        self.out_curves: dict[str, Curve] = {}
        todo = [(n, s) for n, s in layers.items()]

        def grids(s: LayerShape) -> tuple[list[int], list[int]]:
            return (width_grid(s.cin, round_to=round_to, step=_step(s)),
                    width_grid(s.cout, round_to=round_to, step=_step(s)))

        total = sum(len(a) + len(b) for a, b in (grids(s) for _, s in todo))
        done = 0
        for name, shape in todo:
            full = measure(shape)
            self.full[name] = full
            in_grid, out_grid = grids(shape)
            if shape.depthwise:  # one width: in and out move together
                points = {w: measure(shape.resized(w, w)) if w != shape.cin else full for w in in_grid}
                self.in_curves[name] = self.out_curves[name] = Curve(points)
            else:
                self.in_curves[name] = Curve({w: measure(shape.resized(w, shape.cout)) if w != shape.cin else full
                                              for w in in_grid})
                self.out_curves[name] = Curve({w: measure(shape.resized(shape.cin, w)) if w != shape.cout else full
                                               for w in out_grid})
            done += len(in_grid) + len(out_grid)
            counted(on_event, "layer latency", done, total)

    def layer_latency(self, name: str, cin: float, cout: float) -> float:
        shape, full = self.layers[name], self.full[name]
        if shape.depthwise:
            return self.in_curves[name](cin)
        if full <= 0:
            return 0.0
        return self.in_curves[name](cin) * self.out_curves[name](cout) / full

    def delta(self, widths: dict[str, tuple[float, float]]) -> float:
        """Change of the summed isolated-layer latency (ms) when layers take the given (in, out) widths.

        Alone, a layer pays for layout conversions and memory traffic it shares with its
        neighbours in the full graph, so this sum is only proportional to the model's
        change; the search calibrates the proportion with one end-to-end measurement.
        """
        total = 0.0
        for name, (cin, cout) in widths.items():
            shape = self.layers[name]
            if (cin, cout) != (shape.cin, shape.cout):
                total += self.layer_latency(name, cin, cout) - self.full[name]
        return total


def layer_module(shape: LayerShape, seed: int = 0) -> nn.Module:
    """The layer as a torch module on random weights (for runtimes that run the module)."""
    torch.manual_seed(seed)
    if shape.kind == "conv":
        return nn.Conv2d(shape.cin, shape.cout, shape.kernel, stride=shape.stride, padding=shape.padding,
                         dilation=shape.dilation, groups=shape.groups, bias=shape.bias).eval()
    return nn.Linear(shape.cin, shape.cout, bias=shape.bias).eval()
