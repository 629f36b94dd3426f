"""torchvision detectors as the engine prunes, exports and measures them: the raw heads, decoded.

A torchvision detector takes a list of images, resizes them, and returns boxes after
non-maximum suppression, a graph of data-dependent shape that neither the dependency tracer nor
ONNX export follows. What a deployment runs on an accelerator is the part before: the network
on a batch of images, its anchors decoded to boxes. `DetectionHeads` is that part, holding the
detector's own backbone (with its FPN or extra layers) and head, so a torchvision checkpoint
loads into it unchanged:

    images (N, 3, H, W), RGB in [0, 1]  ->  Detections(scores (N, A, classes), boxes (N, A, 4))

Scores are the detector's own (RetinaNet: sigmoid; FCOS: sqrt(sigmoid(class) * sigmoid(centreness));
SSD: softmax, column 0 the background), boxes are x1, y1, x2, y2 in input pixels. Resizing,
score thresholds, top-k and NMS stay with the caller, and the report says so (`GRAPH_NOTE`).

Every output layer of the heads (anchors x classes, anchors x 4, anchors x 1 channels) is held
whole (`holds`): pruning it would change what an anchor means.
"""

from __future__ import annotations

import torch
from torch import nn

from secateurs.engine.outputs import Detections

# torchvision builders this module wraps, by the head they carry
DETECTORS = {
    "retinanet_resnet50_fpn": "retinanet", "retinanet_resnet50_fpn_v2": "retinanet",
    "fcos_resnet50_fpn": "fcos",
    "ssd300_vgg16": "ssd", "ssdlite320_mobilenet_v3_large": "ssd",
}
GRAPH_NOTE = ("raw heads decoded: per-anchor class scores and boxes (x1, y1, x2, y2, input pixels) for an input "
              "already resized to the job's shape, RGB in [0, 1]; score threshold, top-k and non-maximum "
              "suppression are left to the caller")
HELD_REASON = "a detection head's output layer: its channels are anchors times classes, box coordinates or centreness"
_OUTPUT_LAYERS = ("cls_logits", "bbox_reg", "bbox_ctrness")


class DetectionHeads(nn.Module):
    """A torchvision RetinaNet, FCOS or SSD without its resize and its post-processing."""

    output_fields = Detections._fields  # the ONNX output names (engine/outputs.py)
    graph_note = GRAPH_NOTE
    generated_inputs = "uniform"  # RGB in [0, 1], normalised in the graph (engine/inputs.py input_distribution)

    def __init__(self, detector: nn.Module, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.backbone, self.head = detector.backbone, detector.head
        # No parameters in these: the names of the detector's state dict stay the wrapper's.
        self.anchor_generator, self.box_coder = detector.anchor_generator, detector.box_coder
        self.register_buffer("mean", torch.tensor(detector.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(detector.transform.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> Detections:
        features = self.backbone((images - self.mean) / self.std)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        anchors = self._anchors(images[:1], features)  # the same for every image of a fixed size
        n, count = images.shape[0], anchors.shape[0]
        codes = out["bbox_regression"].reshape(n * count, 4)
        boxes = self._decode(codes, anchors.repeat(n, 1)).reshape(n, count, 4)
        logits = out["cls_logits"]
        if self.kind == "ssd":
            scores = logits.softmax(-1)
        elif self.kind == "fcos":
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(out["bbox_ctrness"]))
        else:
            scores = torch.sigmoid(logits)
        return Detections(scores=scores, boxes=boxes)

    def _anchors(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.models.detection.image_list import ImageList

        size = (int(image.shape[-2]), int(image.shape[-1]))
        return self.anchor_generator(ImageList(image, [size]), features)[0]

    def _decode(self, codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        if self.kind == "fcos":
            return self.box_coder.decode(codes, anchors)
        return self.box_coder.decode_single(codes, anchors)


def build_detector(name: str, detector: nn.Module) -> DetectionHeads:
    return DetectionHeads(detector, DETECTORS[name])


def holds(model: nn.Module) -> dict[str, str]:
    """The head's output layers of a DetectionHeads model, each held whole with why; {} for other models."""
    if not isinstance(model, DetectionHeads):
        return {}
    held: dict[str, str] = {}
    for part in ("classification_head", "regression_head"):
        head = model.head.get_submodule(part)
        prefix = f"head.{part}"
        if hasattr(head, "module_list"):  # SSD: one predictor per feature level; its last conv is the output
            for i, block in enumerate(head.module_list):
                convs = [n for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]
                held[f"{prefix}.module_list.{i}" + (f".{convs[-1]}" if convs[-1] else "")] = HELD_REASON
        else:
            for attr in _OUTPUT_LAYERS:
                if hasattr(head, attr):
                    held[f"{prefix}.{attr}"] = HELD_REASON
    return held

