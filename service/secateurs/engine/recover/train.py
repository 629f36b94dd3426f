"""Accuracy recovery after pruning: fine-tuning with distillation, checkpoints, progressive schedule.

    result = recover(pruned, original, make_loader(train, 128, shuffle=True), RecoverySpec(epochs=10), val=val)

The student trains in place; the teacher (the unpruned model) stays frozen in eval mode.
Loss = ce_weight * CE (labelled samples only; label -1 means unlabelled)
     + kd_weight * T^2 * KL(teacher/T || student/T)
     + feature_weight * relative MSE of adapted feature maps + attention_weight * attention transfer.
With no labels at all, recovery is distillation alone and the result reports fidelity
(top-1 agreement and KL with the teacher), since accuracy cannot be measured.

Checkpoints hold plain tensors and numbers only (loaded with weights_only=True), one per
epoch; a run resumes from the latest and continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from secateurs.engine.inputs import batch_size, call, split, to_device
from secateurs.engine.outputs import Agreement, compare, detach, label_rows, predictions
from secateurs.engine.recover.distill import (Distiller, FeatureTaps, LossWeights, evaluate, find_feature_points,
                                              loss_parts, split_batch)
from secateurs.engine.events import CancelCheck, Event, EventSink, check_cancel, ignore_events
from secateurs.engine.latency.devicelock import computing
from secateurs.engine.search.sensitivity import recalibrate_batchnorm
from secateurs.engine.spec import RecoverySpec, validate_recovery_spec
from secateurs.errors import BackendUnavailable, InvalidRequest

CHECKPOINT_VERSION = 1
_CHECKPOINT = re.compile(r"^recover-epoch(\d{4,})\.pt$")


@dataclass(frozen=True, kw_only=True)
class RecoveryResult:
    """history: one dict per epoch (the event data). metrics: accuracy (None without labels),
    agreement and kl with the teacher, on `val` when given, else the last training epoch."""

    history: list[dict[str, Any]]
    metrics: dict[str, float | None]
    label_free: bool
    note: str
    seconds: float
    resumed_from_epoch: int | None = None
    feature_points: tuple[str, ...] = ()
    adapted_points: tuple[str, ...] = ()


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float) -> float:
    """Linear warm-up from lr/warmup_steps to lr, then cosine annealing to 0 at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"recovery device {name!r} asked for, but no CUDA GPU is present")
    return torch.device(name)


def _is_unlabelled(loader: Iterable[Any], first: Any) -> bool:
    labelled = getattr(getattr(loader, "dataset", None), "labelled", None)
    if labelled is not None:
        return not labelled
    _, y = split_batch(first)
    return y is None or bool((y < 0).all())


