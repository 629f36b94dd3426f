"""The job's data in two roles that never share an image: calibration and evaluation.

    calibration  BatchNorm recalibration, sensitivity, every search decision (the quality of
                 each candidate, the refinement, the choice between plans) and recovery's
                 per-epoch monitoring: `calibration_samples` images to score plans and as many
                 again to recalibrate BatchNorm
    evaluation   the accuracy the report gives, before and after, and the accuracy limit:
                 the evaluation split without any calibration image (`evaluation_samples` of
                 it, seeded, or all of it), with its sample count and a 95% Wilson interval

Calibration comes from a train split (of the training data, else of the evaluation data's
archive when it has one), so the default never calibrates on the split users report on.
Only when there is no train split apart from the evaluation split is calibration carved
from it (seeded), and the evaluation is the rest; the report says so. Without data both
roles are generated inputs from different seeds, and quality is fidelity to the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from secateurs.engine.outputs import (Agreement, Detections, Output, coco_detections, coco_map, compare, confusion,
                                      iou_figures, numel, predictions)
from secateurs.engine.inputs import batch_size, call, generate, shapes, split, stack
from secateurs.engine.intake.data import generated_dataset, load_dataset
from secateurs.engine.spec import DataSpec, InputSpec, parse_inputs
from secateurs.engine.latency.devicelock import computing
from secateurs.engine.search.sensitivity import Calibration
from secateurs.errors import InvalidData, InvalidRequest

GENERATED_EVALUATION = 256  # generated inputs the fidelity of a job without data is measured on
_EVALUATION_SEED = 7919  # generated evaluation inputs never repeat the calibration ones (seed + 1)
_REFERENCE_CACHE_LIMIT = 20_000_000  # logits kept from the original model's pass (floats)


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """What the reported quality is measured on: `indices` of `dataset`, in batches."""

    dataset: Dataset
    indices: list[int]
    labelled: bool
    dense_labels: bool = False  # labels per pixel (masks): scored as mIoU, not accuracy
    box_labels: bool = False  # labels are boxes (COCO layout): a detector scored as COCO mAP
    batch_size: int = 64

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from DataLoader(Subset(self.dataset, self.indices), batch_size=self.batch_size, shuffle=False)

    def check_fits(self, output: Output) -> None:
        """Before any work: boxes need a detector with a score column for each of their categories."""
        if not self.box_labels:
            return
        if not isinstance(output, Detections):
            raise InvalidData("boxes (source 'coco') score a detector; this model's output is not detections")
        classes = output.scores.shape[-1]
        wanted = max((c["id"] for c in self.dataset.categories), default=0)
        if wanted >= classes:
            raise InvalidData(f"the boxes name category {wanted}; the detector scores {classes} columns (column c "
                              f"is category c, 0 the background)")


@dataclass(frozen=True, kw_only=True)
class DataRoles:
    """The two roles, the ids of the images in each (disjoint), and what the report says of them."""

    calibration: Calibration
    evaluation: Evaluation
    calibration_ids: list[str]
    evaluation_ids: list[str]
    summary: dict[str, Any]


def build_roles(data: DataSpec | None, train: DataSpec | None, inputs: Sequence[InputSpec] | Sequence[int], *,
                calibration_samples: int, evaluation_samples: int | None, seed: int,
                distribution: str = "normal") -> DataRoles:
    """The calibration and evaluation sets of a job (see the module docstring); without data, generated
    inputs of `distribution` (engine/inputs.py `input_distribution`)."""
    n, inputs = calibration_samples, parse_inputs(inputs)
    if data is None:
        return _generated(inputs, n, evaluation_samples or max(GENERATED_EVALUATION, n), seed, distribution)
    evaluated = load_dataset(data, inputs)
    source, note, carve = _calibration_source(data, train, evaluated, inputs)
    if len(evaluated) < (2 * n + 1 if carve else 1):
        raise InvalidData(f"the {data.split} split has {len(evaluated)} images: too few to "
                          + ("calibrate on 2x" + str(n) + " and evaluate on the rest" if carve else "evaluate on"))
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = order[: 2 * n]
    rest = order[2 * n:] if carve else list(range(len(evaluated)))
    if evaluation_samples is not None and evaluation_samples < len(rest):
        chosen = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed + 1))[:evaluation_samples]
        rest = [rest[i] for i in sorted(chosen.tolist())]
    calibration = _materialise(source, picked, n, inputs)
    evaluation = Evaluation(dataset=evaluated, indices=sorted(rest), labelled=bool(evaluated.labelled),
                            dense_labels=bool(getattr(evaluated, "dense_labels", False)),
                            box_labels=bool(getattr(evaluated, "box_labels", False)))
    calibration_ids = [_sample_id(source, i) for i in picked]
    evaluation_ids = [_sample_id(evaluated, i) for i in evaluation.indices]
    if set(calibration_ids) & set(evaluation_ids):  # never expected: stop rather than report a selected figure
        raise InvalidRequest("calibration and evaluation data share images; give a separate train split",
                             field="data")
    summary = {"calibration": {"split": data.split if carve else "train", "samples": min(n, len(picked)),
                               "recalibration_samples": max(0, len(picked) - n), "note": note},
               "evaluation": {"split": data.split, "samples": len(evaluation),
                              "of": len(evaluated) - (len(picked) if carve else 0),
                              "note": "never seen by the search or recovery" + (
                                  f"; a seeded {data.holdout_fraction:.0%} of the {data.split} split held out, "
                                  f"which recovery does not train on" if data.holdout == "held" else "") + (
                                  "; the image folder's labels are not read: per-image classes cannot score "
                                  "this model's dense output, which is scored by fidelity to the original"
                                  if data.ignore_labels else "")}}
    return DataRoles(calibration=calibration, evaluation=evaluation, calibration_ids=calibration_ids,
                     evaluation_ids=evaluation_ids, summary=summary)


def held_out(train: DataSpec, transform: Any) -> tuple[DataSpec, DataSpec]:
    """(evaluation, training) from one train split, when there is no other: a seeded part held out
    (DataSpec.holdout) to evaluate on, with `transform` (no augmentation), and the rest to train on."""
    return replace(train, transform=transform, holdout="held"), replace(train, holdout="kept")


def _calibration_source(data: DataSpec, train: DataSpec | None, evaluated: Any,
                        inputs: Sequence[InputSpec]) -> tuple[Any, str, bool]:
    """The dataset calibration draws from, what the report says of it, and whether it is carved
    from the evaluation split itself."""
    candidates = [("the training data", replace(train, split="train", transform=data.transform, limit=None,
                                                limit_per_class=None))] if train is not None else []
    candidates.append(("the train split of the evaluation data", replace(data, split="train", limit=None,
                                                                         limit_per_class=None)))
    for where, spec in candidates:
        if _same_images(spec, data):
            continue
        try:
            return load_dataset(spec, inputs), f"{where} (split train, without augmentation)", False
        except InvalidData:
            continue  # no train split there
    return evaluated, (f"carved, seeded, from the {data.split} split (no separate train split was given); "
                       f"the evaluation is the rest of it"), True


def _same_images(a: DataSpec, b: DataSpec) -> bool:
    """Whether two specs can share images: one split of one file, not two sides of one holdout."""
    sides = {a.holdout, b.holdout}
    return a.split == b.split and a.path is not None and b.path is not None and \
        Path(a.path).resolve() == Path(b.path).resolve() and sides != {"held", "kept"}


def _generated(specs: Sequence[InputSpec], n: int, evaluated: int, seed: int, distribution: str) -> DataRoles:
    generator = torch.Generator().manual_seed(seed + 1)
    batch = min(16, n)
    inputs = [generate(specs, min(batch, n - i), generator=generator, distribution=distribution)
              for i in range(0, n, batch)]
    dataset = generated_dataset(specs, evaluated, seed + _EVALUATION_SEED, distribution)
    drawn = "uniform in [0, 1]: the model normalises its images itself" if distribution == "uniform" else "normal"
    evaluation = Evaluation(dataset=dataset, indices=list(range(evaluated)), labelled=False)
    summary = {"calibration": {"split": None, "samples": n, "recalibration_samples": 0,
                               "note": f"generated inputs (no data; {drawn})"},
               "evaluation": {"split": None, "samples": evaluated, "of": evaluated,
                              "note": "generated inputs of another seed: quality is fidelity to the original "
                                      "model, not accuracy"}}
    return DataRoles(calibration=Calibration(inputs=inputs), evaluation=evaluation,
                     calibration_ids=[f"generated/{seed + 1}/{i}" for i in range(n)],
                     evaluation_ids=[f"generated/{seed + _EVALUATION_SEED}/{i}" for i in range(evaluated)],
                     summary=summary)


def _materialise(dataset: Any, picked: list[int], n: int, specs: Sequence[InputSpec]) -> Calibration:
    """The picked images as tensors: the first n score plans, the others recalibrate BatchNorm."""
    xs, ys = zip(*(dataset[i] for i in picked))
    got, wanted = shapes(xs[0]), tuple(tuple(s.shape[1:]) for s in specs)
    if got != wanted:
        raise InvalidRequest(f"data samples have shape {', '.join(map(str, got))}, the model's inputs are "
                             f"{', '.join(map(str, wanted))}; set the data transform (resize/crop) or the "
                             f"sequence length", field="data")
    x, batch = stack(xs), min(16, n)
    parts = split(x, n)
    scoring, recal = parts[0], parts[1] if len(parts) > 1 else None
    # Masks and boxes stay out of the search, which scores plans by fidelity; the evaluation scores mIoU, mAP.
    per_image = per_image_labels(dataset)
    labels = list(torch.tensor(ys)[:n].split(batch)) if per_image else None
    return Calibration(inputs=split(scoring, batch), labels=labels, real=True,
                       recalibration=split(recal, batch) if recal is not None else None)


def per_image_labels(dataset: Any) -> bool:
    """Whether a dataset's labels are one class an image (not masks, not boxes)."""
    return bool(dataset.labelled) and not getattr(dataset, "dense_labels", False) and \
        not getattr(dataset, "box_labels", False)


