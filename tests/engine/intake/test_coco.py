"""Boxes in COCO's layout: images resized to the model's input while their boxes stay in the image's
pixels, file names that cannot leave the tree, annotations checked field by field, and the mAP a
detector is scored by after the post-processing a deployment runs."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from secateurs.engine.intake.calibration import Evaluation, Evaluator
from secateurs.engine.intake.data import UNLABELLED, load_dataset
from secateurs.engine.intake.models import labels_for_output
from secateurs.engine.outputs import POSTPROCESS, Detections, coco_detections, coco_map
from secateurs.engine.spec import DataSpec, InputSpec, TransformSpec, validate_data_spec
from secateurs.errors import InvalidData, InvalidRequest
from scenes import scene_with_boxes, write_coco_scenes

INPUTS = (InputSpec("input", (1, 3, 32, 32)),)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco_scenes(tmp_path_factory.mktemp("coco") / "COCO", splits={"train": 6, "val": 4}, size=48)


def _instances(root, split="val"):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_images_are_resized_to_the_input_and_labelled_by_their_index(coco):
    data = load_dataset(DataSpec(source="coco", path=coco, split="val"), INPUTS)
    assert len(data) == 4 and data.labelled and data.box_labels
    x, y = data[2]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == 2
    assert data.image_sizes([2]) == [(48, 48)]  # boxes are scored at the image's own size
    truth = data.ground_truth([0, 2])
    assert {im["id"] for im in truth["images"]} == set(data.image_ids([0, 2]))
    assert truth["annotations"] and {a["image_id"] for a in truth["annotations"]} <= set(data.image_ids([0, 2]))
    assert [c["id"] for c in truth["categories"]] == [1, 2, 3]
    unlabelled = load_dataset(DataSpec(source="coco", path=coco, split="val", ignore_labels=True), INPUTS)
    assert not unlabelled.labelled and unlabelled[2][1] == UNLABELLED and data[2][1] == 2


def test_a_zip_with_one_top_folder_and_coco_2017_names_reads_like_a_directory(tmp_path):
    root = write_coco_scenes(tmp_path / "coco2017", splits={"val": 3}, size=40, year="2017")
    archive = tmp_path / "coco.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, f"top/{path.relative_to(root)}")
    zipped = load_dataset(DataSpec(source="coco", path=archive, split="val"), INPUTS)
    plain = load_dataset(DataSpec(source="coco", path=root, split="val"), INPUTS)
    assert zipped.ids == [f"top/val2017/{n}" for n in ("scene_00001.jpg", "scene_00002.jpg", "scene_00003.jpg")]
    assert plain.ids == [i[len("top/"):] for i in zipped.ids]
    assert torch.equal(zipped[1][0], plain[1][0]) and zipped.ground_truth([0, 1, 2]) == plain.ground_truth([0, 1, 2])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "not a plain file name"),
    (lambda d: d["images"][0].update(file_name="sub/x.jpg"), "not a plain file name"),
    (lambda d: d["images"][0].update(file_name="missing.jpg"), "has no such image"),
    (lambda d: d["images"][0].update(width=-3), "positive width and height"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "four finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "four finite numbers"),
    (lambda d: d["annotations"][0].update(image_id=999), "not listed"),
    (lambda d: d["annotations"][0].update(category_id=77), "not listed"),
    (lambda d: d.pop("categories"), "lists 'images', 'annotations' and 'categories'"),
])
def test_a_bad_annotation_file_is_refused_naming_what_is_wrong(coco, tmp_path, edit, message):
    root = tmp_path / "bad"
    shutil.copytree(coco, root)
    document = _instances(root)
    edit(document)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(document))
    with pytest.raises(InvalidData, match=message):
        load_dataset(DataSpec(source="coco", path=root, split="val"), INPUTS)


def test_no_annotations_or_no_json_is_refused_naming_the_layout(coco, tmp_path):
    with pytest.raises(InvalidData, match="COCO layout"):
        load_dataset(DataSpec(source="coco", path=coco, split="test"), INPUTS)
    root = tmp_path / "notjson"
    shutil.copytree(coco, root)
    (root / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(InvalidData, match="is not JSON"):
        load_dataset(DataSpec(source="coco", path=root, split="val"), INPUTS)


def test_a_resize_is_refused_and_boxes_fit_only_a_detector(coco):
    with pytest.raises(InvalidRequest, match="boxes scaled with them") as caught:
        validate_data_spec(DataSpec(source="coco", path=coco, transform=TransformSpec(resize=64)))
    assert caught.value.field == "data.transform"
    boxes = DataSpec(source="coco", path=coco, split="val")
    detections = Detections(torch.zeros(1, 5, 4), torch.zeros(1, 5, 4))
    labels_for_output(detections, boxes, boxes)  # a detector: accepted
    for output in (torch.zeros(1, 10), torch.zeros(1, 4, 8, 8)):
        with pytest.raises(InvalidRequest, match="score a detector"):
            labels_for_output(output, boxes, None)


def _truth(boxes_by_image: dict[int, list[tuple[int, list[float]]]], size=(100, 100)) -> dict:
    images = [{"id": i, "width": size[0], "height": size[1], "file_name": f"{i}.jpg"} for i in boxes_by_image]
    annotations = [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "iscrowd": 0, "area": b[2] * b[3]}
                   for n, (i, c, b) in enumerate((i, c, b) for i, rows in boxes_by_image.items() for c, b in rows)]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_map_is_one_for_the_boxes_themselves_and_falls_as_they_move():
    truth = _truth({1: [(1, [10, 10, 30, 30]), (2, [50, 50, 20, 40])], 2: [(1, [0, 0, 50, 50])]})
    exact = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in truth["annotations"]]
    assert coco_map(truth, exact)["map"] == pytest.approx(1.0)
    moved = [dict(d, bbox=[d["bbox"][0] + 4, *d["bbox"][1:]]) for d in exact]
    wrong_class = [dict(d, category_id=3 - d["category_id"]) for d in exact]
    assert 0.0 < coco_map(truth, moved)["map"] < 1.0 and coco_map(truth, moved)["map50"] == pytest.approx(1.0)
    assert coco_map(truth, wrong_class)["map"] == 0.0
    empty = coco_map(truth, [])
    assert empty == {"map": 0.0, "map50": 0.0, "map_images": 2, "map_boxes": 3}


def test_raw_outputs_are_post_processed_and_scaled_to_the_image():
    """Anchor 0 holds the box, anchor 1 a near-duplicate NMS removes, anchor 2 a low score the threshold
    drops, and column 0, the background, scores high everywhere and never becomes a detection."""
    scores = torch.tensor([[[0.99, 0.9, 0.0], [0.99, 0.8, 0.0], [0.99, POSTPROCESS["score_threshold"] / 2, 0.0]]])
    boxes = torch.tensor([[[8.0, 4.0, 24.0, 20.0], [9.0, 4.0, 24.0, 20.0], [0.0, 0.0, 5.0, 5.0]]])
    rows = coco_detections(Detections(scores, boxes), (32, 32), [7], [(64, 96)])  # image 64 wide, 96 high
    assert len(rows) == 1
    (row,) = rows
    assert row["image_id"] == 7 and row["category_id"] == 1 and row["score"] == pytest.approx(0.9)
    assert row["bbox"] == pytest.approx([16.0, 12.0, 32.0, 48.0])  # x by 2, y by 3; x, y, w, h
    clipped = coco_detections(Detections(scores[:, :1], torch.tensor([[[-5.0, -5.0, 40.0, 40.0]]])),
                              (32, 32), [7], [(32, 32)])
    assert clipped[0]["bbox"] == pytest.approx([0.0, 0.0, 32.0, 32.0])


class _FixedDetector(torch.nn.Module):
    """Whatever the image, one anchor scoring `box` (input pixels) as category 1 with 0.9."""

    def __init__(self, box: list[float]) -> None:
        super().__init__()
        self.box = torch.tensor(box)
        self.bias = torch.nn.Parameter(torch.zeros(()))  # a parameter, as every model has

    def forward(self, x: torch.Tensor) -> Detections:
        n = x.shape[0]
        scores = torch.tensor([0.05, 0.9, 0.0]).expand(n, 1, 3) + self.bias
        return Detections(scores, self.box.expand(n, 1, 4) + self.bias)


def test_the_evaluation_scores_a_detector_by_map_at_each_images_own_size(tmp_path):
    root, rng = tmp_path / "same", np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images = []
    for i in range(1, 5):
        scene_with_boxes(rng, 48)[0].save(root / "val" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 48, "height": 48})
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [12, 12, 24, 24], "iscrowd": 0}
                   for i in range(1, 5)]  # no area given: the box's own
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    data = load_dataset(DataSpec(source="coco", path=root, split="val"), INPUTS)
    evaluation = Evaluation(dataset=data, indices=[0, 1, 2, 3], labelled=True, box_labels=True, batch_size=3)
    right = _FixedDetector([8.0, 8.0, 24.0, 24.0])  # at 32x32 the box the 48x48 image has at 12..36
    found = Evaluator(evaluation, right).quality(right)
    assert found["map"] == pytest.approx(1.0) and found["map_images"] == 4 and found["map_boxes"] == 4
    assert found["accuracy"] is None and found["samples"] == 4
    wrong = _FixedDetector([12.0, 12.0, 36.0, 36.0])  # the image's pixels, not the input's: IoU 0.28
    assert Evaluator(evaluation, right).quality(wrong)["map"] == 0.0
    evaluation.check_fits(right(torch.zeros(1, 3, 32, 32)))  # columns for categories 1 and 2
    with pytest.raises(InvalidData, match="category 2"):  # columns for category 1 only; the boxes name 2
        evaluation.check_fits(Detections(torch.zeros(1, 1, 2), torch.zeros(1, 1, 4)))
    with pytest.raises(InvalidData, match="score a detector"):
        evaluation.check_fits(torch.zeros(1, 3))
