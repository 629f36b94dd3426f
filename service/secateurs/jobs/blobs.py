"""Content-addressed files: blobs/<first two hex>/<sha256>. Same bytes, one file.

Uploads stream into a temp file in the same directory tree (so the final rename
is atomic) while the digest is computed; nothing holds more than one chunk. Uploads
count against a quota (`max_bytes`, uploads and artifacts held in all); `collect()`
removes what the retention time has passed (store.expire says what).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from secateurs.errors import BlobNotFound, InvalidRequest, ResourceExhausted
from secateurs.jobs.store import JobStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StoredBlob:
    sha256: str
    size_bytes: int
    existed: bool


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


class BlobStore:
    """Files addressed by sha256 under `root`, indexed in the job store."""

    def __init__(self, root: Path, store: JobStore, *, max_bytes: int | None = None) -> None:
        """max_bytes: refuse uploads once this much is held (None: no quota)."""
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._store = store
        self.max_bytes = max_bytes
        self._commit_lock = threading.Lock()  # a commit and a collection never cross
        for stale in self._tmp.iterdir():  # left by a crash mid-upload
            stale.unlink(missing_ok=True)

    def held_bytes(self) -> int:
        return self._store.blob_bytes()

    def _check_quota(self, incoming: int) -> None:
        if self.max_bytes is None:
            return
        held = self.held_bytes()
        if held + incoming > self.max_bytes:
            raise ResourceExhausted(f"the server holds {held:,} bytes of uploads and artifacts; {incoming:,} more "
                                    f"would pass its quota of {self.max_bytes:,} (--max-blob-bytes). Old ones go "
                                    f"when their retention time passes")

    def collect(self, *, retention: float, now: float | None = None) -> tuple[list[str], int]:
        """Forget artifacts of jobs ended over `retention` seconds ago and blobs nothing live uses;
        delete their files. Returns (jobs whose artifacts expired, bytes freed)."""
        with self._commit_lock:
            jobs, gone = self._store.expire(now=time.time() if now is None else now, retention=retention)
            freed = 0
            for sha in gone:
                path = self.path(sha)
                try:
                    freed += path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
        if jobs or gone:
            log.info("retention: artifacts of %d job(s) expired, %d blob(s) removed, %d bytes freed",
                     len(jobs), len(gone), freed)
        return jobs, freed

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def sha_of(self, path: Path | str | None) -> str | None:
        """The blob id of a path inside this store, else None (a server-side dataset, say)."""
        if path is None:
            return None
        path = Path(path).resolve()
        return path.name if is_sha256(path.name) and path.parent.parent == self.root.resolve() else None

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
        """Write streamed chunks; verify size limit, quota, size and digest; store once."""
        self._check_quota(expected_size)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResourceExhausted(f"upload exceeds the server limit of {max_bytes} bytes")
                    if size > expected_size and size % (64 << 20) < len(chunk):  # no size given: check as it grows
                        self._check_quota(size - expected_size)
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
        with self._commit_lock:
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
