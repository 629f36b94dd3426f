"""Distillation from the unpruned model: output KL, feature maps and attention transfer.

The student is a pruned copy of the teacher, so module names match and spatial sizes
match; only channel counts differ. Feature points are found on the teacher: the last
module to return at each spatial resolution (the end of each stage, where FitNets and
attention transfer take their hints). Where the student has fewer channels than the
teacher at a point, a 1x1 convolution (student -> teacher channels) is trained with
the student; it starts at the least-squares fit of student to teacher features, so
the loss measures what a linear map cannot explain rather than a random projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from secateurs.engine.outputs import Agreement, Output, compare, distillation_loss, label_rows, predictions
from secateurs.engine.inputs import Batch, batch_size, call, to_device
from secateurs.engine.latency.devicelock import computing


def kd_loss(student_logits: Output, teacher_logits: Output, temperature: float) -> torch.Tensor:
    """The distance recovery distils by (engine/outputs.py: softened KL, or a detector's scores and boxes)."""
    return distillation_loss(student_logits, teacher_logits, temperature)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention (Zagoruyko & Komodakis 2017): mean over channels of |f|^2, flattened, L2-normalised."""
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance of the attention maps, mean over the batch; channel counts may differ."""
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(1).mean()


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared error relative to the teacher's energy, per sample: scale-free, so stages weigh alike."""
    err = (student.float() - teacher.float()).pow(2).flatten(1).sum(1)
    return (err / teacher.float().pow(2).flatten(1).sum(1).clamp_min(1e-8)).mean()


class FeatureTaps:
    """Forward hooks that keep the latest output of named modules; removed on exit.

    >>> with FeatureTaps(model, ["layer1"]) as taps:
    ...     model(x); taps.outputs["layer1"].shape
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model, self.names = model, list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureTaps:
        for name in self.names:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: self.outputs.__setitem__(name, out)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs.clear()


def find_feature_points(teacher: nn.Module, example: torch.Tensor) -> list[str]:
    """The last module to return a 4-D map at each spatial resolution above 1x1, in execution order.

    Modules called more than once (a shared ReLU) are skipped: their output is ambiguous.
    """
    order: list[tuple[str, tuple[int, int]]] = []
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append((name, (int(out.shape[-2]), int(out.shape[-1]))))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in teacher.named_modules() if n]
    was_training = teacher.training
    try:
        teacher.eval()
        with torch.no_grad():
            call(teacher, example)
    finally:
        for h in handles:
            h.remove()
        teacher.train(was_training)
    last: dict[tuple[int, int], int] = {}
    for i, (name, size) in enumerate(order):
        if calls[name] == 1:
            last[size] = i
    return [order[i][0] for i in sorted(last.values())]


class Distiller(nn.Module):
    """Feature points, their adapters (a ModuleDict, saved in checkpoints) and the two map losses."""

    def __init__(self, points: Sequence[str], adapters: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.points = list(points)
        self.adapters = nn.ModuleDict({_key(p): nn.Conv2d(cs, ct, 1, bias=False) for p, (cs, ct) in adapters.items()})

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module, points: Sequence[str], example: torch.Tensor) -> Distiller:
        """Keep the points both models have with equal spatial size; add adapters where channels differ."""
        kept: list[str] = []
        adapters: dict[str, tuple[int, int]] = {}
        usable = [p for p in points if _has(student, p) and _has(teacher, p)]
        s_out, t_out = _features(student, usable, [example]), _features(teacher, usable, [example])
        for p in usable:
            s, t = s_out.get(p), t_out.get(p)
            if s is None or t is None or s[0].ndim != 4 or s[0].shape[-2:] != t[0].shape[-2:]:
                continue
            kept.append(p)
            if s[0].shape[1] != t[0].shape[1]:
                adapters[p] = (int(s[0].shape[1]), int(t[0].shape[1]))
        return cls(kept, adapters)

    def adapted_points(self) -> list[str]:
        return [p for p in self.points if _key(p) in self.adapters]

    def fit_adapters(self, student: nn.Module, teacher: nn.Module, batches: Sequence[torch.Tensor],
                     max_rows: int = 8192) -> None:
        """Initialise each adapter by ridge regression of teacher on student features (pixels as rows)."""
        names = self.adapted_points()
        if not names or not batches:
            return
        s_out, t_out = _features(student, names, batches), _features(teacher, names, batches)
        with torch.no_grad():
            for p in names:
                s = torch.cat([f.float().permute(0, 2, 3, 1).flatten(0, 2) for f in s_out[p]])[:max_rows]
                t = torch.cat([f.float().permute(0, 2, 3, 1).flatten(0, 2) for f in t_out[p]])[:max_rows]
                gram = s.T @ s
                ridge = 1e-3 * gram.diagonal().mean().clamp_min(1e-8) * torch.eye(gram.shape[0], device=gram.device)
                w = torch.linalg.solve(gram + ridge, s.T @ t)  # (cs, ct)
                conv = self.adapters[_key(p)]
                conv.weight.copy_(w.T.reshape(conv.weight.shape).to(conv.weight.dtype))

    def losses(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
               *, features: bool, attention: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(feature loss, attention loss), each the mean over points; None when not asked or no point."""
        present = [p for p in self.points if p in student and p in teacher]
        if not present:
            return None, None
        feat = att = None
        if features:
            feat = sum(feature_loss(self._adapt(p, student[p]), teacher[p]) for p in present) / len(present)
        if attention:
            att = sum(attention_loss(student[p], teacher[p]) for p in present) / len(present)
        return feat, att  # type: ignore[return-value]

    def _adapt(self, point: str, feature: torch.Tensor) -> torch.Tensor:
        key = _key(point)
        return self.adapters[key](feature) if key in self.adapters else feature


def _key(point: str) -> str:
    return point.replace(".", "__")  # ModuleDict keys cannot hold dots


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _features(model: nn.Module, names: Sequence[str], batches: Iterable[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Outputs at `names` for each batch, in eval mode and without gradients (the mode is restored)."""
    out: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, names) as taps, torch.no_grad():
            for x in batches:
                call(model, x)
                for n, f in taps.outputs.items():
                    if isinstance(f, torch.Tensor):
                        out.setdefault(n, []).append(f.detach().clone())
    finally:
        model.train(was_training)
    return out


def split_batch(batch: Any) -> tuple[Batch, torch.Tensor | None]:
    """(inputs, labels or None) from a batch that is a tensor or an (inputs, labels, ...) sequence."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    x, y = batch[0], batch[1] if len(batch) > 1 else None
    return x, (torch.as_tensor(y) if y is not None else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], teacher: nn.Module | None = None, *,
             max_batches: int | None = None) -> dict[str, float | None]:
    """Accuracy over labelled samples (None when there are none), and top-1 agreement and KL
    (per sample) with `teacher` when given. Eval mode; both models' modes are restored."""
    modes = [(m, m.training) for m in (model, teacher) if m is not None]
    device = next(model.parameters()).device
    model.eval()
    if teacher is not None:
        teacher.eval()
    correct = labelled = n = 0
    totals = Agreement()
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = split_batch(batch)
            x = to_device(x, device)
            with computing():
                out = call(model, x)
                ref = call(teacher, x) if teacher is not None else None
            n += batch_size(x)
            if y is not None:
                y = label_rows(y.to(device))  # per example, or per pixel of a mask
                mask = y >= 0
                labelled += int(mask.sum())
                correct += int((predictions(out)[mask] == y[mask]).sum())
            if ref is not None:
                totals = totals.add(compare(out, ref))  # examples, or positions of a dense output
    finally:
        for m, mode in modes:
            m.train(mode)
    fidelity = totals.figures() if teacher is not None and n > 0 else {"agreement": None, "kl": None}
    return {"accuracy": correct / labelled if labelled else None, **fidelity, "samples": float(n)}


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The weights in effect for one run (label-free runs have ce 0 and kd at least 1)."""

    ce: float
    kd: float
    feature: float
    attention: float
    temperature: float
    label_smoothing: float = 0.0

    @property
    def needs_teacher(self) -> bool:
        return bool(self.kd or self.feature or self.attention)


def loss_parts(logits: torch.Tensor, reference: torch.Tensor | None, labels: torch.Tensor | None,
               weights: LossWeights, distiller: Distiller | None = None,
               student_maps: dict[str, torch.Tensor] | None = None,
               teacher_maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The weighted terms of the loss by name ("ce", "kd", "feature", "attention"); absent ones are left out.

    Cross-entropy covers labelled samples only (label -1 means unlabelled)."""
    parts: dict[str, torch.Tensor] = {}
    if labels is not None and weights.ce > 0 and bool((labels >= 0).any()):
        parts["ce"] = weights.ce * F.cross_entropy(logits.float(), labels, ignore_index=-1,
                                                   label_smoothing=weights.label_smoothing)
    if reference is not None and weights.kd > 0:
        parts["kd"] = weights.kd * kd_loss(logits, reference, weights.temperature)
    if distiller is not None and student_maps is not None and teacher_maps is not None:
        f, a = distiller.losses(student_maps, teacher_maps, features=weights.feature > 0,
                                attention=weights.attention > 0)
        if f is not None:
            parts["feature"] = weights.feature * f
        if a is not None:
            parts["attention"] = weights.attention * a
    return parts
