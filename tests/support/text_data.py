"""A small text task made here, with a tokenizer trained here: what the text tests share.

Label 1 when a line has more 'good' words than 'bad' ones. The tokenizer is a `tokenizers`
WordLevel model trained on the train split, so nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

GOOD, BAD = ("good", "great", "fine", "nice"), ("bad", "awful", "poor", "sad")
FILLER = ("the", "a", "movie", "was", "it", "and", "plot", "very")


def _line(rng: random.Random) -> dict:
    good, bad = rng.randint(0, 4), rng.randint(0, 4)
    while good == bad:
        bad = rng.randint(0, 4)
    words = [rng.choice(GOOD) for _ in range(good)] + [rng.choice(BAD) for _ in range(bad)]
    words += [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
    rng.shuffle(words)
    return {"text": " ".join(words), "label": int(good > bad)}


def write_text_dataset(root: Path, *, train: int = 400, test: int = 200, seed: int = 0) -> Path:
    """root/train.jsonl, root/test.jsonl and root/tokenizer.json; returns root."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(_line(rng)) + "\n" for _ in range(n)))
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [json.loads(line)["text"] for line in (root / "train.jsonl").read_text().splitlines()]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(root / "tokenizer.json"))
    return root


def distilbert_config(vocab_size: int = 32, **overrides: object) -> dict:
    """A DistilBERT-shaped config small enough for a test."""
    return {"model_type": "distilbert", "vocab_size": vocab_size, "dim": 32, "n_layers": 2, "n_heads": 2,
            "hidden_dim": 64, "max_position_embeddings": 32, "num_labels": 2, **overrides}


def vit_config(**overrides: object) -> dict:
    """A ViT-shaped config for 32x32 images, small enough for a test."""
    return {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 10, **overrides}
