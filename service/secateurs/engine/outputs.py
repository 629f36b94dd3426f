"""A model's output as the engine reads it: class scores, and for a detector its boxes too.

A classifier returns (N, classes). A segmentation network returns (N, classes, H, W), often
inside a dict (torchvision's {"out": ...}). A detector (engine/intake/detection.py) returns
`Detections`: per anchor, class probabilities and decoded boxes. Every quality figure of the
engine compares a model's outputs with the original's, and they are all computed here, once:

- `compare` sums top-1 agreement and divergence over rows: examples, positions of a dense output,
  or anchors, where agreement is weighted by the original's foreground score and the boxes are
  compared by IoU under the same weight (score-weighted box agreement);
- `distillation_loss` is the differentiable form recovery and Taylor importance use;
- `predictions` are the classes labels are checked against; with per-pixel labels, `confusion`
  and `iou_figures` give the mean IoU; with boxes (COCO layout), `coco_detections` applies the
  post-processing a deployment runs after the graph (`POSTPROCESS`) and `coco_map` scores them.

A dict or tuple holding exactly one tensor is unwrapped by a forward hook on the model
(`unwrap_single_output`), so the exported ONNX model has the one output a deployment reads.
Other outputs with several tensors (an auxiliary head) are refused with the names of the outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from secateurs.errors import InvalidRequest


class Detections(NamedTuple):
    """A detector's outputs before non-maximum suppression, one row per anchor."""

    scores: torch.Tensor  # (N, anchors, classes): probabilities; column 0 is the background (torchvision)
    boxes: torch.Tensor  # (N, anchors, 4): decoded x1, y1, x2, y2 in input pixels


Output = torch.Tensor | Detections


def class_scores(output: Output) -> torch.Tensor:
    """Rows of class scores: (N, C) unchanged; (N, C, *spatial) -> one row per position;
    Detections -> one row per anchor."""
    if isinstance(output, Detections):
        return output.scores.reshape(-1, output.scores.shape[-1])
    if output.dim() <= 2:
        return output
    return output.movedim(1, -1).reshape(-1, output.shape[1])


def is_dense(output: Output) -> bool:
    """Scores per position (segmentation) or per anchor (detection), not per example."""
    return isinstance(output, Detections) or output.dim() > 2


def scored_per(output: Output) -> str:
    """What one row of the quality figures is: 'example', 'position' or 'anchor'."""
    return "anchor" if isinstance(output, Detections) else "position" if is_dense(output) else "example"


def output_tensors(output: Output) -> tuple[torch.Tensor, ...]:
    """The tensors of an output, in the order of `output_names`."""
    return tuple(output) if isinstance(output, Detections) else (output,)


def detach(output: Output) -> Output:
    return Detections(*(t.detach().float() for t in output)) if isinstance(output, Detections) \
        else output.detach().float()


def numel(output: Output) -> int:
    return sum(t.numel() for t in output_tensors(output))


def predictions(output: Output) -> torch.Tensor:
    """The predicted class of every row (what labels are checked against)."""
    return class_scores(output).argmax(-1)


def label_rows(labels: torch.Tensor) -> torch.Tensor:
    """Labels in the order of `class_scores`' rows: one per example, or one per pixel of masks (N, H, W)."""
    return labels.reshape(-1)


def confusion(output: Output, labels: torch.Tensor) -> torch.Tensor:
    """(classes, classes) counts of (label, prediction) over the labelled rows (label -1 is ignored).
    Raises InvalidData when a label names a class the model does not have."""
    from secateurs.errors import InvalidData

    classes = class_scores(output).shape[-1]
    y, p = label_rows(labels), predictions(output)
    keep = y >= 0
    y, p = y[keep], p[keep]
    if y.numel() and int(y.max()) >= classes:
        raise InvalidData(f"the labels name class {int(y.max())}; the model scores {classes} classes (0-{classes - 1}; "
                          f"255 in a mask means ignore)")
    return torch.bincount(y * classes + p, minlength=classes * classes).reshape(classes, classes)


def iou_figures(counts: torch.Tensor) -> dict[str, Any]:
    """Mean IoU over the classes present in the labels or the predictions, pixel accuracy, and how many
    classes the mean is over (Pascal VOC's convention: a class absent from both is not scored)."""
    counts = counts.double()
    hits, labelled, predicted = counts.diagonal(), counts.sum(1), counts.sum(0)
    union = labelled + predicted - hits
    present = union > 0
    total = float(counts.sum())
    return {"miou": float((hits[present] / union[present]).mean()) if bool(present.any()) else None,
            "pixel_accuracy": float(hits.sum()) / total if total else None, "miou_classes": int(present.sum())}


