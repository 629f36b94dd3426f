"""Named inputs of several dtypes: parsed, generated, traced, exported under their names (with a
dynamic batch when asked), fed to ONNX Runtime, and compared for parity."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from secateurs.engine.export import check_parity, export_onnx
from secateurs.engine.inputs import call, generate, split, stack
from secateurs.engine.latency.ort_backend import OnnxRuntimeBackend
from secateurs.engine.spec import InputSpec, parse_inputs
from secateurs.errors import InvalidRequest


class TwoInputs(nn.Module):
    """Token ids through an embedding, masked, pooled, classified: an int64 id and an int64 mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(10, 16), nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(ids) * mask.unsqueeze(-1).float()
        return {"logits": self.head(torch.relu(self.fc(x.mean(1))))}


SPECS = (InputSpec("input_ids", (2, 8), "int64"), InputSpec("attention_mask", (2, 8), "int64"))


def test_inputs_parse_from_a_shape_or_named_and_typed():
    assert parse_inputs("1x3x32x32") == (InputSpec("input", (1, 3, 32, 32)),)
    assert parse_inputs("input_ids:2x8:int64,attention_mask:2x8:int64") == SPECS
    assert parse_inputs("pixels:1x3x8x8") == (InputSpec("pixels", (1, 3, 8, 8), "float32"),)


@pytest.mark.parametrize("text, message", [
    ("ids:1x8:int8", "dtype must be one of"),
    ("a:1x8,a:1x8", "input names repeat"),
    ("a:1x8,b:2x8", "same batch size"),
    ("1a:1x8", "must be letters"),
    ("ids:1x8:int64:extra", "expected NAME:SHAPE"),
])
def test_bad_inputs_are_refused_with_the_reason(text, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        parse_inputs(text)
    assert err.value.field in ("inputs", "input_shape")


def test_generated_inputs_follow_each_dtype_and_batches_stack_and_split():
    x = generate(SPECS, generator=torch.Generator().manual_seed(0))
    assert [t.dtype for t in x] == [torch.int64, torch.int64] and int(x[0].max()) <= 1
    batch = stack([tuple(t[0] for t in x), tuple(t[1] for t in x)])
    assert all((a == b).all() for a, b in zip(batch, x))
    assert [p[0].shape[0] for p in split(batch, 1)] == [1, 1]


def test_named_inputs_and_a_dict_output_are_the_onnx_names_and_parity_holds(tmp_path):
    from secateurs.engine.intake.models import check_runs

    model = TwoInputs().eval()
    check_runs(model, SPECS)  # unwraps {"logits": t} and keeps its name for the export
    example = generate(SPECS, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "m.onnx"
    export_onnx(model, example, path, input_names=[s.name for s in SPECS], dynamic_batch=True)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert check_parity(model, path, SPECS).passed
    wider = tuple(InputSpec(s.name, (5, 8), s.dtype) for s in SPECS)  # the dynamic batch
    assert check_parity(model, path, wider).passed
    other = TwoInputs().eval()
    check_runs(other, SPECS)
    assert not check_parity(other, path, SPECS).passed  # the check can fail
    backend = OnnxRuntimeBackend(path, (5, 8), threads=1)
    assert {k: v.shape for k, v in backend._feeds.items()} == {"input_ids": (5, 8), "attention_mask": (5, 8)}
    assert len(backend.samples(3)) == 3
    assert call(model, example).shape == (2, 3)
