"""Outputs beyond one classifier tensor: a dict's only tensor is what the engine (and the export)
sees, dense scores are compared position by position, and what cannot be scored is refused."""

from __future__ import annotations

import pytest
import torch
import torchvision

from secateurs.engine.intake.models import build_architecture, check_runs, labels_for_output
from secateurs.engine.outputs import class_scores
from secateurs.engine.spec import DataSpec
from secateurs.errors import InvalidRequest


def test_class_scores_keep_a_classifier_and_give_one_row_per_position_of_a_dense_output():
    logits = torch.randn(3, 5)
    assert class_scores(logits) is logits
    dense = torch.randn(2, 5, 4, 6)
    rows = class_scores(dense)
    assert rows.shape == (2 * 4 * 6, 5)
    assert torch.equal(rows[7], dense[0, :, 1, 1])  # row 7 = image 0, position (1, 1) of a 4x6 map


def test_a_segmentation_model_returns_its_one_output_tensor_after_check_runs():
    model = build_architecture("torchvision:lraspp_mobilenet_v3_large", {"num_classes": 4}).eval()
    assert isinstance(model(torch.zeros(1, 3, 64, 64)), dict)
    out = check_runs(model, (1, 3, 64, 64))
    assert out.shape == (1, 4, 64, 64)
    assert isinstance(model(torch.zeros(1, 3, 64, 64)), torch.Tensor)  # the hook unwraps {"out": ...}
    assert "classifier.low_classifier" in dict(model.named_modules())  # layer names unchanged


def test_a_model_with_two_outputs_is_refused_naming_them():
    model = build_architecture("torchvision:fcn_resnet50", {"num_classes": 3, "aux_loss": True}).eval()
    with pytest.raises(InvalidRequest) as err:
        check_runs(model, (1, 3, 32, 32))
    assert "2 outputs (out: Tensor, aux: Tensor)" in str(err.value) and err.value.field == "model.arch"


def test_an_image_folder_gives_a_dense_output_real_images_without_their_labels(tmp_path):
    from secateurs.engine.intake.calibration import build_roles
    from service_helpers import image_folder_zip

    dense, logits = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4)
    folder = DataSpec(source="imagefolder", path=image_folder_zip(tmp_path / "f.zip", per_class=12, size=16),
                      split="test")
    data, train = labels_for_output(dense, folder, None)
    assert data.ignore_labels and train is None  # per-image classes cannot score per-pixel scores
    assert labels_for_output(logits, folder, folder) == (folder, folder)  # a classifier: labels score it
    synthetic = DataSpec(source="synthetic", shape=(3, 8, 8))
    assert labels_for_output(dense, None, synthetic) == (None, synthetic)  # generated inputs: fidelity
    roles = build_roles(data, None, (1, 3, 16, 16), calibration_samples=4, evaluation_samples=None, seed=0)
    assert not roles.evaluation.labelled and roles.calibration.labels is None  # calibrated on its train split
    assert all(y == -1 for _, y in roles.evaluation.dataset) and roles.evaluation_ids[0].endswith(".jpg")
    assert "labels are not read" in roles.summary["evaluation"]["note"]


@pytest.mark.parametrize("kwargs", [{"weights_backbone": "DEFAULT"}, {"weights": "DEFAULT"}, {"progress": True}])
def test_torchvision_arguments_that_download_are_refused(kwargs):
    with pytest.raises(InvalidRequest, match="would download weights") as err:
        build_architecture("torchvision:deeplabv3_mobilenet_v3_large", kwargs)
    assert err.value.field == "model.arch_kwargs"


def test_a_segmentation_builder_never_fetches_its_backbone_weights(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)  # the one way torchvision downloads
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network, raising=False)
    build_architecture("torchvision:deeplabv3_mobilenet_v3_large", {"num_classes": 3})
    with pytest.raises(AssertionError, match="a download was attempted"):  # the default builder would have
        torchvision.models.get_model("deeplabv3_mobilenet_v3_large", weights=None, num_classes=3)
