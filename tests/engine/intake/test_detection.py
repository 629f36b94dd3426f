"""torchvision detectors as raw heads: the same scores and boxes as the detector's own
post-processing, a torchvision checkpoint loading unchanged, the heads' output layers held, and
the fidelity figures that score a detector (engine/outputs.py)."""

from __future__ import annotations

import pytest
import torch

from secateurs.engine.intake.detection import DetectionHeads, holds
from secateurs.engine.intake.models import apply_state_dict, build_architecture, check_runs
from secateurs.engine.outputs import Detections, compare, distillation_loss, output_names, scored_per

SMALL = {"retinanet_resnet50_fpn": 64, "fcos_resnet50_fpn": 64, "ssdlite320_mobilenet_v3_large": 320}


def _detector(name: str, size: int) -> torch.nn.Module:
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    kwargs = {"num_classes": 3, "weights_backbone": None, "score_thresh": 0.0}
    if not name.startswith("ssd"):
        kwargs.update(min_size=size, max_size=size)  # no resize: the raw heads see the same pixels
    torch.manual_seed(0)
    return builder(weights=None, **kwargs).eval()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_detection_of_the_torchvision_model_is_a_row_of_the_raw_heads(name):
    size = SMALL[name]
    detector = _detector(name, size)
    heads = build_architecture(f"torchvision:{name}", {"num_classes": 3}).eval()
    apply_state_dict(heads, detector.state_dict())  # a torchvision checkpoint loads as it is
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (found,) = detector([image[0]])
        out = heads(image)
    assert isinstance(out, Detections) and out.scores.shape[:2] == out.boxes.shape[:2]
    assert out.scores.shape[-1] == 3 and len(found["boxes"]) > 0
    boxes = out.boxes[0].clamp(0, size)  # torchvision clips its boxes to the image
    for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
        same_box = (boxes - box).abs().amax(-1) < 1e-3
        assert same_box.any(), f"{name}: box {box.tolist()} is not among the decoded anchors"
        assert (out.scores[0][same_box, label] - score).abs().min() < 1e-4


def test_the_heads_output_layers_are_held_and_named_as_outputs():
    model = build_architecture("torchvision:retinanet_resnet50_fpn", {"num_classes": 3})
    held = holds(model)
    assert set(held) == {"head.classification_head.cls_logits", "head.regression_head.bbox_reg"}
    ssd = build_architecture("torchvision:ssdlite320_mobilenet_v3_large", {"num_classes": 3})
    levels = len(ssd.head.classification_head.module_list)
    assert len(holds(ssd)) == 2 * levels and all(name.endswith(".1") for name in holds(ssd))
    assert output_names(model) == ("scores", "boxes") and isinstance(model, DetectionHeads)
    assert scored_per(check_runs(model, (1, 3, 64, 64))) == "anchor"


def _detections(scores: torch.Tensor, boxes: torch.Tensor) -> Detections:
    return Detections(scores=scores[None], boxes=boxes[None])


def test_fidelity_weighs_anchors_by_the_originals_foreground_score():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.9, 0.05, 0.05]])  # a confident object, then background
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    reference = _detections(scores, boxes)
    same = compare(reference, reference)
    assert same.agreement == pytest.approx(1.0) and same.box_agreement == pytest.approx(1.0)
    assert same.divergence == pytest.approx(0.0, abs=1e-5) and same.fidelity_loss == pytest.approx(0.0, abs=1e-5)
    background_moved = _detections(scores, boxes + torch.tensor([[0.0, 0, 0, 0], [2.0, 2, 2, 2]]))
    object_moved = _detections(scores, boxes + torch.tensor([[5.0, 5, 5, 5], [0.0, 0, 0, 0]]))
    assert compare(object_moved, reference).box_agreement < compare(background_moved, reference).box_agreement < 1.0
    assert float(distillation_loss(reference, reference, 4.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(distillation_loss(object_moved, reference, 4.0)) > float(distillation_loss(background_moved,
                                                                                               reference, 4.0))


def test_a_detector_is_fed_generated_images_in_the_unit_range():
    # standard normal pixels drive the box regression out of range (widths 0 to 18,000 pixels on a
    # 128x128 RetinaNet), and a pruned model's boxes would never overlap the original's
    from secateurs.engine.inputs import generate, input_distribution
    from secateurs.engine.intake.calibration import build_roles
    from secateurs.engine.spec import InputSpec

    heads = build_architecture("torchvision:ssdlite320_mobilenet_v3_large", {"num_classes": 3})
    assert input_distribution(heads) == "uniform" and input_distribution(torch.nn.Linear(2, 2)) == "normal"
    x = generate([InputSpec("input", (2, 3, 8, 8))], distribution="uniform")
    assert 0.0 <= float(x.min()) and float(x.max()) < 1.0
    roles = build_roles(None, None, [InputSpec("input", (1, 3, 8, 8))], calibration_samples=4,
                        evaluation_samples=4, seed=0, distribution="uniform")
    (evaluated, _), = list(roles.evaluation.batches())
    assert float(roles.calibration.inputs[0].min()) >= 0.0 and float(evaluated.min()) >= 0.0
    assert "uniform in [0, 1]" in roles.summary["calibration"]["note"]


def test_boxes_of_no_area_agree_only_with_themselves():
    point = torch.tensor([[[5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 9.0]]])
    scores = torch.tensor([[[0.1, 0.9], [0.1, 0.9]]])
    same = compare(Detections(scores, point), Detections(scores, point))
    assert same.box_agreement == pytest.approx(1.0)
    moved = compare(Detections(scores, point + 1), Detections(scores, point))
    assert moved.box_agreement == pytest.approx(0.0)
