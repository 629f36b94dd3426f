"""Datasets for the pipeline: an ImageFolder directory or .zip, scikit-learn digits, synthetic,
VOC-style segmentation (per-pixel labels), COCO-style boxes (engine/intake/coco.py), JSONL text
(engine/intake/text.py).

Used for BatchNorm recalibration, sensitivity, fine-tuning and accuracy. Every
dataset yields `(tensor, label)`: labelled sources give the class index as an
int, synthetic data gives `UNLABELLED` (-1), so every consumer unpacks pairs.
Every dataset has `.labelled` and `.num_classes` (None when unlabelled).

Zip archives are read in place: the member list is read once, and each process
opens its own handle on first use (the handle is dropped when pickled and
reopened after a fork), so DataLoader workers are safe with fork and spawn.

Random augmentation (random crop, flip) draws from torch's global RNG. With
`make_loader(..., workers > 0)` each worker's RNG is seeded from the loader's
seed, so epochs replay exactly; with workers=0 it depends on the caller's RNG.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from secateurs.engine.inputs import generate, tensors
from secateurs.engine.spec import DataSpec, InputSpec, TransformSpec, validate_data_spec
from secateurs.errors import InvalidData, InvalidRequest, ResourceExhausted

UNLABELLED = -1
SYNTHETIC_DEFAULT_SIZE = 256
# Same suffixes as torchvision's ImageFolder (compared lower-case).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_DIGITS_SPLIT_SEED = 0  # fixed, so train and test never overlap whatever DataSpec.seed is
_DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """What a dataset archive may hold, checked against its directory before any member is
    read: a zip bomb (a small file that expands to gigabytes) is refused with the limit named.

    members: entries in the archive. member_bytes: one member, uncompressed (also the most
    read of one file from a directory). total_bytes: all members, uncompressed. ratio: the
    largest compression ratio of a member over 1 MiB (JPEG and PNG images compress little).
    image_pixels: the largest image decoded (width x height).
    """

    members: int = 4_000_000
    member_bytes: int = 64 << 20
    total_bytes: int = 256 << 30
    ratio: float = 100.0
    image_pixels: int = 1 << 25


LIMITS = ArchiveLimits()
_RATIO_FLOOR = 1 << 20  # small members may compress well (text, tiny PNGs): only large ones count


def check_archive(path: Path, limits: ArchiveLimits = LIMITS) -> int:
    """Check a zip's directory against `limits`; returns its member count. Raises
    ResourceExhausted(field="data") naming the limit, InvalidData when it is not a zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InvalidData(f"data path is neither a directory nor a readable zip: {path}") from exc
    if len(infos) > limits.members:
        raise ResourceExhausted(f"the dataset archive has {len(infos):,} members, over the limit of "
                                f"{limits.members:,}", field="data")
    total = 0
    for info in infos:
        if info.file_size > limits.member_bytes:
            raise ResourceExhausted(f"member {info.filename!r} of the dataset archive is {info.file_size:,} bytes "
                                    f"uncompressed, over the limit of {limits.member_bytes:,} per member",
                                    field="data")
        if info.file_size > _RATIO_FLOOR and info.file_size > limits.ratio * max(info.compress_size, 1):
            raise ResourceExhausted(f"member {info.filename!r} of the dataset archive expands "
                                    f"{info.file_size / max(info.compress_size, 1):,.0f}x, over the limit of "
                                    f"{limits.ratio:g}x (a zip bomb?)", field="data")
        total += info.file_size
    if total > limits.total_bytes:
        raise ResourceExhausted(f"the dataset archive holds {total:,} bytes uncompressed, over the limit of "
                                f"{limits.total_bytes:,}", field="data")
    return len(infos)