# What a deployment runs after a detector's graph before COCO scores it: torchvision RetinaNet's
# defaults (score threshold, candidates kept, per-class NMS IoU), and COCO's own 100 boxes an image.
POSTPROCESS = {"score_threshold": 0.05, "top_k": 1000, "nms_iou": 0.5, "per_image": 100}


def coco_detections(output: Detections, input_size: tuple[int, int], image_ids: list[int],
                    sizes: list[tuple[int, int]],
                    postprocess: Mapping[str, float] = POSTPROCESS) -> list[dict[str, Any]]:
    """COCO result rows ({image_id, category_id, bbox [x, y, w, h], score}) of a batch of raw
    detector outputs: score threshold, top-k, per-class NMS, the best `per_image` kept, boxes clipped
    to the input (`input_size`: height, width) and scaled from its pixels to each image's (`sizes`:
    width, height). Score column c is category c (torchvision's convention); column 0, the
    background, is never a detection."""
    from torchvision.ops import batched_nms

    rows: list[dict[str, Any]] = []
    height, width = input_size
    for scores, boxes, image_id, (w, h) in zip(output.scores.float(), output.boxes.float(), image_ids, sizes):
        flat = scores[:, 1:].reshape(-1)
        keep = torch.nonzero(flat >= postprocess["score_threshold"]).squeeze(1)
        keep = keep[flat[keep].topk(min(int(postprocess["top_k"]), keep.numel())).indices]
        anchor, category = keep // (scores.shape[1] - 1), keep % (scores.shape[1] - 1) + 1
        picked = boxes[anchor].clone()
        picked[:, 0::2] = picked[:, 0::2].clamp(0, width) * (w / width)
        picked[:, 1::2] = picked[:, 1::2].clamp(0, height) * (h / height)
        kept = batched_nms(picked, flat[keep], category, postprocess["nms_iou"])[: int(postprocess["per_image"])]
        for box, score, cat in zip(picked[kept].tolist(), flat[keep][kept].tolist(), category[kept].tolist()):
            rows.append({"image_id": int(image_id), "category_id": int(cat), "score": float(score),
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return rows


def coco_map(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO's box mAP (pycocotools): mAP over IoU 0.50:0.95, at 0.50, with the image and box counts."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    boxes = sum(1 for a in ground_truth["annotations"] if not a["iscrowd"])
    counts = {"map_images": len(ground_truth["images"]), "map_boxes": boxes}
    if not detections or not boxes:  # pycocotools cannot load an empty result; nothing found scores 0
        return {"map": 0.0 if boxes else None, "map50": 0.0 if boxes else None, **counts}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        truth = COCO()
        truth.dataset = {"info": {}, **ground_truth}
        truth.createIndex()
        scored = COCOeval(truth, truth.loadRes(detections), "bbox")
        scored.params.imgIds = [im["id"] for im in ground_truth["images"]]
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    return {"map": max(0.0, float(scored.stats[0])), "map50": max(0.0, float(scored.stats[1])), **counts}


_EPS = 1e-6


def _binary_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of independent per-class probabilities, summed over classes: (rows,)."""
    s, t = student.clamp(_EPS, 1 - _EPS), teacher.clamp(_EPS, 1 - _EPS)
    return (t * (t / s).log() + (1 - t) * ((1 - t) / (1 - s)).log()).sum(-1)


def _foreground_weight(scores: torch.Tensor) -> torch.Tensor:
    """How much an anchor counts: the original's highest score of a class other than the background."""
    return scores[..., 1:].amax(-1) if scores.shape[-1] > 1 else scores[..., 0]


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (boxes x1, y1, x2, y2), not all pairs as torchvision.ops.box_iou."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = _area(a) + _area(b) - inter
    # two boxes of no area agree only when they are the same box (inter / union is 0 / 0 there)
    return torch.where(union > _EPS, inter / union.clamp_min(_EPS), (a == b).all(-1).to(inter.dtype))


@dataclass
class Agreement:
    """Sums over rows of a model's outputs against the original's; `add` them batch by batch."""

    rows: float = 0.0  # examples, positions or anchors
    kl: float = 0.0  # summed divergence per row
    weight: float = 0.0  # what agreement is divided by: rows, or the anchors' foreground scores
    agree: float = 0.0
    box_iou: float | None = None  # detection: score-weighted IoU of the boxes

    def add(self, other: "Agreement") -> "Agreement":
        box = None if other.box_iou is None else (self.box_iou or 0.0) + other.box_iou
        return Agreement(self.rows + other.rows, self.kl + other.kl, self.weight + other.weight,
                         self.agree + other.agree, box)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.weight if self.weight else None

    @property
    def divergence(self) -> float | None:
        return self.kl / self.rows if self.rows else None

    @property
    def box_agreement(self) -> float | None:
        return self.box_iou / self.weight if self.box_iou is not None and self.weight else None

    @property
    def fidelity_loss(self) -> float:
        """What the search minimises without labels: divergence, plus 1 - box agreement for a detector."""
        box = self.box_agreement
        return (self.divergence or 0.0) + (1.0 - box if box is not None else 0.0)

    def figures(self) -> dict[str, float | None]:
        shown = {"agreement": self.agreement, "kl": self.divergence}
        return {**shown, "box_agreement": self.box_agreement} if self.box_iou is not None else shown


def compare(output: Output, reference: Output) -> Agreement:
    """Agreement and divergence of one batch of outputs with the original's (no gradients kept)."""
    with torch.no_grad():
        if isinstance(output, Detections):
            s, t = output.scores.float(), reference.scores.float()
            w = _foreground_weight(t)
            same = (s.argmax(-1) == t.argmax(-1)).float()
            iou = _paired_iou(output.boxes.float(), reference.boxes.float())
            return Agreement(rows=float(w.numel()), kl=float(_binary_kl(s, t).sum()), weight=float(w.sum()),
                             agree=float((w * same).sum()), box_iou=float((w * iou).sum()))
        out, ref = class_scores(output.float()), class_scores(reference.float())
        kl = F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1), log_target=True, reduction="sum")
        return Agreement(rows=float(out.shape[0]), kl=float(kl), weight=float(out.shape[0]),
                         agree=float((out.argmax(-1) == ref.argmax(-1)).sum()))


def distillation_loss(student: Output, teacher: Output, temperature: float) -> torch.Tensor:
    """Differentiable distance to the teacher's outputs. Class scores: KL of the softened
    distributions times T^2 (Hinton 2015), per row. Detections: the per-class binary KL per anchor
    plus the generalised IoU loss of the boxes weighted by the teacher's foreground score
    (probabilities are not softened, so the temperature does not apply)."""
    if isinstance(student, Detections):
        from torchvision.ops import generalized_box_iou_loss

        w = _foreground_weight(teacher.scores.float())
        boxes = generalized_box_iou_loss(student.boxes.float().reshape(-1, 4), teacher.boxes.float().reshape(-1, 4),
                                         reduction="none").reshape(w.shape)
        return _binary_kl(student.scores.float(), teacher.scores.float()).mean() + \
            (w * boxes).sum() / w.sum().clamp_min(_EPS)
    t = temperature
    s, r = class_scores(student), class_scores(teacher)  # dense: per position
    return F.kl_div(F.log_softmax(s.float() / t, -1), F.log_softmax(r.float() / t, -1),
                    log_target=True, reduction="batchmean") * (t * t)


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


def output_names(model: nn.Module) -> tuple[str, ...]:
    """The ONNX names of the model's outputs: a detector's fields ('scores', 'boxes'); else the one
    output's key in the dict it came in ('out', 'logits'), else 'output'."""
    fields = getattr(model, "output_fields", None)  # a detector declares its outputs (engine/intake/detection.py)
    if fields is not None:
        return tuple(fields)
    return (getattr(model, _NAME_ATTRIBUTE, OUTPUT_NAME),)


def unwrap_single_output(model: nn.Module, output: Any) -> Output:
    """Make `model` return its only output tensor (a hook, so layer names do not change); return it.
    Detections pass as they are. Raises InvalidRequest naming the outputs when there is not exactly
    one tensor."""
    if isinstance(output, (torch.Tensor, Detections)):
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
        f"supported (torchvision segmentation: aux_loss=False; a torchvision detector is taken by its "
        f"name, e.g. torchvision:ssdlite320_mobilenet_v3_large)", field="model.arch")
