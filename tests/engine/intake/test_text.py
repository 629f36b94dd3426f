"""jsonl text data: lines of {"text", "label"} tokenised by the job's own tokenizer.json to the
model's inputs, their names and sequence length."""

from __future__ import annotations

import json
import zipfile

import pytest

pytest.importorskip("tokenizers")

from secateurs.engine.intake.data import load_dataset  # noqa: E402
from secateurs.engine.spec import DataSpec, InputSpec  # noqa: E402
from secateurs.errors import InvalidData, InvalidRequest  # noqa: E402
from text_data import write_text_dataset  # noqa: E402

INPUTS = (InputSpec("input_ids", (1, 12), "int64"), InputSpec("attention_mask", (1, 12), "int64"))


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return write_text_dataset(tmp_path_factory.mktemp("texts"), train=60, test=30)


def test_lines_become_padded_token_ids_and_masks_in_the_models_input_order(texts):
    data = load_dataset(DataSpec(source="jsonl", path=texts, split="test"), INPUTS)
    assert len(data) == 30 and data.labelled and data.num_classes == 2
    (ids, mask), label = data[0]
    assert ids.shape == mask.shape == (12,) and str(ids.dtype) == "torch.int64"
    first = json.loads((texts / "test.jsonl").read_text().splitlines()[0])
    assert label == first["label"]
    words = len(first["text"].split())
    assert int(mask.sum()) == min(words, 12)  # truncated or padded to the model's length
    assert (ids[mask == 0] == 0).all()  # [PAD] is id 0 in this tokenizer
    assert data.ids[0] == "test.jsonl:1"


def test_a_zip_reads_the_same_as_the_directory(texts, tmp_path):
    archive = tmp_path / "texts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("train.jsonl", "test.jsonl", "tokenizer.json"):
            z.write(texts / name, name)
    a = load_dataset(DataSpec(source="jsonl", path=texts, split="train", limit=10), INPUTS)
    b = load_dataset(DataSpec(source="jsonl", path=archive, split="train", limit=10), INPUTS)
    assert a.ids == b.ids and all((x == y).all() for x, y in zip(a[3][0], b[3][0]))


def test_inputs_the_text_cannot_fill_are_refused(texts):
    with pytest.raises(InvalidRequest, match="text data feeds inputs named input_ids") as err:
        load_dataset(DataSpec(source="jsonl", path=texts, split="test"), (InputSpec("pixel_values", (1, 3, 8, 8)),))
    assert err.value.field == "inputs"


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1 is not JSON"),
    ('{"text": 3, "label": 0}', '"text" must be a string'),
    ('{"text": "a", "label": "pos"}', '"label" must be a class index'),
])
def test_a_bad_line_is_named(texts, tmp_path, line, message):
    for name in ("tokenizer.json",):
        (tmp_path / name).write_bytes((texts / name).read_bytes())
    (tmp_path / "test.jsonl").write_text(line + "\n")
    with pytest.raises(InvalidData, match=message):
        load_dataset(DataSpec(source="jsonl", path=tmp_path, split="test"), INPUTS)


def test_a_missing_tokenizer_or_split_is_named(texts, tmp_path):
    (tmp_path / "test.jsonl").write_bytes((texts / "test.jsonl").read_bytes())
    with pytest.raises(InvalidData, match="no tokenizer.json"):
        load_dataset(DataSpec(source="jsonl", path=tmp_path, split="test"), INPUTS)
    with pytest.raises(InvalidData, match="no val.jsonl"):
        load_dataset(DataSpec(source="jsonl", path=texts, split="val"), INPUTS)
