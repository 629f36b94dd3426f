"""DataSource -> DataSpecs: uploaded zips and server-side paths, checked before a job is queued.

A blob id names an uploaded .zip of an ImageFolder tree; it resolves to the blob's
file in the blob store. A uri is a path on the server, accepted only when the
server has a data root (`--data-root`) and the path, with `..` and symlinks
resolved, lies inside it: a client must not make a job read arbitrary files of
the server. Each refusal is an InvalidRequest naming the request field.

What is checked here is what is cheap: the zip's directory against the archive limits
(member count, sizes, compression ratio: engine/intake/data.py ArchiveLimits), the path's existence.
The split and class folders are read when the job starts (the listing of a large
dataset takes too long for a CreateJob call).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from secateurs.engine.intake.calibration import held_out
from secateurs.engine.intake.data import check_archive
from secateurs.engine.spec import DataSpec, TransformSpec, validate_data_spec
from secateurs.errors import InvalidRequest, ResourceExhausted
from secateurs.jobs.blobs import BlobStore
from secateurs_client.v1 import compression_pb2 as pb

DEFAULT_VAL_SPLIT = "test"
FORMATS = ("imagefolder", "jsonl", "voc", "coco")  # the data sources a request may name (engine/spec.py SOURCES less generated ones)
_FILE_SCHEME = "file://"


def data_specs(
    src: pb.DataSource, blobs: BlobStore, *, data_root: Path | None, recovery: bool, seed: int,
) -> tuple[DataSpec | None, DataSpec | None]:
    """(val, train) DataSpecs for a request's data field (None where not given).

    data_root: the resolved --data-root, or None (then every *_uri is refused).
    recovery: whether the request sets recovery; train data is only used by it.
    """
    source = src.format or "imagefolder"
    val_transform = _preset(src.preset, train=False, source=source)
    train_transform = _preset(src.preset, train=True, source=source)
    val_path, val_field = _location(src, "val", blobs, data_root)
    train_path, train_field = _location(src, "train", blobs, data_root)
    if train_path is not None and not recovery:
        raise _bad(train_field, "training data is used by recovery only; set recovery (recovery.epochs) too")
    if src.preset and val_path is None and train_path is None:
        raise _bad("data.preset", "a preset applies to data; give data.val_* or data.train_* too")
    if src.val_split and val_path is None:
        raise _bad("data.val_split", "applies to val data; give data.val_blob_id or data.val_uri too")
    if source == "jsonl" and src.preset:
        raise _bad("data.preset", "a preset transforms images; text data has none")
    val = train = None
    if val_path is not None:
        val = DataSpec(source=source, path=val_path, split=src.val_split or DEFAULT_VAL_SPLIT, seed=seed,
                       transform=val_transform)
        _check(val, path_field=val_field, split_field="data.val_split")
    if train_path is not None:
        train = DataSpec(source=source, path=train_path, split="train", seed=seed,
                         transform=train_transform)
        _check(train, path_field=train_field, split_field=train_field)
        if val is None:  # only a train split: evaluate on a seeded part of it that recovery never trains on
            val, train = held_out(train, val_transform)
    return val, train



def resolve_uri(uri: str, data_root: Path | None, *, field: str) -> Path:
    """The absolute path a uri names, inside `data_root` (already resolved); InvalidRequest otherwise.

    Accepted: a path relative to the root, an absolute path, or file:///absolute/path.
    """
    if data_root is None:
        raise _bad(field, "this server has no data root, so it accepts no server-side paths "
                          "(start it with --data-root DIR, or upload the data as a .zip: data.*_blob_id)")
    text = uri
    if uri.startswith(_FILE_SCHEME):
        text = uri[len(_FILE_SCHEME):]
        if not text.startswith("/"):
            raise _bad(field, f"a file uri needs an absolute path (file:///...), got {uri!r}")
    elif "://" in uri:
        raise _bad(field, f"only server-side paths are supported (a path or file:///...), got {uri!r}")
    try:
        path = Path(text)
        # resolve() follows symlinks and folds `..` first, so the containment check sees the real target
        resolved = (path if path.is_absolute() else data_root / path).resolve()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops
        raise _bad(field, f"{uri!r} is not a usable path") from None
    if not resolved.is_relative_to(data_root):
        raise _bad(field, f"{uri!r} is outside the server's data root")
    if not resolved.exists():
        raise _bad(field, f"{uri!r} does not exist under the server's data root")
    if not (resolved.is_dir() or (resolved.is_file() and zipfile.is_zipfile(resolved))):  # never open a FIFO
        raise _bad(field, f"{uri!r} is neither a directory nor a zip archive")
    return resolved


def _location(src: pb.DataSource, part: str, blobs: BlobStore,
              data_root: Path | None) -> tuple[Path | None, str]:
    """The file behind data.<part>_blob_id or data.<part>_uri, and the field that gave it."""
    blob_field, uri_field = f"data.{part}_blob_id", f"data.{part}_uri"
    blob_id, uri = getattr(src, f"{part}_blob_id"), getattr(src, f"{part}_uri")
    if blob_id and uri:
        raise _bad(uri_field, f"give {blob_field} or {uri_field}, not both")
    if uri:
        path, field = resolve_uri(uri, data_root, field=uri_field), uri_field
    elif not blob_id:
        return None, blob_field
    else:
        # absolute, because the path is stored in the job's spec and read by its worker
        path, field = blobs.require(blob_id, field=blob_field).resolve(), blob_field
        if not zipfile.is_zipfile(path):
            raise _bad(blob_field, f"blob {blob_id} is not a zip archive (expected a .zip of <split>/<class>/<image>)")
    if path.is_file():
        _bounded(path, field)
    return path, field


def _bounded(path: Path, field: str) -> None:
    """The archive's directory against the engine's limits (a zip bomb is refused here, not in a worker)."""
    try:
        check_archive(path)
    except ResourceExhausted as exc:
        raise ResourceExhausted(f"{field}: {exc}", field=field) from None
    except InvalidRequest as exc:
        raise _bad(field, str(exc)) from None


def _preset(name: str, *, train: bool, source: str) -> TransformSpec | None:
    """The engine's preset (its message for an unknown name, under data.preset)."""
    if source not in FORMATS:
        raise _bad("data.format", f"must be one of {', '.join(FORMATS)}, got {source[:32]!r}")
    if not name:
        return None
    try:
        return TransformSpec.preset(name, train=train, source=source)
    except InvalidRequest as exc:
        raise _bad("data.preset", str(exc)) from None


def _check(spec: DataSpec, *, path_field: str, split_field: str) -> None:
    """The engine's checks, re-raised under the request's field names."""
    wire = {"data.transform": "data.preset", "data.split": split_field, "data.path": path_field}
    try:
        validate_data_spec(spec)
    except InvalidRequest as exc:
        field = wire.get(exc.field or "", path_field)
        raise _bad(field, str(exc)) from None


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", field=field)
