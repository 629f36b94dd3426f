"""Channel importance: the one criterion a job uses everywhere (search sensitivity, whole-plan
quality during refinement, and the final pruning), so the trace describes the model delivered.

Torch-Pruning scores each group; a criterion that cannot score a group (BatchNorm scale where a
group has no BatchNorm) falls back to L1 for that group, the same way in every stage. Taylor
needs gradients: `accumulate_gradients` puts them on the weights from real calibration batches
(KL to the unpruned model, so no labels are needed) before any group is scored.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch_pruning as tp
from torch import nn

from secateurs.engine.inputs import Batch, call
from secateurs.engine.outputs import distillation_loss
from secateurs.engine.latency.devicelock import computing
from secateurs.engine.spec import IMPORTANCES
from secateurs.errors import InvalidRequest


class _WithFallback(tp.importance.Importance):
    """The criterion's scores, or L1's where it has none for a group."""

    def __init__(self, primary: tp.importance.Importance) -> None:
        self.primary, self.fallback = primary, tp.importance.GroupMagnitudeImportance(p=1)

    def __call__(self, group: tp.Group) -> torch.Tensor:
        scores = self.primary(group)
        return self.fallback(group) if scores is None else scores


def importance_of(name: str) -> tp.importance.Importance:
    """The Torch-Pruning importance for a criterion name (l1, l2, bn_scale, taylor)."""
    makers = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }
    if name not in makers:
        raise InvalidRequest(f"importance {name!r} is not one of {', '.join(IMPORTANCES)}", field="importance")
    return _WithFallback(makers[name]())


def head_norm(name: str) -> int:
    """The p of the |w|^p norm that ranks attention heads (heads are ranked by magnitude under every criterion)."""
    return 2 if name == "l2" else 1


def accumulate_gradients(model: nn.Module, batches: Iterable[Batch], reference: nn.Module) -> None:
    """Gradients of the KL divergence to `reference`'s outputs, summed over `batches`, on `model`'s
    weights: what first-order Taylor importance reads. Works without labels."""
    model.zero_grad()
    for x in batches:
        with computing():
            with torch.no_grad():
                target = call(reference, x)
            loss = distillation_loss(call(model, x), target, 1.0)
            loss.backward()