def _optimizer(spec: RecoverySpec, student: nn.Module, distiller: Distiller | None) -> torch.optim.Optimizer:
    params = [p for p in student.parameters() if p.requires_grad]
    extra = list(distiller.parameters()) if distiller is not None else []
    groups = [{"params": [p for p in params if p.ndim > 1] + extra, "weight_decay": spec.decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # BN and bias: no decay
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.learning_rate)
    return torch.optim.SGD(groups, lr=spec.learning_rate, momentum=0.9, nesterov=True)


def _recipe(spec: RecoverySpec) -> dict[str, Any]:
    """The fields a checkpoint must agree with to be resumed (device and amp may change)."""
    d = asdict(spec)
    for k in ("device", "amp", "batch_size", "progressive_steps"):
        d.pop(k)
    d["feature_points"] = list(d["feature_points"]) if d["feature_points"] is not None else None
    return d


def latest_checkpoint(directory: Path | str | None) -> Path | None:
    """The checkpoint of the highest epoch in `directory`, or None."""
    if directory is None or not Path(directory).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def _save(directory: Path, epoch: int, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"recover-epoch{epoch:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written latest checkpoint
    for old in directory.iterdir():  # keep the last two
        m = _CHECKPOINT.match(old.name)
        if m and int(m.group(1)) < epoch - 1:
            old.unlink()


def _load(path: Path, device: torch.device, spec: RecoverySpec) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a corrupt file or one holding objects: never unpickle it
        raise InvalidRequest(f"checkpoint {path.name} cannot be read safely: {type(exc).__name__}",
                             field="checkpoint_dir") from None
    if state.get("version") != CHECKPOINT_VERSION or state.get("recipe") != _recipe(spec):
        raise InvalidRequest(f"checkpoint {path.name} was written by a different recovery recipe or version; "
                             f"use an empty checkpoint_dir", field="checkpoint_dir")
    return state


@dataclass
class _Run:
    """What one recovery run trains with; its state is what a checkpoint holds."""

    spec: RecoverySpec
    student: nn.Module
    teacher: nn.Module | None
    distiller: Distiller | None
    weights: LossWeights
    device: torch.device
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # None: full precision
    generator: torch.Generator | None
    steps_per_epoch: int
    step: int = 0

    def state(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"version": CHECKPOINT_VERSION, "recipe": _recipe(self.spec), "epoch": epoch, "step": self.step,
                "student": self.student.state_dict(),
                "distiller": self.distiller.state_dict() if self.distiller is not None else {},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "history": history,
                "rng": {"torch": torch.get_rng_state(), "cuda": cuda,
                        "loader": self.generator.get_state() if self.generator is not None else None}}

    def restore(self, state: dict[str, Any], name: str) -> None:
        try:
            self.student.load_state_dict(state["student"])
            if self.distiller is not None:
                self.distiller.load_state_dict(state["distiller"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise InvalidRequest(f"checkpoint {name} does not fit this model: {str(exc)[:200]}",
                                 field="checkpoint_dir") from None
        self.step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())  # dropout and augmentation draw from it
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        if self.generator is not None and rng.get("loader") is not None:
            self.generator.set_state(rng["loader"].cpu())  # the shuffling order of the next epochs

    def train_epoch(self, loader: Iterable[Any], cancel: CancelCheck | None) -> dict[str, Any]:
        """One epoch (at most steps_per_epoch steps); returns the training part of the history row."""
        spec, student, teacher = self.spec, self.student, self.teacher
        total = spec.epochs * self.steps_per_epoch
        warmup = round(spec.warmup_epochs * self.steps_per_epoch)
        points = self.distiller.points if self.distiller is not None else []
        sums: dict[str, float] = dict.fromkeys(("loss", "ce", "kd", "feature", "attention"), 0.0)
        correct = labelled = seen = steps = 0
        agreement = Agreement()
        lr = spec.learning_rate
        student.train()
        t_points = points if teacher is not None else []
        with FeatureTaps(student, points) as s_taps, FeatureTaps(teacher or student, t_points) as t_taps:
            for i, batch in enumerate(loader):
                if i >= self.steps_per_epoch:
                    break
                check_cancel(cancel)
                x, y = split_batch(batch)
                if y is not None and not bool((y >= 0).any()):
                    y = None  # unlabelled (a dense model's generated or box-scored images): nothing to count
                x, y = to_device(x, self.device, non_blocking=True), None if y is None else y.to(self.device)
                lr = lr_at(self.step, total, warmup, spec.learning_rate)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                amp = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
                with computing(), amp:  # a step never runs while another job measures on these cores
                    logits = call(student, x)
                    ref = None
                    if teacher is not None and self.weights.needs_teacher:
                        with torch.no_grad():
                            ref = call(teacher, x)
                    parts = loss_parts(logits, ref, y, self.weights, self.distiller, s_taps.outputs, t_taps.outputs)
                    loss = sum(parts.values(), torch.zeros((), device=self.device))
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.step += 1
                steps += 1
                size = batch_size(x)
                seen += size
                sums["loss"] += float(loss.detach()) * size
                for k, v in parts.items():
                    sums[k] += float(v.detach()) * size
                if y is not None:
                    pred, rows = predictions(detach(logits)), label_rows(y)  # per example or per pixel
                    labelled += int((rows >= 0).sum())
                    correct += int((pred[rows >= 0] == rows[rows >= 0]).sum())
                if ref is not None:
                    agreement = agreement.add(compare(detach(logits), ref))  # examples, positions or anchors
        return {**{k: v / max(seen, 1) for k, v in sums.items()}, "lr": lr, "steps": steps,
                "train_accuracy": correct / labelled if labelled else None,
                "train_agreement": agreement.agreement if teacher is not None and self.weights.needs_teacher
                else None}


def _steps_per_epoch(loader: Iterable[Any], spec: RecoverySpec) -> int:
    try:
        steps: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps = None
    if spec.max_steps_per_epoch is not None:
        steps = min(steps or spec.max_steps_per_epoch, spec.max_steps_per_epoch)
    if not steps:
        raise InvalidRequest("a loader without a length needs recovery.max_steps_per_epoch",
                             field="recovery.max_steps_per_epoch")
    return steps


def recover(student: nn.Module, teacher: nn.Module | None, train_loader: Iterable[Any],
            spec: RecoverySpec = RecoverySpec(), *, val: Iterable[Any] | None = None,
            on_event: EventSink = ignore_events, cancel: CancelCheck | None = None,
            checkpoint_dir: Path | str | None = None) -> RecoveryResult:
    """Fine-tune the pruned `student` in place, distilling from the frozen `teacher`.

    BatchNorm is recalibrated first (forward passes on `recalibration_batches` training
    batches). Emits one Event(stage="recover", kind="progress") per epoch, checks `cancel`
    before every step, and resumes from the latest checkpoint in `checkpoint_dir`.
    Raises InvalidRequest for a bad spec or checkpoint, Cancelled when cancelled.
    """
    validate_recovery_spec(spec)
    start = time.perf_counter()
    check_cancel(cancel)
    device = _resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    try:
        first = next(iter(train_loader))
    except StopIteration:
        raise InvalidRequest("the training data is empty", field="data") from None
    label_free = _is_unlabelled(train_loader, first)
    if label_free and teacher is None:
        raise InvalidRequest("unlabelled data needs the original model to distil from", field="data")
    t = teacher is not None
    weights = LossWeights(ce=0.0 if label_free else spec.ce_weight,
                          kd=(max(spec.kd_weight, 1.0) if label_free else spec.kd_weight) if t else 0.0,
                          feature=spec.feature_weight if t else 0.0, attention=spec.attention_weight if t else 0.0,
                          temperature=spec.kd_temperature, label_smoothing=spec.label_smoothing)
    steps_per_epoch = _steps_per_epoch(train_loader, spec)
    teacher_mode = teacher.training if teacher is not None else False
    teacher_device = next(teacher.parameters()).device if teacher is not None else device
    student_device = next(student.parameters()).device
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    try:
        checkpoint = latest_checkpoint(checkpoint_dir)
        probe = to_device(split(split_batch(first)[0], 2)[0], device)
        distiller: Distiller | None = None
        if teacher is not None and (weights.feature > 0 or weights.attention > 0):
            points = list(spec.feature_points or find_feature_points(teacher, probe))
            distiller = Distiller.build(student, teacher, points, probe).to(device)
            if not distiller.points:
                on_event(Event(stage="recover", kind="log", message="no feature points: map distillation is off"))
        if checkpoint is None and spec.recalibration_batches:
            batches = [to_device(split_batch(b)[0], device) for _, b in zip(range(spec.recalibration_batches), train_loader)]
            recalibrate_batchnorm(student, batches)  # the pruned layers' statistics changed
            if distiller is not None and weights.feature > 0:
                distiller.fit_adapters(student, teacher, batches[:4])
            on_event(Event(stage="recover", kind="log", message=f"BatchNorm recalibrated on {len(batches)} batches"))

        use_amp = spec.amp and device.type == "cuda"
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
        run = _Run(spec=spec, student=student, teacher=teacher, distiller=distiller, weights=weights, device=device,
                   optimizer=_optimizer(spec, student, distiller),
                   scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
                   amp_dtype=amp_dtype, generator=getattr(train_loader, "generator", None),
                   steps_per_epoch=steps_per_epoch)
        history: list[dict[str, Any]] = []
        resumed_from = None
        if checkpoint is not None:
            state = _load(checkpoint, device, spec)
            run.restore(state, checkpoint.name)
            resumed_from, history = int(state["epoch"]), list(state["history"])
            on_event(Event(stage="recover", kind="log", message=f"resumed after epoch {resumed_from}"))

        for epoch in range(len(history) + 1, spec.epochs + 1):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **run.train_epoch(train_loader, cancel)}
            v = evaluate(student, val, teacher) if val is not None else {}
            row.update(val_accuracy=v.get("accuracy"), val_agreement=v.get("agreement"), val_kl=v.get("kl"),
                       seconds=round(time.perf_counter() - t0, 3))
            history.append(row)
            if checkpoint_dir is not None:
                _save(Path(checkpoint_dir), epoch, run.state(epoch, history))
            on_event(Event(stage="recover", kind="progress", progress=epoch / spec.epochs,
                           message=f"epoch {epoch}/{spec.epochs}", data=dict(row)))
    finally:
        student.to(student_device).eval()  # handed back where it came from: export and benchmark follow
        if teacher is not None:
            teacher.to(teacher_device).train(teacher_mode)
    return _result(history, val, label_free, resumed_from, distiller, start)


def _result(history: list[dict[str, Any]], val: Iterable[Any] | None, label_free: bool, resumed_from: int | None,
            distiller: Distiller | None, start: float) -> RecoveryResult:
    last = history[-1] if history else {}
    if val is not None:
        metrics = {k: last.get(f"val_{k}") for k in ("accuracy", "agreement", "kl")}
        where = "on the validation data"
    else:
        metrics = {"accuracy": last.get("train_accuracy"), "agreement": last.get("train_agreement"),
                   "kl": None}
        where = "on the last training epoch (no validation data)"
    if label_free:
        note = ("the data has no labels: recovery was distillation only and accuracy could not be measured; "
                f"fidelity to the original model (top-1 agreement, KL) is reported {where}")
    else:
        note = f"accuracy {where}"
    return RecoveryResult(history=history, metrics=metrics, label_free=label_free, note=note,
                          seconds=round(time.perf_counter() - start, 3), resumed_from_epoch=resumed_from,
                          feature_points=tuple(distiller.points) if distiller else (),
                          adapted_points=tuple(distiller.adapted_points()) if distiller else ())
