"""Progress events and cancellation shared by every pipeline stage."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

from secateurs.errors import Cancelled

# A job's stages in order (engine/pipeline.py runs them; the scheduler limits each one's time).
STAGES = ("load", "profile", "search", "prune", "recover", "export", "benchmark", "report")


@dataclass(frozen=True, kw_only=True)
class Event:
    """One progress event. `progress` is the stage's fraction done in [0, 1], or None."""

    stage: str
    kind: str  # "started" | "progress" | "finished" | "log"
    message: str = ""
    progress: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """Default sink."""


class CancelCheck(Protocol):
    def is_set(self) -> bool: ...


class CancelToken:
    """A flag checked between units of work; any object with `is_set()` also works
    (a multiprocessing.Event, for a worker process)."""

    def __init__(self) -> None:
        self._flag = threading.Event()

    def set(self) -> None:
        self._flag.set()

    def is_set(self) -> bool:
        return self._flag.is_set()


def check_cancel(cancel: CancelCheck | None) -> None:
    """Raise Cancelled when the token is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("job cancelled")


def within(sink: EventSink, start: float, end: float) -> EventSink:
    """`sink` for a part of a stage: progress in [0, 1] of the part becomes [start, end] of the stage."""
    def relay(event: Event) -> None:
        progress = None if event.progress is None else start + (end - start) * event.progress
        sink(replace(event, progress=progress))

    return relay


def counted(on_event: EventSink, what: str, done: int, total: int) -> None:
    """`done` of `total` units of search work (layers measured, widths scored, plans evaluated) as an event."""
    on_event(Event(stage="search", kind="progress", progress=done / max(total, 1), message=f"{what} {done}/{total}"))
