"""Uploaded torch.export programs: read without running anything from the file (each payload
below is first shown to run under a plain torch.export.load), and pruned like built models."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.intake.program import program_module, read_program, save_program
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec
from secateurs.errors import InvalidModel, UnsafeModel
from program_payloads import Touch, pickled_sample_inputs, rewrite


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 4)).eval()
    return save_program(model, torch.randn(1, 3, 16, 16), tmp_path_factory.mktemp("program") / "m.pt2")


def _pickled_weight(program: Path, tmp_path: Path, marker: Path) -> Path:
    with zipfile.ZipFile(program) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True  # torch.export.load then runs torch.load(..., weights_only=False) on it
    return rewrite(program, tmp_path / "evil-weight.pt2", {
        "model_weights_config.json": json.dumps(config).encode(),
        f"weights/{first['path_name']}": pickle.dumps(Touch(marker)),
    })


def _pickled_sample_inputs(program: Path, tmp_path: Path, marker: Path) -> Path:
    return pickled_sample_inputs(program, tmp_path / "evil-inputs.pt2", marker)


@pytest.mark.parametrize("craft", [_pickled_weight, _pickled_sample_inputs], ids=["weight", "sample-inputs"])
def test_a_program_carrying_a_pickle_payload_is_refused_and_the_payload_never_runs(program, tmp_path, craft):
    live = tmp_path / "ran-under-torch.export.load"
    with pytest.raises(Exception):  # noqa: B017 - the payload's return value breaks the load after it ran
        torch.export.load(str(craft(program, tmp_path, live)))
    assert live.exists()  # the payload is real: a plain load runs it

    marker = tmp_path / "ran-under-read_program"
    evil = craft(program, tmp_path, marker)
    with pytest.raises(UnsafeModel) as err:
        read_program(evil)
    assert not marker.exists()
    assert err.value.field == "model.program" and "refused without running it" in str(err.value)


def test_a_program_with_custom_objects_is_refused_before_it_is_read(program, tmp_path):
    evil = rewrite(program, tmp_path / "objects.pt2", {}, add={"data/constants/custom_obj_0": b"\x80\x04N."})
    with pytest.raises(UnsafeModel, match="carries custom objects"):
        read_program(evil)


def test_what_is_not_a_program_is_refused_with_the_reason(tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InvalidModel, match="not a torch.export archive"):
        read_program(junk)
    truncated = tmp_path / "truncated.pt2"
    shutil.copyfile(Path(__file__), truncated)
    with pytest.raises(InvalidModel):
        read_program(truncated)


def test_a_program_runs_as_its_model_did_and_prunes_exports_with_parity(tmp_path):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    raised = program_module(save_program(model, x, tmp_path / "resnet18.pt2"))
    assert isinstance(raised.get_submodule("layer1.0.conv1"), torch.nn.Conv2d)  # a layer again, same name
    assert isinstance(raised.get_submodule("fc"), torch.nn.Linear)
    with torch.no_grad():
        assert torch.equal(raised(x), model(x))
    pruned = prune(raised, x, PruneSpec(ratio=0.4)).model
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    export_onnx(pruned, x, tmp_path / "pruned.onnx")
    assert check_parity(pruned, tmp_path / "pruned.onnx", tuple(x.shape)).passed
