"""Progress events and cancellation shared by every pipeline stage."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from secateurs.errors import Cancelled


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
