"""Generated scenes in Pascal VOC's segmentation layout: shapes on a noisy background, one class per
shape (1 square, 2 disc, 3 triangle; 0 background), each shape's colour drawn at random so the
class is its shape, not its colour, and a 1-pixel ignore border (255) around every shape, as VOC
draws one. Used by the tests and by benchmarks/reach.py's segmentation accuracy case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("background", "square", "disc", "triangle")
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 251 + [224, 224, 192]


def scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """One image and its class-index mask (mode P)."""
    noise = rng.normal(110, 30, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1))
    mask = Image.new("P", (size, size), 0)
    mask.putpalette(_PALETTE)
    draw, paint = ImageDraw.Draw(image), ImageDraw.Draw(mask)
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
    classes = np.asarray(mask)
    edge = np.zeros_like(classes, dtype=bool)  # a pixel beside one of another class: VOC's ignore border
    edge[1:] |= classes[1:] != classes[:-1]
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    labelled = Image.fromarray(np.where(edge, 255, classes).astype(np.uint8), mode="P")
    labelled.putpalette(_PALETTE)
    return image, labelled


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
