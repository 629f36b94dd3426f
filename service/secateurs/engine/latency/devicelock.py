"""One measurement at a time per machine, and none while another job computes on the same cores.

A latency figure taken while a second process trains on the same two cores is worth nothing
(torch slows 4x under contention; benchmarks/RESULTS.md shows a 3x budget landing at 5x after a
busy run). Every process that works in one data directory (a server's workers, the command line
pointed at the same cache) shares two lock files there:

    measure.lock   held exclusively while a model is measured, shared while a unit of compute
                   runs (a training step, a batch of quality evaluation, a pruning, an export)
    gate.lock      passed through by whoever wants to start, so a measurement that waits is not
                   starved by units of compute that keep starting (a turnstile)

So a measurement waits for the units of compute in flight to finish (a step each, not a job),
and no new unit starts until it is done. Within one process nothing waits for itself: compute
is not locked while the same process measures. Every measurement window is recorded, with
its wall-clock start and end, for the job's report.

    configure(Path(".secateurs/cache"))        # once per process (the pipeline does it)

$SECATEURS_LOCK_DIR, when set, is the one directory every process uses instead, whatever it is
configured with (several servers, or servers and the command line, on one machine).
    with measuring():  ...                     # LocalTarget.measure
    with computing():  ...                     # a training step
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

_state = threading.local()
_lock = threading.Lock()
_directory: Path | None = None
_files: dict[str, IO[bytes]] = {}
_pid = -1
_windows: list[tuple[float, float]] = []
LOCK_DIR_ENV = "SECATEURS_LOCK_DIR"
_waited = [0.0]  # seconds measurements waited for other processes' compute


def configure(directory: Path | None) -> None:
    """Share the locks of `directory` (None: no locking, e.g. a job without a cache directory),
    or of $SECATEURS_LOCK_DIR when it is set."""
    global _directory
    with _lock:
        _close()
        directory = os.environ.get(LOCK_DIR_ENV) or directory
        _directory = Path(directory) if directory is not None else None
        if _directory is not None:
            _directory.mkdir(parents=True, exist_ok=True)


def _close() -> None:
    for handle in _files.values():
        handle.close()
    _files.clear()


def _file(name: str) -> IO[bytes] | None:
    """This process's handle on a lock file (reopened after a fork: flock belongs to the open file)."""
    global _pid, _directory
    if _directory is None and os.environ.get(LOCK_DIR_ENV):  # a process nobody configured
        _directory = Path(os.environ[LOCK_DIR_ENV])
        _directory.mkdir(parents=True, exist_ok=True)
    if _directory is None:
        return None
    if _pid != os.getpid():
        _files.clear()  # inherited handles share the parent's locks: never reuse them
        _pid = os.getpid()
    if name not in _files:
        _files[name] = open(_directory / name, "ab")
    return _files[name]


@contextmanager
def measuring() -> Iterator[None]:
    """Hold the device alone for one measurement; the window is recorded."""
    if getattr(_state, "depth", 0):  # nested (a measurement inside a measurement): already held
        yield
        return
    with _lock:
        gate, rw = _file("gate.lock"), _file("measure.lock")
    asked = time.perf_counter()
    if gate is not None and rw is not None:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(rw, fcntl.LOCK_EX)  # waits for the units of compute in flight
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
    _waited[0] += time.perf_counter() - asked
    _state.depth = 1
    start = time.time()
    try:
        yield
    finally:
        _state.depth = 0
        _windows.append((start, time.time()))
        if rw is not None:
            fcntl.flock(rw, fcntl.LOCK_UN)


@contextmanager
def computing() -> Iterator[None]:
    """One unit of CPU-heavy work: it never runs while another process measures."""
    if getattr(_state, "depth", 0) or getattr(_state, "computing", 0):
        yield
        return
    with _lock:
        gate, rw = _file("gate.lock"), _file("measure.lock")
    if gate is None or rw is None:
        yield
        return
    fcntl.flock(gate, fcntl.LOCK_EX)  # a waiting measurement holds the gate: wait behind it
    fcntl.flock(gate, fcntl.LOCK_UN)
    fcntl.flock(rw, fcntl.LOCK_SH)
    _state.computing = 1
    try:
        yield
    finally:
        _state.computing = 0
        fcntl.flock(rw, fcntl.LOCK_UN)


def windows() -> list[tuple[float, float]]:
    """Every measurement window of this process so far (wall-clock seconds)."""
    return list(_windows)


def waited_seconds() -> float:
    """How long this process's measurements waited for other processes' compute."""
    return _waited[0]
