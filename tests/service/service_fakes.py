"""A stand-in for engine.pipeline.compress, for unit tests of job plumbing only.

Behaviour is picked by arch_kwargs["fake"]: "ok" (default), "slow" (about 30 s, checks
cancel), "ignore-cancel" (sleeps without checking), "fail", "crash".
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from secateurs.engine.events import Event, check_cancel
from secateurs.errors import UnsupportedModel


@dataclass(frozen=True)
class CompressResult:  # the shape of engine.pipeline.CompressResult, without importing torch
    report: dict
    artifacts: dict


def fake_compress(spec, on_event, cancel) -> CompressResult:  # type: ignore[no-untyped-def]
    mode = spec.model.arch_kwargs.get("fake", "ok")
    on_event(Event(stage="load", kind="started", message="loading"))
    if mode == "fail":
        raise UnsupportedModel("layer 'odd' (Conv3d) is not supported")
    if mode == "crash":
        os._exit(7)
    steps = {"slow": 300, "ignore-cancel": 1}.get(mode, 3)
    for i in range(steps):
        check_cancel(cancel)
        time.sleep(0.1)
        on_event(Event(stage="prune", kind="progress", message=f"step {i}", progress=(i + 1) / steps))
    if mode == "ignore-cancel":
        time.sleep(60)
    out = Path(spec.out_dir)
    report = {"ratio": spec.ratio, "input_shape": list(spec.input_shape),  # what reached the worker
              "budget": spec.budget.to_dict() if spec.budget is not None else None,
              "percentile": spec.target.percentile,
              "cache_dir": str(spec.cache_dir) if spec.cache_dir is not None else None,
              "recovery": _plain(spec.recovery), "data": _plain(spec.data), "train_data": _plain(spec.train_data)}
    (out / "report.json").write_text(json.dumps(report))
    (out / "model.onnx").write_bytes(b"onnx" * 1000)
    return CompressResult(report=report, artifacts={"report": out / "report.json", "onnx": out / "model.onnx"})


def _plain(value: object) -> object:
    """A spec dataclass as JSON values (paths as strings), None for None."""
    if value is None:
        return None
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))  # type: ignore[call-overload]
