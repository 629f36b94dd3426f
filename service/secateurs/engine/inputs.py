"""A model's inputs as the engine handles them: one tensor, or a tuple of named tensors.

A batch `x` is what a model is called with: a tensor for a one-input model (an image batch), a
tuple of tensors in the model's argument order for several (token ids and a mask). Every stage
calls, sizes, moves, stacks and splits batches through these functions, so none of them cares
which of the two it holds. Generated inputs follow each input's dtype: normal floats, and integers
in [0, INTEGER_HIGH) (valid ids for any vocabulary and valid masks).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from secateurs.engine.spec import InputSpec

Batch = torch.Tensor | tuple[torch.Tensor, ...]
INTEGER_HIGH = 2
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                "bool": torch.bool}


def call(model: nn.Module, x: Batch) -> Any:
    """The model's outputs for one batch."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def batch_size(x: Batch) -> int:
    return int((x[0] if isinstance(x, (tuple, list)) else x).shape[0])


def to_device(x: Batch, device: torch.device | str, non_blocking: bool = False) -> Batch:
    if isinstance(x, (tuple, list)):
        return tuple(t.to(device, non_blocking=non_blocking) for t in x)
    return x.to(device, non_blocking=non_blocking)


def tensors(x: Batch) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def stack(samples: Sequence[Batch]) -> Batch:
    """One batch from samples (each one tensor, or one tuple of tensors, without the batch dimension)."""
    if isinstance(samples[0], (tuple, list)):
        return tuple(torch.stack([s[i] for s in samples]) for i in range(len(samples[0])))
    return torch.stack(list(samples))


def split(x: Batch, size: int) -> list[Batch]:
    """A batch cut into batches of at most `size`."""
    if isinstance(x, (tuple, list)):
        return list(zip(*(t.split(size) for t in x)))
    return list(x.split(size))


def shapes(x: Batch) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in tensors(x))


def shape_key(x: Batch) -> tuple:
    """What caches key a batch's form on: the shape of one tensor (as always), else every shape and dtype."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    return tuple((tuple(t.shape), str(t.dtype)) for t in x)


def generate(inputs: Sequence[InputSpec], batch: int | None = None, *,
             generator: torch.Generator | None = None, distribution: str = "normal") -> Batch:
    """Seeded random inputs of these specs (at `batch`, else each spec's own), one tensor when one input.
    Floats are standard normal, or uniform in [0, 1) for a model that takes images as they are
    (`input_distribution`)."""
    made = []
    for spec in inputs:
        shape = (batch if batch is not None else spec.shape[0], *spec.shape[1:])
        dtype = TORCH_DTYPES[spec.dtype]
        if dtype.is_floating_point:
            draw = torch.rand if distribution == "uniform" else torch.randn
            made.append(draw(shape, generator=generator).to(dtype))
        else:
            made.append(torch.randint(0, INTEGER_HIGH, shape, generator=generator).to(dtype))
    return made[0] if len(made) == 1 else tuple(made)


def input_distribution(model: torch.nn.Module) -> str:
    """What generated float inputs a model is fed: "normal" (already normalised inputs, the default), or
    "uniform" in [0, 1) for a model that normalises its images itself (a detector): standard normal
    pixels drive its box regression far out of range, and every fidelity figure with it."""
    return getattr(model, "generated_inputs", "normal")


def describe(inputs: Sequence[InputSpec]) -> str:
    """'1x3x32x32' for one float input named 'input', else 'name:1x128:int64, ...'."""
    if len(inputs) == 1 and inputs[0].dtype == "float32" and inputs[0].name == "input":
        return "x".join(map(str, inputs[0].shape))
    return ", ".join(i.text() for i in inputs)
