"""Per-pixel labels in Pascal VOC's segmentation layout: images and masks resized together to the
model's input, 255 ignored, ids that cannot leave the tree, and the mean IoU they are scored by."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from secateurs.engine.intake.data import UNLABELLED, load_dataset
from secateurs.engine.intake.models import labels_for_output
from secateurs.engine.outputs import Detections, confusion, iou_figures
from secateurs.engine.spec import DataSpec, InputSpec, TransformSpec, validate_data_spec
from secateurs.errors import InvalidData, InvalidRequest
from scenes import write_voc_scenes

INPUTS = (InputSpec("input", (1, 3, 32, 32)),)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc_scenes(tmp_path_factory.mktemp("voc") / "VOC", splits={"train": 6, "val": 4}, size=48)


def test_images_and_masks_are_resized_together_and_the_border_is_ignored(voc):
    data = load_dataset(DataSpec(source="voc", path=voc, split="val"), INPUTS)
    assert len(data) == 4 and data.labelled and data.dense_labels
    x, y = data[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
    values = set(torch.unique(y).tolist())
    assert UNLABELLED in values and values <= {UNLABELLED, 0, 1, 2, 3}  # 255 became "ignore"


def test_a_zip_with_one_top_folder_reads_like_the_directory(voc, tmp_path):
    archive = tmp_path / "voc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(voc.rglob("*")):
            zf.write(path, f"VOC2012/{path.relative_to(voc).as_posix()}")
    zipped = load_dataset(DataSpec(source="voc", path=archive, split="train"), INPUTS)
    folder = load_dataset(DataSpec(source="voc", path=voc, split="train"), INPUTS)
    assert len(zipped) == len(folder) == 6
    assert torch.equal(zipped[2][1], folder[2][1])


@pytest.mark.parametrize("line, message", [
    ("../../etc/passwd", "not an image id"),
    ("scene_99999", "has no JPEGImages/scene_99999.jpg"),
])
def test_a_listing_naming_anything_but_an_image_here_is_refused(voc, tmp_path, line, message):
    copy = shutil.copytree(voc, tmp_path / "copy")
    (copy / "ImageSets/Segmentation/val.txt").write_text(line + "\n")
    with pytest.raises(InvalidData, match=message):
        load_dataset(DataSpec(source="voc", path=copy, split="val"), INPUTS)


def test_colour_coded_masks_are_refused_by_name(voc, tmp_path):
    copy = shutil.copytree(voc, tmp_path / "copy")
    first = (copy / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    mask = copy / "SegmentationClass" / f"{first}.png"
    Image.open(mask).convert("RGB").save(mask)
    data = load_dataset(DataSpec(source="voc", path=copy, split="val"), INPUTS)
    with pytest.raises(InvalidData, match="class-index PNGs"):
        data[0]


def test_a_missing_layout_and_geometric_transforms_are_refused(tmp_path):
    with pytest.raises(InvalidData, match="ImageSets/Segmentation/val.txt"):
        load_dataset(DataSpec(source="voc", path=tmp_path, split="val"), INPUTS)
    with pytest.raises(InvalidRequest) as err:
        validate_data_spec(DataSpec(source="voc", path=tmp_path, transform=TransformSpec(random_crop=16)))
    assert err.value.field == "data.transform"
    assert TransformSpec.preset("imagenet", train=True, source="voc").random_crop is None  # normalisation only


def test_masks_score_only_a_segmentation_output():
    masks = DataSpec(source="voc", path="x")
    labels_for_output(torch.zeros(1, 4, 8, 8), masks, None)  # segmentation: accepted
    with pytest.raises(InvalidRequest, match="score a segmentation model"):
        labels_for_output(torch.zeros(1, 10), masks, None)
    with pytest.raises(InvalidRequest, match="score a segmentation model"):
        labels_for_output(Detections(torch.zeros(1, 5, 3), torch.zeros(1, 5, 4)), masks, None)


def test_mean_iou_counts_the_classes_present_and_ignores_unlabelled_pixels():
    scores = torch.zeros(1, 3, 1, 4)
    for i, c in enumerate((0, 0, 1, 1)):  # predicted: 0 0 1 1
        scores[0, c, 0, i] = 1.0
    labels = torch.tensor([[[0, 1, 1, UNLABELLED]]])  # labelled: 0 1 1 -
    figures = iou_figures(confusion(scores, labels))
    # class 0: 1 hit, union 2; class 1: 1 hit, union 2; class 2 absent from both, not scored
    assert figures == {"miou": pytest.approx(0.5), "pixel_accuracy": pytest.approx(2 / 3), "miou_classes": 2}
    with pytest.raises(InvalidData, match="name class 5"):
        confusion(scores, torch.tensor([[[5, 0, 0, 0]]]))
    assert np.isclose(iou_figures(confusion(scores, scores.argmax(1)))["miou"], 1.0)
