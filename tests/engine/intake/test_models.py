"""Model intake: architectures, weights formats, and every bad input with its exact error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from secateurs.engine.intake.models import (apply_state_dict, build_architecture, check_runs, load_model, parse_kwargs,
                                            read_weights)
from secateurs.engine.spec import ModelSpec, parse_input_shape
from secateurs.errors import InvalidModel, InvalidRequest, UnsafeModel


class Payload:
    """Pickling this runs a shell command on load: what a malicious upload would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def resnet20_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_architecture("zoo:resnet20").state_dict()


def test_safetensors_and_state_dict_load_identically(tmp_path, resnet20_state):
    save_file(resnet20_state, tmp_path / "w.safetensors")
    torch.save(resnet20_state, tmp_path / "w.pt")
    torch.save({"state_dict": resnet20_state}, tmp_path / "ckpt.pt")
    x = torch.randn(2, 3, 32, 32)
    outs = [load_model(ModelSpec(arch="zoo:resnet20", weights=tmp_path / f))(x)
            for f in ("w.safetensors", "w.pt", "ckpt.pt")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_dataparallel_prefix_is_stripped(tmp_path, resnet20_state):
    torch.save({f"module.{k}": v for k, v in resnet20_state.items()}, tmp_path / "dp.pt")
    load_model(ModelSpec(arch="zoo:resnet20", weights=tmp_path / "dp.pt"))


def test_pickled_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"weight": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeModel) as err:
        read_weights(tmp_path / "evil.pt")
    assert not marker.exists()
    assert str(err.value).startswith("weights file 'evil.pt' holds pickled Python objects, not just tensors")
    assert err.value.field == "model.weights"


def test_whole_module_needs_trust(tmp_path):
    model = build_architecture("zoo:resnet20").eval()
    torch.save(model, tmp_path / "module.pt")
    with pytest.raises(UnsafeModel, match="refused without running it"):
        load_model(ModelSpec(arch="zoo:resnet20", weights=tmp_path / "module.pt"))
    trusted = load_model(ModelSpec(arch="zoo:resnet20", weights=tmp_path / "module.pt", trust_pickle=True))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(trusted(x), model(x))


def test_truncated_safetensors(tmp_path, resnet20_state):
    save_file(resnet20_state, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel) as err:
        read_weights(tmp_path / "cut.safetensors")
    assert str(err.value).startswith(
        "weights file 'cut.safetensors' is not a readable safetensors or torch file (truncated or corrupt?)")


def test_truncated_torch_file(tmp_path, resnet20_state):
    torch.save(resnet20_state, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModel, match=r"^weights file 'cut.pt' is"):
        read_weights(tmp_path / "cut.pt")


def test_missing_file():
    with pytest.raises(InvalidModel, match="^weights file 'nope.pt' does not exist$"):
        read_weights(Path("/nonexistent/nope.pt"))


def test_wrong_tensor_shape_is_named(resnet20_state):
    resnet20_state["fc.weight"] = torch.zeros(5, 64)
    with pytest.raises(InvalidModel) as err:
        apply_state_dict(build_architecture("zoo:resnet20"), resnet20_state)
    assert str(err.value) == ("weights do not fit the architecture: 1 mis-shaped tensor(s): "
                              "fc.weight (expected (10, 64), got (5, 64))")


def test_missing_and_unexpected_tensors_are_named(resnet20_state):
    del resnet20_state["fc.bias"]
    resnet20_state["extra.weight"] = torch.zeros(1)
    with pytest.raises(InvalidModel) as err:
        apply_state_dict(build_architecture("zoo:resnet20"), resnet20_state)
    assert str(err.value) == ("weights do not fit the architecture: 1 missing tensor(s): fc.bias; "
                              "1 unexpected tensor(s): extra.weight")


@pytest.mark.parametrize("arch,message", [
    ("zoo:resnet21", "unknown architecture 'zoo:resnet21'; the zoo has: resnet110, resnet20, resnet32, resnet44, "
                     "resnet56, vgg16_bn"),
    ("torchvision:resnet19", "unknown architecture 'torchvision:resnet19': torchvision has no model named 'resnet19'"),
    ("keras:resnet50", "unknown architecture 'keras:resnet50': expected zoo:<name>, torchvision:<name>, "
                       "timm:<name>, hf:<AutoClass> or module:<pkg.mod>:<callable>"),
    ("module:nosuchpkg:build", "unknown architecture 'module:nosuchpkg:build': No module named 'nosuchpkg'"),
    ("module:secateurs.engine.intake.zoo", "architecture 'module:secateurs.engine.intake.zoo' must look like "
                                    "module:<package.module>:<callable>"),
])
def test_unknown_architecture(arch, message):
    with pytest.raises(InvalidRequest) as err:
        build_architecture(arch)
    assert str(err.value) == message
    assert err.value.field == "model.arch"


def test_module_spec_and_kwargs():
    model = build_architecture("module:secateurs.engine.intake.zoo:CifarResNet",
                               parse_kwargs(["depth=8", "num_classes=3"]))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(InvalidRequest, match="cannot build 'zoo:resnet20'"):
        build_architecture("zoo:resnet20", {"colour": "red"})


@pytest.mark.parametrize("text,message", [
    ("1x3x224", None),
    ("1x3xabcx224", "input shape '1x3xabcx224' is malformed: expected integers joined by 'x', e.g. 1x3x224x224"),
    ("224", "input shape '224' must have 2 to 5 dimensions (batch first)"),
    ("0x3x32x32", "input shape (0, 3, 32, 32) has a dimension <= 0"),
    ("1x-3x32x32", "input shape (1, -3, 32, 32) has a dimension <= 0"),
])
def test_input_shape_parsing(text, message):
    if message is None:
        assert parse_input_shape(text) == (1, 3, 224)
        return
    with pytest.raises(InvalidRequest) as err:
        parse_input_shape(text)
    assert str(err.value) == message and err.value.field == "input_shape"


def test_wrong_input_shape_for_the_model():
    model = build_architecture("zoo:resnet20").eval()
    with pytest.raises(InvalidRequest, match=r"^the model cannot run on input shape 1x1x32x32: ") as err:
        check_runs(model, (1, 1, 32, 32))
    assert err.value.field == "input_shape"
