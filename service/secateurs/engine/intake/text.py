"""Text classification data: JSON lines of {"text", "label"} and the job's own tokenizer.

A text dataset is a directory or .zip holding `<split>.jsonl` (one object per line: "text" a string,
"label" an integer class, or none for unlabelled text) and `tokenizer.json`, a tokenizer of the
`tokenizers` library (a JSON description its Rust reader parses; nothing in it is run). Each text is
tokenised to the model's sequence length (the length of its first input), truncated and padded, and
a sample is the tensors of the model's inputs in their order: `input_ids`, `attention_mask`,
`token_type_ids` by name (others are refused: the data cannot say what they hold).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from secateurs.engine.spec import DataSpec, InputSpec
from secateurs.errors import InvalidData, InvalidRequest

UNLABELLED = -1
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_TEXT_CHARS = 100_000
TOKENIZER_FILE = "tokenizer.json"


class TextDataset(Dataset):
    """Tokenised texts as (tuple of input tensors, label); `ids` names each line for disjointness checks."""

    def __init__(self, columns: dict[str, torch.Tensor], names: Sequence[str], labels: list[int],
                 ids: list[str]) -> None:
        self.columns, self.names, self.targets, self.ids = columns, tuple(names), labels, ids
        self.labelled = all(label >= 0 for label in labels) and bool(labels)
        self.num_classes = max(labels) + 1 if self.labelled else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int]:
        return tuple(self.columns[name][index] for name in self.names), self.targets[index]


def load_text(spec: DataSpec, reader: Any, inputs: Sequence[InputSpec] | None, *, held_out: Any,
              subset: Any) -> TextDataset:
    """The split of a text dataset, tokenised for `inputs` (the model's), limited and held out as asked.
    `reader`, `held_out` and `subset` are engine/intake/data.py's, which calls this (one way to read a
    tree or a zip, to hold out and to limit)."""
    if not inputs or any(i.name not in TEXT_INPUTS for i in inputs):
        shown = ", ".join(i.name for i in inputs or ())
        raise InvalidRequest(f"text data feeds inputs named {', '.join(TEXT_INPUTS)}; the model's inputs are "
                             f"{shown or 'not named'} (--input input_ids:1x128:int64,attention_mask:1x128:int64)",
                             field="inputs")
    reader.names(spec.split)  # a zip's directory is checked against the archive limits here
    member = f"{spec.split}.jsonl"
    texts, labels = _read_lines(_member(reader, member), member)
    length = inputs[0].shape[1] if len(inputs[0].shape) > 1 else None
    if length is None or any(tuple(i.shape[1:]) != (length,) for i in inputs):
        raise InvalidRequest("text inputs are (batch, sequence length), all of one length", field="inputs")
    ids = [f"{member}:{i + 1}" for i in range(len(texts))]
    keep = held_out(ids, spec)
    texts, labels, ids = [texts[k] for k in keep], [labels[k] for k in keep], [ids[k] for k in keep]
    chosen = subset(labels, spec.limit, spec.limit_per_class, spec.seed)
    texts, labels, ids = [texts[k] for k in chosen], [labels[k] for k in chosen], [ids[k] for k in chosen]
    columns = tokenise(_member(reader, TOKENIZER_FILE), texts, length)
    return TextDataset({name: columns[name] for name in (i.name for i in inputs)}, [i.name for i in inputs],
                       labels, ids)


def tokenise(tokenizer_json: bytes, texts: Sequence[str], length: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and token_type_ids (int64, texts x length), truncated and padded."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    except Exception as exc:  # the Rust parser's own errors
        raise InvalidData(f"{TOKENIZER_FILE} is not a tokenizers tokenizer: {str(exc).splitlines()[0][:200]}") \
            from None
    pad = next((tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>", "<PAD>") if tokenizer.token_to_id(t) is not None), 0)
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(length=length, pad_id=pad)
    encodings = tokenizer.encode_batch(list(texts))
    return {"input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.int64),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.int64)}


def _member(reader: Any, name: str) -> bytes:
    try:
        return reader.read(name)
    except (FileNotFoundError, KeyError):
        raise InvalidData(f"the text dataset has no {name} at its top level") from None


def _read_lines(raw: bytes, member: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for number, line in enumerate(raw.decode("utf-8", errors="strict").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidData(f"{member} line {number} is not JSON") from None
        text, label = row.get("text") if isinstance(row, dict) else None, row.get("label", UNLABELLED) \
            if isinstance(row, dict) else None
        if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
            raise InvalidData(f"{member} line {number}: \"text\" must be a string of at most {MAX_TEXT_CHARS:,} "
                              f"characters")
        if not isinstance(label, int) or isinstance(label, bool) or label < UNLABELLED:
            raise InvalidData(f"{member} line {number}: \"label\" must be a class index (an integer >= 0)")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise InvalidData(f"{member} has no lines")
    return texts, labels

