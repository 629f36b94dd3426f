"""engine/intake/data.py: ImageFolder (directory and zip), digits, synthetic, transforms, loaders."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from secateurs.engine.intake.data import UNLABELLED, build_transform, load_dataset, make_loader
from secateurs.engine.spec import DataSpec, TransformSpec
from secateurs.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[3]
CIFAR10_ZIP = Path(os.environ.get("SECATEURS_CIFAR10_ZIP", REPO / ".." / "shared" / "datasets" / "cifar10-jpeg.zip"))

# Solid colours far apart, so a decoded (lossy) JPEG still tells its class.
COLOURS = {"dog": (230, 20, 20), "cat": (20, 230, 20), "bird": (20, 20, 230)}
PER_CLASS = {"train": 5, "test": 2}


def _jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG", quality=95)


def _zip_dir(root: Path, dest: Path, *, top: str = "", dir_entries: bool = True) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(root.rglob("*")):
            arc = top + p.relative_to(root).as_posix()
            if p.is_dir():
                if dir_entries:
                    zf.writestr(arc + "/", b"")
            else:
                zf.write(p, arc)
    return dest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for split, n in PER_CLASS.items():
        for cls, colour in COLOURS.items():
            for i in range(n):
                _jpeg(root / split / cls / f"{i:04d}.jpg", colour)
    (root / "train" / "notes.txt").write_text("loose files next to class folders are ignored")
    (root / "train" / "cat" / "notes.txt").write_text("non-image files are ignored")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


@pytest.fixture
def tree_zip(tree: Path, tmp_path: Path) -> Path:
    return _zip_dir(tree, tmp_path / "tree.zip")


def _spec(path: Path, **kw: object) -> DataSpec:
    return DataSpec(source="imagefolder", path=path, **kw)  # type: ignore[arg-type]


def _error(spec: DataSpec) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        ds = load_dataset(spec)
        for i in range(len(ds)):
            ds[i]
    return info.value


# --- ImageFolder: directory and zip -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["dir", "zip", "zip-no-dir-entries", "zip-under-top-folder"])
def test_imagefolder_classes_labels_shapes(kind: str, tree: Path, tmp_path: Path) -> None:
    path = {
        "dir": tree,
        "zip": _zip_dir(tree, tmp_path / "a.zip"),
        "zip-no-dir-entries": _zip_dir(tree, tmp_path / "b.zip", dir_entries=False),
        "zip-under-top-folder": _zip_dir(tree, tmp_path / "c.zip", top="cifar/"),
    }[kind]
    ds = load_dataset(_spec(path, split="train"))
    assert ds.labelled and ds.num_classes == 3
    assert ds.classes == ["bird", "cat", "dog"]  # sorted, like torchvision's ImageFolder
    assert len(ds) == 15 and ds.targets == [0] * 5 + [1] * 5 + [2] * 5
    for i in range(len(ds)):
        x, y = ds[i]
        assert isinstance(y, int) and x.shape == (3, 8, 8) and x.dtype == torch.float32
        expected = torch.tensor(COLOURS[ds.classes[y]], dtype=torch.float32) / 255
        assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=0.05)
    assert len(load_dataset(_spec(path, split="test"))) == 6


def test_dir_and_zip_give_identical_tensors(tree: Path, tree_zip: Path) -> None:
    a, b = load_dataset(_spec(tree, split="test")), load_dataset(_spec(tree_zip, split="test"))
    assert [s[0].split("/", 1)[1] for s in a.samples] == [s[0].split("/", 1)[1] for s in b.samples]
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_subsets_are_balanced_seeded_and_deterministic(tree_zip: Path) -> None:
    def names(**kw: object) -> list[str]:
        return [name for name, _ in load_dataset(_spec(tree_zip, split="train", **kw)).samples]

    per_class = load_dataset(_spec(tree_zip, split="train", limit_per_class=2, seed=3))
    assert len(per_class) == 6 and sorted(per_class.targets) == [0, 0, 1, 1, 2, 2]
    assert per_class.num_classes == 3
    total = load_dataset(_spec(tree_zip, split="train", limit=7, seed=3))
    assert len(total) == 7 and sorted(total.targets.count(c) for c in range(3)) == [2, 2, 3]
    assert names(limit=7, seed=3) == names(limit=7, seed=3)
    assert any(names(limit=3, seed=s) != names(limit=3, seed=0) for s in range(1, 6))
    assert len(names(limit=1000)) == 15 and len(names(limit_per_class=1000)) == 15


def test_channels_and_transforms(tree_zip: Path) -> None:
    gray = load_dataset(_spec(tree_zip, split="test", channels=1))
    assert gray[0][0].shape == (1, 8, 8)
    t = TransformSpec(resize=16, center_crop=12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, _ = load_dataset(_spec(tree_zip, split="test", transform=t))[0]
    assert x.shape == (3, 12, 12) and x.min() < 0
    train = TransformSpec.preset("cifar10", train=True)
    assert (train.random_crop, train.crop_padding, train.hflip) == (32, 4, True)
    assert TransformSpec.preset("cifar10").random_crop is None
    imagenet = TransformSpec.preset("imagenet")
    assert (imagenet.resize, imagenet.center_crop) == (256, 224)
    transform = build_transform(TransformSpec(random_crop=8, crop_padding=2, hflip=True))
    assert transform is not None and transform(torch.rand(3, 8, 8)).shape == (3, 8, 8)
    assert build_transform(TransformSpec()) is None


def test_zip_dataset_pickles_without_its_handle(tree_zip: Path) -> None:
    ds = load_dataset(_spec(tree_zip, split="test"))
    first = ds[0][0]  # opens the handle in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[0][0], first)
    ds.close()
    assert torch.equal(ds[0][0], first)  # reopened on use


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_read_zip_safely(context: str, tree_zip: Path) -> None:
    ds = load_dataset(_spec(tree_zip, split="train"))
    serial = torch.stack([ds[i][0] for i in range(len(ds))])  # parent holds an open handle
    workers = 2 if context == "fork" else 1
    loader = make_loader(ds, batch_size=4, shuffle=False, seed=0, workers=workers, multiprocessing_context=context)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(xs), serial) and torch.cat(ys).tolist() == ds.targets


def test_make_loader_shuffle_is_seeded() -> None:
    ds = load_dataset(DataSpec(source="digits", split="test", limit=40))

    def order(seed: int) -> list[int]:
        return [y for _, ys in make_loader(ds, 8, shuffle=True, seed=seed) for y in ys.tolist()]

    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == sorted(ds.targets)


# --- Errors: exact messages -------------------------------------------------------------------

def test_missing_path(tmp_path: Path) -> None:
    err = _error(_spec(tmp_path / "nope.zip"))
    assert (str(err), err.field) == (f"data path does not exist: {tmp_path / 'nope.zip'}", "data")


def test_not_a_zip_and_corrupt_zip(tmp_path: Path, tree_zip: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("hello")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(tree_zip.read_bytes()[: tree_zip.stat().st_size // 2])
    for path in (text, truncated):
        err = _error(_spec(path))
        assert (str(err), err.field) == (f"data path is neither a directory nor a readable zip: {path}", "data")


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_no_such_split(kind: str, tree: Path, tree_zip: Path) -> None:
    path = tree if kind == "dir" else tree_zip
    err = _error(_spec(path, split="val"))
    assert (str(err), err.field) == (f"split 'val' not found in {path}; found: test, train", "data")


def test_no_classes_and_empty_class(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "train" / "stray.jpg").write_bytes(b"")
    err = _error(_spec(root))
    assert (str(err), err.field) == (f"split 'train' in {root} has no class folders", "data")
    (root / "train" / "cat").mkdir()
    (root / "train" / "dog").mkdir()
    _jpeg(root / "train" / "dog" / "0.jpg", COLOURS["dog"])
    err = _error(_spec(_zip_dir(root, tmp_path / "r.zip")))
    assert str(err) == f"split 'train' in {tmp_path / 'r.zip'} has class folders without images: cat"


def test_unreadable_image_is_named(tree: Path, tmp_path: Path) -> None:
    (tree / "test" / "cat" / "0001.jpg").write_bytes(b"not a jpeg")
    path = _zip_dir(tree, tmp_path / "bad.zip")
    err = _error(_spec(path, split="test"))
    expected = f"cannot read image 'test/cat/0001.jpg' in {path} (UnidentifiedImageError)"
    assert (str(err), err.field) == (expected, "data")
    # The same error raised inside a DataLoader worker keeps its type, field and the file name.
    batches = iter(make_loader(load_dataset(_spec(path, split="test")), 8, workers=1, multiprocessing_context="fork"))
    try:
        next(batches)
    except InvalidRequest as exc:
        message, field = str(exc), exc.field
        exc.__traceback__ = None  # torch's re-raise frames hold the iterator in a cycle: free its worker now
    else:
        pytest.fail("the unreadable image was not reported")
    del batches
    assert "test/cat/0001.jpg" in message and field == "data"


def test_corrupt_zip_member_is_named(tree: Path, tmp_path: Path) -> None:
    path = _zip_dir(tree, tmp_path / "crc.zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("test/dog/0000.jpg")
    data[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # a byte inside the stored JPEG
    path.write_bytes(bytes(data))
    err = _error(_spec(path, split="test"))
    assert str(err) == f"cannot read image 'test/dog/0000.jpg' in {path} (BadZipFile)"


def test_a_compression_method_zipfile_lacks_is_named(tree: Path, tmp_path: Path) -> None:
    # found by benchmarks/fuzz.py: zipfile raises NotImplementedError for an unknown method
    path = _zip_dir(tree, tmp_path / "method.zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("test/dog/0000.jpg")
    data[info.header_offset + 8:info.header_offset + 10] = (99).to_bytes(2, "little")  # local header's method
    for at in (i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)):  # central directory entries
        name_len = int.from_bytes(data[at + 28:at + 30], "little")
        if bytes(data[at + 46:at + 46 + name_len]) == b"test/dog/0000.jpg":
            data[at + 10:at + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    err = _error(_spec(path, split="test"))
    assert str(err) == f"cannot read image 'test/dog/0000.jpg' in {path} (NotImplementedError)"


BAD_SPECS = [
    (dict(source="csv"), "data.source", "unknown data source 'csv'; expected one of: imagefolder, digits, synthetic, jsonl, voc, coco"),
    (dict(source="digits", split="dev"), "data.split", "unknown split 'dev'; expected one of: train, test, val"),
    (dict(source="digits", limit=0), "data.limit", "limit must be positive, got 0"),
    (dict(source="digits", limit_per_class=-1), "data.limit_per_class", "limit_per_class must be positive, got -1"),
    (dict(source="digits", limit=1, limit_per_class=1), "data.limit", "give limit or limit_per_class, not both"),
    (dict(source="digits", seed=-1), "data.seed", "seed must be >= 0, got -1"),
    (dict(source="digits", channels=2), "data.channels", "channels must be 1 or 3, got 2"),
    (dict(source="imagefolder"), "data.path", "source 'imagefolder' needs a path (a directory or a .zip)"),
    (dict(source="synthetic"), "data.shape", "synthetic data needs a shape of positive sizes, got None"),
    (dict(source="synthetic", shape=(3, 0)), "data.shape", "synthetic data needs a shape of positive sizes, got (3, 0)"),
    (dict(source="synthetic", shape=(3,), distribution="beta"), "data.distribution",
     "unknown distribution 'beta'; expected one of: normal, uniform"),
    (dict(source="synthetic", shape=(3,), transform=TransformSpec()), "data.transform",
     "transform does not apply to synthetic data"),
    (dict(source="digits", split="val"), "data", "split 'val' not found in digits; found: test, train"),
    (dict(source="digits", transform=TransformSpec(resize=0)), "data.transform",
     "resize must be a positive size or (height, width), got 0"),
    (dict(source="digits", transform=TransformSpec(crop_padding=4)), "data.transform",
     "crop_padding needs random_crop"),
    (dict(source="digits", transform=TransformSpec(mean=(0.5,))), "data.transform",
     "mean and std must be given together"),
    (dict(source="digits", transform=TransformSpec.preset("cifar10")), "data.transform",
     "mean and std need 1 or 1 values each, got 3 and 3"),
    (dict(source="digits", transform=TransformSpec(mean=(0.5,), std=(0.0,))), "data.transform",
     "std values must be positive, got (0.0,)"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BAD_SPECS)
def test_bad_specs(fields: dict[str, object], field: str, message: str) -> None:
    err = _error(DataSpec(**fields))  # type: ignore[arg-type]
    assert (str(err), err.field) == (message, field)


def test_unknown_preset() -> None:
    with pytest.raises(InvalidRequest, match=r"^unknown transform preset 'mnist'; expected one of: cifar10, imagenet$"):
        TransformSpec.preset("mnist")


# --- Digits and synthetic ---------------------------------------------------------------------

def test_digits() -> None:
    train, test = load_dataset(DataSpec(source="digits")), load_dataset(DataSpec(source="digits", split="test"))
    assert train.labelled and train.num_classes == 10 and len(train) + len(test) == 1797
    assert set(train.targets) == set(test.targets) == set(range(10))
    x, y = train[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and isinstance(y, int)
    again = load_dataset(DataSpec(source="digits"))
    assert torch.equal(train.images, again.images) and train.targets == again.targets
    rgb = load_dataset(DataSpec(source="digits", split="test", channels=3, limit_per_class=3,
                                transform=TransformSpec(resize=32, mean=(0.5,) * 3, std=(0.5,) * 3)))
    assert len(rgb) == 30 and rgb[0][0].shape == (3, 32, 32)
    assert torch.equal(rgb[0][0][0], rgb[0][0][2])


def test_synthetic_is_seeded_and_unlabelled() -> None:
    spec = DataSpec(source="synthetic", shape=(3, 4, 4), limit=10, seed=7)
    a, b = load_dataset(spec), load_dataset(spec)
    assert not a.labelled and a.num_classes is None and len(a) == 10
    assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == UNLABELLED for i in range(10))
    assert not torch.equal(a[0][0], a[1][0])
    other = load_dataset(DataSpec(source="synthetic", shape=(3, 4, 4), limit=10, seed=8))
    assert not torch.equal(a[0][0], other[0][0])
    uniform = load_dataset(DataSpec(source="synthetic", shape=(2, 5), distribution="uniform"))
    assert len(uniform) == 256 and 0.0 <= float(uniform[3][0].min()) and float(uniform[3][0].max()) < 1.0
    x, y = next(iter(make_loader(a, 4)))
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [UNLABELLED] * 4
    with pytest.raises(IndexError):
        a[10]


# --- The real CIFAR-10 zip --------------------------------------------------------------------

@pytest.mark.skipif(not CIFAR10_ZIP.is_file(), reason=f"CIFAR-10 zip not found at {CIFAR10_ZIP} "
                    "(set SECATEURS_CIFAR10_ZIP)")
def test_cifar10_zip_subset() -> None:
    spec = DataSpec(source="imagefolder", path=CIFAR10_ZIP, split="test", limit=100, seed=0,
                    transform=TransformSpec.preset("cifar10"))
    ds = load_dataset(spec)
    assert len(ds) == 100 and ds.num_classes == 10 and sorted(set(ds.targets)) == list(range(10))
    assert ds.classes == sorted(ds.classes) and "airplane" in ds.classes
    x, y = next(iter(make_loader(ds, 100, workers=2)))
    assert x.shape == (100, 3, 32, 32) and y.shape == (100,)
    assert abs(float(x.mean())) < 0.5  # normalised with the CIFAR-10 statistics
    assert [n for n, _ in load_dataset(spec).samples] == [n for n, _ in ds.samples]


def test_symlinks_out_of_the_tree_are_not_followed(tmp_path):
    from PIL import Image

    from secateurs.engine.intake.data import load_dataset
    from secateurs.engine.spec import DataSpec

    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(outside / "leak.jpg")
    root = tmp_path / "ds"
    (root / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4), (0, 255, 0)).save(root / "train" / "a" / "0.jpg")
    (root / "train" / "a" / "1.jpg").symlink_to(outside / "leak.jpg")
    (root / "train" / "b").symlink_to(outside, target_is_directory=True)
    ds = load_dataset(DataSpec(source="imagefolder", path=root, split="train"))
    assert len(ds) == 1  # the linked file and the linked folder's contents are skipped
