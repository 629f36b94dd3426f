"""Metrics of size: parameters, MACs (per layer and total) and file bytes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from secateurs.engine.inputs import Batch, call


def forward_with_hooks(model: nn.Module, example: Batch, handles: list) -> None:
    """Run one forward pass with hooks that observe it, then remove them whatever happens."""
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for handle in handles:
            handle.remove()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of each Conv/Linear layer for one forward pass of `example`."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + output.numel() * module.in_features
            else:  # convolution: each output element reads in/groups * kernel inputs
                per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
                macs[name] = macs.get(name, 0) + output.numel() * per_output
        return record

    forward_with_hooks(model, example, [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ])
    return macs


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Total MACs, including attention's matrix products (via Torch-Pruning's counter)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def file_bytes(path: Path) -> int:
    """Bytes of a file plus any external-data sidecar files next to it."""
    path = Path(path)
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total