def build_transform(t: TransformSpec | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The callable for a TransformSpec (None for None); it maps a CHW float tensor to one."""
    if t is None:
        return None
    ops: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if t.resize is not None:
        ops.append(v2.Resize(t.resize, antialias=True))
    if t.center_crop is not None:
        ops.append(v2.CenterCrop(t.center_crop))
    if t.random_crop is not None:
        ops.append(v2.RandomCrop(t.random_crop, padding=t.crop_padding or None))
    if t.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if t.mean is not None and t.std is not None:
        ops.append(v2.Normalize(list(t.mean), list(t.std)))
    return v2.Compose(ops) if ops else None


class _DirReader:
    """Reads members of an ImageFolder directory by their '/'-joined relative name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = Path(root).resolve()

    def names(self, split: str) -> list[str]:
        """Top-level folders (as 'name/') plus every folder and file under `split`.

        Links are not followed out of the tree: a server that confines data to a root
        directory must not be led outside it by a symlink inside a dataset.
        """
        out = [f"{e.name}/" for e in os.scandir(self.root) if e.is_dir()]
        for dirpath, _, files in os.walk(self.root / split, followlinks=False):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.append(f"{rel}/")  # folders count even when empty
            out.extend(f"{rel}/{f}" for f in files if self._inside(Path(dirpath) / f))
        return out

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._real_root)

    def read(self, name: str) -> bytes:
        path = self.root / name
        if not self._inside(path):
            raise InvalidData(f"data file {name!r} points outside the dataset directory")
        with path.open("rb") as fh:  # never more than the limit: a directory can hold a huge file too
            data = fh.read(LIMITS.member_bytes + 1)
        if len(data) > LIMITS.member_bytes:
            raise ResourceExhausted(f"data file {name!r} is over the limit of {LIMITS.member_bytes:,} bytes",
                                    field="data")
        return data

    def close(self) -> None:
        pass


