"""Boxes in COCO's layout, for scoring a detector by mAP: a directory or .zip holding

    annotations/instances_<split><year>.json   images, annotations (bbox x, y, w, h in pixels), categories
    <split><year>/<file_name>                  the images (COCO 2017: val2017/000000000139.jpg)

where <year> is empty or digits (`instances_val.json` and `val/`, or COCO's own `instances_val2017.json`
and `val2017/`). Each image is resized to the model's input; its boxes stay in the image's own
pixels, and a detection is scaled back to them before it is scored (engine/outputs.py
`coco_detections`), so the figure is COCO's own mAP at the image's resolution.

A sample is `(image, index)`: the label is the image's position in the dataset, and its boxes are
looked up in `ground_truth` by the evaluation (boxes of varying count do not batch). A file name
is a name, never a path: one with a folder, `..` or a leading dot is refused, and so is an
annotation that is not a box of four finite numbers on a listed image.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from secateurs.engine.spec import DataSpec, InputSpec
from secateurs.errors import InvalidData

_ANNOTATIONS = re.compile(r"^(?P<root>(?:[^/]+/)?)annotations/instances_(?P<split>[a-z]+)(?P<year>\d*)\.json$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file in the images folder: no folders, no way out


class BoxDataset(Dataset):
    """COCO-style images, each with its boxes in `ground_truth` (pycocotools' dataset dict)."""

    labelled = True
    box_labels = True  # labels are boxes: scored as COCO mAP, never trained on as classes
    num_classes: int | None = None  # the model's output says how many

    def __init__(self, reader: Any, images: list[dict[str, Any]], annotations: list[dict[str, Any]],
                 categories: list[dict[str, Any]], folder: str, *, size: tuple[int, int] | None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None, where: str, decode: Callable) -> None:
        self.reader, self.folder, self.size, self.transform, self.where = reader, folder, size, transform, where
        self._decode = decode
        self.images, self.categories = images, categories
        kept = {im["id"] for im in images}
        self.annotations = [a for a in annotations if a["image_id"] in kept]
        self.ids = [f"{folder}{im['file_name']}" for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        meta = self.images[index]
        pixels = self._decode(self.reader, self.ids[index], self.where, "RGB")
        if pixels.shape[:2] != (meta["height"], meta["width"]):
            raise InvalidData(f"image {self.ids[index]!r} is {pixels.shape[1]}x{pixels.shape[0]}; its annotation "
                              f"says {meta['width']}x{meta['height']}")
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
        if self.size is not None and tuple(x.shape[1:]) != self.size:
            x = v2.functional.resize(x, list(self.size), antialias=True)
        return (self.transform(x) if self.transform else x), index

    def image_ids(self, indices: Sequence[int]) -> list[int]:
        return [int(self.images[i]["id"]) for i in indices]

    def image_sizes(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """(width, height) of each image, what its detections are scaled back to."""
        return [(int(self.images[i]["width"]), int(self.images[i]["height"])) for i in indices]

    def ground_truth(self, indices: Sequence[int]) -> dict[str, Any]:
        """pycocotools' dataset dict of these images and their boxes."""
        ids = set(self.image_ids(indices))
        return {"images": [im for im in self.images if im["id"] in ids],
                "annotations": [a for a in self.annotations if a["image_id"] in ids],
                "categories": self.categories}

    def close(self) -> None:
        self.reader.close()


def load_coco(spec: DataSpec, reader: Any, names: Sequence[str] | None, exists: Callable[[str], bool], *,
              transform: Callable[[torch.Tensor], torch.Tensor] | None, inputs: Sequence[InputSpec] | None,
              where: str, decode: Callable, held_out: Callable, subset: Callable) -> BoxDataset:
    """The split of a COCO-layout dataset (see the module docstring). `names`: every member of a zip, or
    None for a directory, whose top level and first folders `exists` and `reader` see."""
    found = [m for m in (_ANNOTATIONS.match(n) for n in names or ()) if m and m["split"] == spec.split]
    if names is None:
        found = [m for m in (_ANNOTATIONS.match(n) for n in _directory_candidates(reader, spec.split))
                 if m and exists(m.string)]
    if not found:
        raise InvalidData(f"{where} has no annotations/instances_{spec.split}.json (COCO layout: "
                          f"annotations/instances_<split>[year].json and the images in <split>[year]/)")
    match = sorted(found, key=lambda m: (len(m["root"]), m["year"]))[-1]  # the newest year, nearest the top
    folder = f"{match['root']}{spec.split}{match['year']}/"
    try:
        document = json.loads(reader.read(match.string))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidData(f"{match.string} in {where} is not JSON ({exc})") from None
    images, annotations, categories = _checked(document, match.string, where)
    missing = next((im for im in images if not exists(folder + im["file_name"])), None)
    if missing is not None:
        raise InvalidData(f"{match.string} in {where} lists {missing['file_name']!r} but {folder} has no such image")
    images = [images[n] for n in held_out([folder + im["file_name"] for im in images], spec)]
    images = [images[n] for n in subset([0] * len(images), spec.limit, None, spec.seed)]
    if not images:
        raise InvalidData(f"{match.string} in {where} lists no images")
    size = tuple(inputs[0].shape[2:]) if inputs else None
    return BoxDataset(reader, images, annotations, categories, folder,
                      size=size if size and len(size) == 2 else None, transform=transform, where=where, decode=decode)


def _directory_candidates(reader: Any, split: str) -> list[str]:
    """Annotation files a directory may hold for `split`, at its top or in one folder below."""
    root = reader.root
    tops = [""] + sorted(f"{p.name}/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [f"{top}annotations/{p.name}" for top in tops if (root / top / "annotations").is_dir()
            for p in (root / top / "annotations").iterdir() if p.name.startswith(f"instances_{split}")]


def _checked(document: Any, name: str, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """The images, annotations and categories of an instances file, each field checked."""
    def bad(message: str) -> InvalidData:
        return InvalidData(f"{name} in {where}: {message}")

    if not isinstance(document, dict) or not all(isinstance(document.get(k), list)
                                                  for k in ("images", "annotations", "categories")):
        raise bad("expected an object with lists 'images', 'annotations' and 'categories'")
    images, categories = [], []
    for im in document["images"]:
        if not (isinstance(im, dict) and _integer(im.get("id")) and _integer(im.get("width"), positive=True)
                and _integer(im.get("height"), positive=True) and isinstance(im.get("file_name"), str)):
            raise bad(f"an image needs an integer id, positive width and height and a file_name: {str(im)[:120]}")
        if not _FILE_NAME.match(im["file_name"]):
            raise bad(f"file_name {im['file_name'][:80]!r} is not a plain file name")
        images.append({k: im[k] for k in ("id", "width", "height", "file_name")})
    if len({im["id"] for im in images}) != len(images):
        raise bad("two images share an id")
    for c in document["categories"]:
        if not (isinstance(c, dict) and _integer(c.get("id"), positive=True)):
            raise bad(f"a category needs a positive integer id: {str(c)[:120]}")
        categories.append({"id": c["id"], "name": str(c.get("name", c["id"]))[:100]})
    known, listed = {im["id"] for im in images}, {c["id"] for c in categories}
    annotations = []
    for n, a in enumerate(document["annotations"]):
        box = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box) and box[2] >= 0
                and box[3] >= 0):
            raise bad(f"annotation {n}: bbox must be [x, y, width, height], four finite numbers, sizes >= 0")
        if a.get("image_id") not in known:
            raise bad(f"annotation {n} is on image {str(a.get('image_id'))[:40]}, which is not listed")
        if a.get("category_id") not in listed:
            raise bad(f"annotation {n} has category {str(a.get('category_id'))[:40]}, which is not listed")
        area = a.get("area")
        annotations.append({"id": n + 1, "image_id": a["image_id"], "category_id": a["category_id"],
                            "bbox": [float(v) for v in box], "iscrowd": 1 if a.get("iscrowd") else 0,
                            "area": float(area) if _number(area) else float(box[2] * box[3])})
    return images, annotations, categories


def _integer(value: Any, *, positive: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
