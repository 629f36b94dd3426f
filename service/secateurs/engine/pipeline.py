"""compress(spec, on_event, cancel) -> CompressResult: the whole job as one function.

Stages: load -> profile -> prune -> export -> benchmark -> report. Each stage emits
Event(stage, "started"/"progress"/"finished") and checks the cancel token between
units of work. The service only orchestrates this function in a worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secateurs.engine.events import CancelCheck, EventSink, ignore_events
from secateurs.engine.spec import CompressSpec

STAGES = ("load", "profile", "prune", "export", "benchmark", "report")


@dataclass(frozen=True, kw_only=True)
class CompressResult:
    """What a job produced: the report (also written as report.json) and artifact files
    by kind ("onnx", "pt2", "plan", "report")."""

    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


def compress(
    spec: CompressSpec, on_event: EventSink = ignore_events, cancel: CancelCheck | None = None
) -> CompressResult:
    raise NotImplementedError("being written")
