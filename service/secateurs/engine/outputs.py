"""A model's output as the engine reads it: one tensor, whose class scores lie on dimension 1.

A classifier returns (N, classes). A segmentation network returns (N, classes, H, W), often
inside a dict (torchvision's {"out": ...}). Every quality measure of the engine (agreement, KL,
accuracy, distillation) compares class distributions; `class_scores` turns either shape into
rows of class scores, so a dense output is compared pixel by pixel: agreement becomes
per-pixel agreement, and distillation matches every pixel's distribution.

A dict or tuple holding exactly one tensor is unwrapped by a forward hook on the model
(`unwrap_single_output`), so the exported ONNX model has the one output a deployment reads.
More than one output tensor (an auxiliary head, a detector's boxes and scores) is refused with
the names of the outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from secateurs.errors import InvalidRequest


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """(N, C) unchanged; (N, C, *spatial) -> (N * prod(spatial), C): one row per position."""
    if output.dim() <= 2:
        return output
    return output.movedim(1, -1).reshape(-1, output.shape[1])


def is_dense(output: torch.Tensor) -> bool:
    """Scores per position (segmentation), not per example."""
    return output.dim() > 2


def _tensors(output: Any) -> dict[str, Any]:
    if isinstance(output, Mapping):
        return dict(output)
    if isinstance(output, (tuple, list)):
        return {str(i): value for i, value in enumerate(output)}
    return {"": output}


def _select(key: Any, _module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
    return output[key]


OUTPUT_NAME = "output"
_NAME_ATTRIBUTE = "_secateurs_output_name"
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def output_name(model: nn.Module) -> str:
    """The ONNX name of the model's output: its key in the dict it came in ('out', 'logits'), else 'output'."""
    return getattr(model, _NAME_ATTRIBUTE, OUTPUT_NAME)


def unwrap_single_output(model: nn.Module, output: Any) -> torch.Tensor:
    """Make `model` return its only output tensor (a hook, so layer names do not change); return it.
    Raises InvalidRequest naming the outputs when there is not exactly one tensor."""
    if isinstance(output, torch.Tensor):
        return output
    parts = _tensors(output)
    tensors = {k: v for k, v in parts.items() if isinstance(v, torch.Tensor)}
    if len(parts) == 1 and len(tensors) == 1:
        name = next(iter(tensors))
        key = name if isinstance(output, Mapping) else int(name)
        model.register_forward_hook(partial(_select, key))
        if isinstance(output, Mapping) and _PLAIN_NAME.fullmatch(str(name)):
            setattr(model, _NAME_ATTRIBUTE, str(name))  # copies of the model keep it
        return tensors[name]
    described = ", ".join(f"{k or '(value)'}: {type(v).__name__}" for k, v in parts.items())
    raise InvalidRequest(
        f"the model returns {type(output).__name__} of {len(parts)} outputs ({described}); one output tensor is "
        f"supported (for torchvision segmentation: aux_loss=False)", field="model.arch")
