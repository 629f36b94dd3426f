"""Content-addressed files: blobs/<first two hex>/<sha256>. Same bytes, one file.

Uploads stream into a temp file in the same directory tree (so the final rename
is atomic) while the digest is computed; nothing holds more than one chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from secateurs.errors import BlobNotFound, InvalidRequest, ResourceExhausted
from secateurs.jobs.store import JobStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class StoredBlob:
    sha256: str
    size_bytes: int
    existed: bool


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


class BlobStore:
    """Files addressed by sha256 under `root`, indexed in the job store."""

    def __init__(self, root: Path, store: JobStore) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._store = store
        for stale in self._tmp.iterdir():  # left by a crash mid-upload
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def require(self, sha256: str, *, field: str) -> Path:
        """Path of a stored blob; InvalidRequest naming `field` when absent or malformed."""
        if not is_sha256(sha256):
            raise InvalidRequest(f"{field} must be a sha256 hex digest", field=field)
        path = self.path(sha256)
        if self._store.get_blob(sha256) is None or not path.exists():
            raise InvalidRequest(f"{field}: no blob {sha256}; upload it first", field=field)
        return path

    def open(self, sha256: str) -> Path:
        path = self.path(sha256)
        if not path.exists():
            raise BlobNotFound(f"no blob {sha256}")
        return path

    def receive(
        self, chunks: Iterable[bytes], *, expected_sha256: str, expected_size: int, max_bytes: int,
    ) -> StoredBlob:
        """Write streamed chunks; verify size limit, size and digest; store once."""
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResourceExhausted(f"upload exceeds the server limit of {max_bytes} bytes")
                    digest.update(chunk)
                    f.write(chunk)
            actual = digest.hexdigest()
            if expected_size and size != expected_size:
                raise InvalidRequest(f"header.size_bytes says {expected_size}, received {size}",
                                     field="header.size_bytes")
            if actual != expected_sha256:
                raise InvalidRequest(f"header.sha256 does not match the data (got {actual})",
                                     field="header.sha256")
            return self._commit(tmp, actual, size)
        finally:
            tmp.unlink(missing_ok=True)

    def ingest(self, path: Path) -> StoredBlob:
        """Move a file produced by a job into the store (hashing it on the way)."""
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while block := f.read(_READ_CHUNK):
                digest.update(block)
                size += len(block)
        tmp = self._tmp / f"ingest-{os.getpid()}-{digest.hexdigest()}"
        os.replace(path, tmp) if path.stat().st_dev == self._tmp.stat().st_dev else _copy(path, tmp)
        try:
            return self._commit(tmp, digest.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, tmp: Path, sha256: str, size: int) -> StoredBlob:
        final = self.path(sha256)
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        existed = self._store.put_blob(sha256, size)
        return StoredBlob(sha256=sha256, size_bytes=size, existed=existed)


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while block := fi.read(_READ_CHUNK):
            fo.write(block)