class _ZipReader:
    """Reads members of a zip; one handle per process, opened lazily (fork/spawn safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            # After a fork the inherited handle shares its file offset with the parent: never reuse it.
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def names(self, split: str) -> list[str]:
        check_archive(self.path)
        return self._handle().namelist()

    def read(self, name: str) -> bytes:
        # The directory was checked against LIMITS; reading stops at the declared size anyway.
        with self._handle().open(name) as member:
            data = member.read(LIMITS.member_bytes + 1)
        if len(data) > LIMITS.member_bytes:
            raise ResourceExhausted(f"member {name!r} is over the limit of {LIMITS.member_bytes:,} bytes",
                                    field="data")
        return data

    def close(self) -> None:
        if self._zip is not None and self._pid == os.getpid():
            self._zip.close()
        self._zip = None

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_zip": None, "_pid": -1}


def _decode(reader: _DirReader | _ZipReader, name: str, where: str, mode: str | None) -> np.ndarray:
    """One image as uint8 pixels, converted to `mode` ("RGB", "L"); mode None: a class-index mask (a
    palette or greyscale PNG) as it is. Raises InvalidData(field="data") naming the file when it cannot
    be read or decoded, ResourceExhausted when it is over the pixel limit."""
    try:
        with Image.open(io.BytesIO(reader.read(name))) as img:
            if img.width * img.height > LIMITS.image_pixels:  # known from the header, before decoding
                raise ResourceExhausted(f"image {name!r} in {where} is {img.width}x{img.height}, over the "
                                        f"limit of {LIMITS.image_pixels:,} pixels", field="data")
            if mode is None and img.mode not in ("P", "L"):
                raise InvalidData(f"mask {name!r} in {where} is {img.mode}: masks are class-index PNGs "
                                  f"(palette or greyscale, 255 for ignore)")
            return np.array(img.convert(mode) if mode else img, dtype=np.uint8)
    except (OSError, ValueError, EOFError, SyntaxError, NotImplementedError, zipfile.BadZipFile,
            Image.DecompressionBombError) as exc:  # NotImplementedError: a compression method zipfile lacks
        raise InvalidData(f"cannot read image {name!r} in {where} ({type(exc).__name__})") from exc


class ImageFolderDataset(Dataset):
    """Images under <split>/<class>/... of a directory or zip, decoded with PIL.

    Classes are the sorted class folder names (as torchvision's ImageFolder);
    `samples` lists (member name, class index) in sorted name order.
    """

    labelled = True

    def __init__(self, reader: _DirReader | _ZipReader, samples: list[tuple[str, int]], classes: list[str],
                 *, mode: str, transform: Callable[[torch.Tensor], torch.Tensor] | None, where: str) -> None:
        self.reader, self.samples, self.classes = reader, samples, classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.targets = [label for _, label in samples]
        self.num_classes: int | None = len(classes)
        self.mode, self.transform, self.where = mode, transform, where

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Raises InvalidRequest(field="data") naming the file when it cannot be read or decoded."""
        name, label = self.samples[index]
        array = _decode(self.reader, name, self.where, self.mode)
        x = torch.from_numpy(array).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
        x = x.float().div_(255)
        return (self.transform(x) if self.transform else x), label

    def close(self) -> None:
        """Close this process's zip handle (reopened if used again)."""
        self.reader.close()


class WithoutLabels(Dataset):
    """A labelled dataset's samples without their labels (each UNLABELLED): the same images and ids."""

    labelled = False
    num_classes: int | None = None

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.samples = getattr(dataset, "samples", None)  # names the images, as the dataset's own do
        self.ids = getattr(dataset, "ids", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], UNLABELLED

    def close(self) -> None:
        getattr(self.dataset, "close", lambda: None)()


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits (10 classes), values scaled to [0, 1]."""

    labelled = True

    def __init__(self, images: torch.Tensor, targets: list[int],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None, ids: list[str] | None = None) -> None:
        self.images, self.targets, self.transform = images, targets, transform
        self.ids = ids or [f"digits/{i}" for i in range(len(targets))]  # the image's index in the whole set
        self.classes = [str(d) for d in range(10)]
        self.num_classes: int | None = 10

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        return (self.transform(x) if self.transform else x), self.targets[index]


class SyntheticDataset(Dataset):
    """Unlabelled random tensors; sample i depends only on (seed, i), never on order or workers."""

    labelled = False
    num_classes: int | None = None

    def __init__(self, shape: tuple[int, ...], size: int, seed: int, distribution: str) -> None:
        self.shape, self.size, self.seed, self.distribution = tuple(shape), size, seed, distribution

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = np.random.default_rng([self.seed, index])
        draw = rng.standard_normal if self.distribution == "normal" else rng.random
        return torch.from_numpy(draw(self.shape, dtype=np.float32)), UNLABELLED


class GeneratedInputsDataset(Dataset):
    """Unlabelled generated samples of a model's several inputs (engine/inputs.py `generate`), each a
    tuple of tensors; sample i depends only on (seed, i)."""

    labelled = False
    num_classes: int | None = None

    def __init__(self, inputs: Sequence[InputSpec], size: int, seed: int, distribution: str = "normal") -> None:
        self.inputs, self.size, self.seed, self.distribution = tuple(inputs), size, seed, distribution

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        made = generate(self.inputs, 1, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index),
                        distribution=self.distribution)
        return tuple(t[0] for t in tensors(made)), UNLABELLED


def generated_dataset(inputs: Sequence[InputSpec], size: int, seed: int, distribution: str = "normal") -> Dataset:
    """Generated unlabelled samples for these inputs: images of `distribution` for one float input, else
    per input (engine/inputs.py `generate`)."""
    if len(inputs) == 1 and inputs[0].dtype == "float32":
        return SyntheticDataset(tuple(inputs[0].shape[1:]), size, seed, distribution)
    return GeneratedInputsDataset(inputs, size, seed, distribution)


def load_dataset(spec: DataSpec, inputs: Sequence[InputSpec] | None = None) -> Dataset:
    """Build the dataset a DataSpec names.

    Raises InvalidRequest: field="data.<name>" for a bad spec field (see
    validate_data_spec); field="data" when the path does not exist, is neither a
    directory nor a readable zip, lacks the split, or the split has no class
    folders or a class folder has no images. An image that cannot be decoded
    raises InvalidRequest(field="data") naming the file when it is read.
    """
    validate_data_spec(spec)
    dataset = _load(spec, inputs)
    return WithoutLabels(dataset) if spec.ignore_labels and dataset.labelled else dataset


def _load(spec: DataSpec, inputs: Sequence[InputSpec] | None) -> Dataset:
    transform = build_transform(spec.transform)
    if spec.source == "synthetic":
        return SyntheticDataset(spec.shape or (), spec.limit or SYNTHETIC_DEFAULT_SIZE, spec.seed, spec.distribution)
    if spec.source == "digits":
        return _load_digits(spec, transform)
    if spec.source == "jsonl":  # tokenised for the model's inputs (their names and sequence length)
        from secateurs.engine.intake.text import load_text

        path = Path(spec.path)
        if not path.exists():
            raise InvalidData(f"text data {path} is neither a directory nor a file")
        reader = _DirReader(path) if path.is_dir() else _ZipReader(path)
        return load_text(spec, reader, inputs, held_out=_held_out, subset=_subset)
    if spec.source == "voc":
        return _load_voc(spec, transform, inputs)
    if spec.source == "coco":
        return _load_coco(spec, transform, inputs)
    return _load_imagefolder(spec, transform)


def _load_digits(spec: DataSpec, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> DigitsDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if spec.split not in ("train", "test"):
        raise InvalidData(f"split {spec.split!r} not found in digits; found: test, train")
    digits = load_digits()
    train_idx, test_idx = train_test_split(np.arange(len(digits.target)), test_size=_DIGITS_TEST_FRACTION,
                                           stratify=digits.target, random_state=_DIGITS_SPLIT_SEED)
    idx = np.sort(train_idx if spec.split == "train" else test_idx)
    idx = idx[_held_out([f"digits/{i}" for i in idx], spec)]
    targets = [int(t) for t in digits.target[idx]]
    keep = _subset(targets, spec.limit, spec.limit_per_class, spec.seed)
    images = torch.from_numpy(digits.images[idx[keep]].astype(np.float32) / 16.0).unsqueeze(1)
    if spec.channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return DigitsDataset(images, [targets[i] for i in keep], transform, ids=[f"digits/{int(idx[i])}" for i in keep])


def _load_imagefolder(spec: DataSpec, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> ImageFolderDataset:
    path = Path(spec.path or "")
    if not path.exists():
        raise InvalidData(f"data path does not exist: {path}")
    reader: _DirReader | _ZipReader
    if path.is_dir():
        reader = _DirReader(path)
        names = reader.names(spec.split)
    else:
        reader = _ZipReader(path)
        try:
            names = reader.names(spec.split)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise InvalidData(f"data path is neither a directory nor a readable zip: {path}") from exc
    where = str(path)
    prefix = _split_prefix(names, spec.split, where)
    classes: set[str] = set()
    files: list[tuple[str, str]] = []
    for name in names:
        if not name.startswith(prefix):
            continue
        parts = PurePosixPath(name[len(prefix):]).parts
        if not parts or parts[0].startswith(".") or (len(parts) == 1 and not name.endswith("/")):
            continue  # hidden folders (.ipynb_checkpoints) and loose files next to class folders
        classes.add(parts[0])
        if not name.endswith("/") and not parts[-1].startswith(".") and parts[-1].lower().endswith(IMG_EXTENSIONS):
            files.append((name, parts[0]))
    if not classes:
        raise InvalidData(f"split {spec.split!r} in {where} has no class folders")
    ordered = sorted(classes)
    empty = sorted(classes - {c for _, c in files})
    if empty:
        raise InvalidData(f"split {spec.split!r} in {where} has class folders without images: "
                             f"{', '.join(empty)}")
    index = {c: i for i, c in enumerate(ordered)}
    samples = sorted((name, index[c]) for name, c in files)
    samples = [samples[i] for i in _held_out([name for name, _ in samples], spec)]
    keep = _subset([label for _, label in samples], spec.limit, spec.limit_per_class, spec.seed)
    mode = "L" if spec.channels == 1 else "RGB"
    return ImageFolderDataset(reader, [samples[i] for i in keep], ordered, mode=mode, transform=transform, where=where)


class SegmentationDataset(Dataset):
    """Pascal VOC-style segmentation: each image with its class-index mask, both resized to `size`
    (bilinear for the image, nearest for the mask). Mask value 255 (VOC's border and "difficult")
    becomes UNLABELLED (-1), which every loss and figure ignores. Labels are per pixel (`dense_labels`)."""

    labelled = True
    dense_labels = True
    num_classes: int | None = None  # the model's output says how many

    def __init__(self, reader: _DirReader | _ZipReader, ids: list[str], root: str, *, size: tuple[int, int] | None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None, where: str) -> None:
        self.reader, self.root, self.size, self.transform, self.where = reader, root, size, transform, where
        self.images = [f"{root}JPEGImages/{i}.jpg" for i in ids]
        self.masks = [f"{root}SegmentationClass/{i}.png" for i in ids]
        self.ids = self.images  # names the image wherever it appears: a split shared with another is caught

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = _decode(self.reader, self.images[index], self.where, "RGB")
        mask = _decode(self.reader, self.masks[index], self.where, None)
        if image.shape[:2] != mask.shape[:2]:
            raise InvalidData(f"mask {self.masks[index]!r} is {mask.shape[1]}x{mask.shape[0]}, its image "
                              f"{image.shape[1]}x{image.shape[0]}")
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        y = torch.from_numpy(mask.astype(np.int64))[None]
        if self.size is not None and tuple(x.shape[1:]) != self.size:
            x = v2.functional.resize(x, list(self.size), antialias=True)
            y = v2.functional.resize(y, list(self.size), interpolation=v2.InterpolationMode.NEAREST)
        y = y[0].masked_fill(y[0] == 255, UNLABELLED)
        return (self.transform(x) if self.transform else x), y

    def close(self) -> None:
        self.reader.close()


_VOC_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a file stem: no folders, no way out of the tree


def _load_voc(spec: DataSpec, transform: Callable[[torch.Tensor], torch.Tensor] | None,
              inputs: Sequence[InputSpec] | None) -> SegmentationDataset:
    path = Path(spec.path or "")
    if not path.exists():
        raise InvalidData(f"data path does not exist: {path}")
    listing = f"ImageSets/Segmentation/{spec.split}.txt"
    if path.is_dir():
        reader: _DirReader | _ZipReader = _DirReader(path)
        tops = [""] + sorted(f"{e.name}/" for e in os.scandir(path) if e.is_dir())
        roots = [r for r in tops if (path / r / listing).is_file()]
        present = None
    else:
        reader = _ZipReader(path)
        names = reader.names(spec.split)
        roots = [n[: -len(listing)] for n in names if n.endswith(listing) and n[: -len(listing)].count("/") <= 1]
        present = set(names)
    if not roots:
        raise InvalidData(f"{path} has no {listing} (Pascal VOC segmentation layout: JPEGImages/, "
                          f"SegmentationClass/, ImageSets/Segmentation/<split>.txt)")
    root = roots[0]
    ids = [line.split()[0] for line in reader.read(root + listing).decode("utf-8", "replace").splitlines()
           if line.strip()]
    bad = next((i for i in ids if not _VOC_ID.match(i)), None)
    if bad is not None:
        raise InvalidData(f"{listing} in {path} names {bad[:80]!r}, not an image id")
    if not ids:
        raise InvalidData(f"{listing} in {path} lists no images")
    for i in ids:
        for name in (f"{root}JPEGImages/{i}.jpg", f"{root}SegmentationClass/{i}.png"):
            if not (name in present if present is not None else (path / name).is_file()):
                raise InvalidData(f"{path} lists {i!r} in {listing} but has no {name}")
    ids = [ids[n] for n in _held_out([f"{root}JPEGImages/{i}.jpg" for i in ids], spec)]
    ids = [ids[n] for n in _subset([0] * len(ids), spec.limit, None, spec.seed)]
    size = tuple(inputs[0].shape[2:]) if inputs else None
    return SegmentationDataset(reader, ids, root, size=size if size and len(size) == 2 else None,
                               transform=transform, where=str(path))


def _load_coco(spec: DataSpec, transform: Callable[[torch.Tensor], torch.Tensor] | None,
               inputs: Sequence[InputSpec] | None) -> Dataset:
    from secateurs.engine.intake.coco import load_coco

    path = Path(spec.path or "")
    if not path.exists():
        raise InvalidData(f"data path does not exist: {path}")
    if path.is_dir():
        reader: _DirReader | _ZipReader = _DirReader(path)
        names = None
        exists: Callable[[str], bool] = lambda name: (path / name).is_file() and reader._inside(path / name)
    else:
        reader = _ZipReader(path)
        names = reader.names(spec.split)
        present = set(names)
        exists = present.__contains__
    return load_coco(spec, reader, names, exists, transform=transform, inputs=inputs, where=str(path),
                     decode=_decode, held_out=_held_out, subset=_subset)


def _split_prefix(names: Sequence[str], split: str, where: str) -> str:
    """'<split>/', or '<root>/<split>/' when everything sits under one top folder (zips often do)."""

    def tops(prefix: str) -> set[str]:
        return {n[len(prefix):].split("/", 1)[0] for n in names if n.startswith(prefix) and "/" in n[len(prefix):]}

    found = tops("") - {"__MACOSX"}
    if split in found:
        return f"{split}/"
    if len(found) == 1:
        root = f"{next(iter(found))}/"
        inner = tops(root)
        if split in inner:
            return f"{root}{split}/"
        if inner:
            found = {f"{root}{d}" for d in inner}
    raise InvalidData(f"split {split!r} not found in {where}; found: {', '.join(sorted(found)) or 'nothing'}")


def _held_out(ids: Sequence[str], spec: DataSpec) -> list[int]:
    """The positions spec.holdout keeps: those whose seeded hash falls in the held-out fraction, or the others."""
    if spec.holdout is None:
        return list(range(len(ids)))
    limit = int(spec.holdout_fraction * 2**64)
    held = [int.from_bytes(hashlib.sha256(f"{spec.seed}:{i}".encode()).digest()[:8], "big") < limit for i in ids]
    return [n for n, h in enumerate(held) if h == (spec.holdout == "held")]


def _subset(labels: Sequence[int], limit: int | None, per_class: int | None, seed: int) -> list[int]:
    """Indices of a seeded subset, returned sorted. A total limit is spread evenly over the
    classes (round robin over each class's shuffled samples). Limits above the size keep all."""
    if limit is None and per_class is None:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    pools = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    if per_class is not None:
        return sorted(int(i) for pool in pools for i in pool[:per_class])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(limit or 0, len(labels)):
        chosen.extend(int(pool[depth]) for pool in pools if depth < len(pool))
        depth += 1
    return sorted(chosen[: limit or 0])


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0,
                *, drop_last: bool = False, multiprocessing_context: str | None = None) -> DataLoader:
    """A DataLoader whose order (and workers' augmentation RNG) is fixed by `seed`.

    Batches are (inputs, labels) with labels a LongTensor (all UNLABELLED for
    synthetic data). Workers are kept alive across epochs. Raises
    InvalidRequest(field="data") for batch_size < 1 or workers < 0.
    """
    if batch_size < 1:
        raise InvalidData(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise InvalidData(f"workers must be >= 0, got {workers}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
                      drop_last=drop_last, persistent_workers=workers > 0,
                      multiprocessing_context=multiprocessing_context if workers > 0 else None)
