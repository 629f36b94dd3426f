"""`make run`'s data: held-out images never trained on, read by the server as the demo trained on them."""

from __future__ import annotations

import numpy as np
import torch

from secateurs.demo import digits_images, write_imagefolder_zip
from secateurs.engine.intake.data import load_dataset
from secateurs.engine.spec import DataSpec


def test_digits_split_is_disjoint_stratified_and_read_back_as_trained(tmp_path) -> None:
    images = digits_images()
    train, test = images["train"], images["test"]
    assert (len(train), len(test)) == (1437, 360)
    as_bytes = lambda rows: {p.tobytes() + bytes([label]) for p, label in rows}  # noqa: E731
    assert not as_bytes(train) & as_bytes(test)  # no held-out image is a training image
    assert sorted({label for _, label in test}) == list(range(10))
    assert min(np.bincount([label for _, label in test])) >= 35  # stratified: about 36 per digit

    path = write_imagefolder_zip(images, tmp_path / "digits.zip")
    for split, rows in images.items():
        dataset = load_dataset(DataSpec(source="imagefolder", path=path, split=split))
        assert len(dataset) == len(rows)
        x, label = dataset[0]
        # members are read in name order (<split>/<class>/<n>.png): the first is class 0's first row; PNG is lossless
        pixels = next(p for p, c in rows if c == 0)
        assert label == 0 and torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