def _sample_id(dataset: Any, index: int) -> str:
    """What names one image: its member path in an ImageFolder, else its split and index."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return str(samples[index][0])
    ids = getattr(dataset, "ids", None)
    return str(ids[index]) if ids is not None else f"{type(dataset).__name__}/{index}"


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (accuracy) measured on n samples."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class Evaluator:
    """Quality on the evaluation set: accuracy (with labels; mIoU with per-pixel labels; COCO mAP with
    boxes), top-1 agreement and KL with the original model, each with its sample count. The original's
    outputs are kept from its own pass when they are small enough, else computed again beside each model."""

    def __init__(self, evaluation: Evaluation, original: nn.Module) -> None:
        self.evaluation, self.original = evaluation, original
        self._reference: list[Output] | None = None

    def quality(self, model: nn.Module) -> dict[str, Any]:
        """Accuracy (None without labels) with its Wilson interval, agreement, KL, and the sample count."""
        keep = self._reference is None and model is self.original
        kept: list[Output] = []
        correct = n = 0
        totals = Agreement()
        counts: torch.Tensor | None = None  # per-pixel labels: the confusion matrix
        found: list[dict[str, Any]] | None = [] if self.evaluation.box_labels else None  # boxes: COCO results
        with torch.no_grad():
            for i, (x, y) in enumerate(self.evaluation.batches()):
                with computing():
                    out = call(model, x)
                    ref = self._reference[i] if self._reference is not None else (
                        out if model is self.original else call(self.original, x))
                if keep:
                    kept.append(out)
                n += batch_size(x)
                totals = totals.add(compare(out, ref))  # a dense output: every position counts
                if self.evaluation.dense_labels:
                    part = confusion(out, y)
                    counts = part if counts is None else counts + part
                elif found is not None:
                    found.extend(self._detections(out, x, y))
                elif self.evaluation.labelled:
                    correct += int((predictions(out) == y).sum())
        if keep and sum(numel(t) for t in kept) <= _REFERENCE_CACHE_LIMIT:
            self._reference = kept
        accuracy = correct / n if per_image_labels(self.evaluation) and n else None
        boxes = coco_map(self.evaluation.dataset.ground_truth(self.evaluation.indices), found) \
            if found is not None else {}
        return {"accuracy": accuracy, "interval": list(wilson(correct, n)) if accuracy is not None else None,
                **totals.figures(), "samples": n, **(iou_figures(counts) if counts is not None else {}), **boxes}

    def _detections(self, out: Output, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
        """A batch's detections as COCO results (the categories were checked: Evaluation.check_fits)."""
        dataset, indices = self.evaluation.dataset, [int(i) for i in y]
        return coco_detections(out, tuple(x.shape[-2:]), dataset.image_ids(indices), dataset.image_sizes(indices))
