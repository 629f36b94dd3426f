"""Generated scenes: shapes on a noisy background, one class per shape (1 square, 2 disc, 3 triangle;
0 background), each shape's colour drawn at random so the class is its shape, not its colour.
Written in Pascal VOC's segmentation layout (class-index masks with a 1-pixel ignore border, 255,
around every shape, as VOC draws one) or in COCO's detection layout (each shape's box). Used by the
tests and by benchmarks/reach.py's accuracy cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("background", "square", "disc", "triangle")
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192]


def scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """One image and its class-index mask (mode P)."""
    image, mask, _ = scene_with_boxes(rng, size)
    return image, mask


def scene_with_boxes(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image, list[tuple[int, list]]]:
    """One image, its class-index mask (mode P), and each shape's (class, [x1, y1, x2, y2])."""
    noise = rng.normal(110, 30, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1))
    mask = Image.new("P", (size, size), 0)
    mask.putpalette(_PALETTE)
    draw, paint = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(CLASSES)))
        r = int(rng.integers(size // 8, size // 4))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [cx - r, cy - r, cx + r, cy + r]
        shape = {1: lambda d, **k: d.rectangle(box, **k), 2: lambda d, **k: d.ellipse(box, **k),
                 3: lambda d, **k: d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], **k)}[kind]
        shape(draw, fill=colour)
        shape(paint, fill=kind)
        shapes.append((kind, [box[0], box[1], box[2] + 1, box[3] + 1]))  # PIL paints both end pixels
    classes = np.asarray(mask)
    edge = np.zeros_like(classes, dtype=bool)  # a pixel beside one of another class: VOC's ignore border
    edge[1:] |= classes[1:] != classes[:-1]
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    labelled = Image.fromarray(np.where(edge, 255, classes).astype(np.uint8), mode="P")
    labelled.putpalette(_PALETTE)
    return image, labelled, shapes


def write_voc_scenes(root: Path, *, splits: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """`root` in VOC layout with `splits` (name: how many scenes); ids never repeat across splits."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in splits.items():
        ids = []
        for _ in range(count):
            image, mask = scene(rng, size)
            ident = f"scene_{n:05d}"
            image.save(root / "JPEGImages" / f"{ident}.jpg", quality=95)
            mask.save(root / "SegmentationClass" / f"{ident}.png")
            ids.append(ident)
            n += 1
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def masks_of(root: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The split's images (N, 3, size, size, float in [0, 1]) and masks (N, size, size; 255 ignore)."""
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    images = np.stack([np.asarray(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB").resize((size, size)))
                       for i in ids]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    masks = np.stack([np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png").resize(
        (size, size), Image.NEAREST)) for i in ids])
    return images, masks


def write_coco_scenes(root: Path, *, splits: dict[str, int], size: int = 64, seed: int = 0, year: str = "") -> Path:
    """`root` in COCO's detection layout: <split><year>/<id>.jpg and annotations/instances_<split><year>.json
    with each shape's box (x, y, w, h), categories 1 square, 2 disc, 3 triangle; ids never repeat."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES) if i]
    n = box_id = 0
    for split, count in splits.items():
        folder = root / f"{split}{year}"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image, _, shapes = scene_with_boxes(rng, size)
            n += 1
            image.save(folder / f"scene_{n:05d}.jpg", quality=95)
            images.append({"id": n, "file_name": f"scene_{n:05d}.jpg", "width": size, "height": size})
            for kind, (x1, y1, x2, y2) in shapes:
                box_id += 1
                annotations.append({"id": box_id, "image_id": n, "category_id": kind, "iscrowd": 0,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(document))
    return root
