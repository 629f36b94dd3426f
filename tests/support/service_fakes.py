"""A stand-in for engine.pipeline.compress, for unit tests of job plumbing only.

Behaviour is picked by arch_kwargs["fake"]: "ok" (default), "slow" (about 30 s, checks
cancel), "steady" (about 2 s), "ignore-cancel" (sleeps without checking), "fail", "crash",
"chatty" (arch_kwargs["events"] events of arch_kwargs["event_bytes"] as fast as it can), "hog" (asks for
arch_kwargs["bytes"] of memory), "fill" (writes its model file until the disk is full, as an
export would). The report says which SECATEURS_* variables the worker had.

`touch_marker` is a factory that is not an nn.Module: the security tests check that a
request cannot make a worker call it.
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
    if mode == "hog":
        hoard = bytearray(int(spec.model.arch_kwargs["bytes"]))  # past the worker's RLIMIT_AS: MemoryError
        hoard[-1] = 1
    if mode == "chatty":
        pad = "x" * int(spec.model.arch_kwargs.get("event_bytes", 1024))
        for i in range(int(spec.model.arch_kwargs["events"])):
            on_event(Event(stage="prune", kind="progress", message=f"event {i:06d} {pad}"))
    if mode == "fill":
        with open(Path(spec.out_dir) / "model.onnx", "wb") as fh:  # until ENOSPC, as a big export would
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
    steps = {"slow": 300, "steady": 20, "ignore-cancel": 1}.get(mode, 3)
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
              "recovery": _plain(spec.recovery), "data": _plain(spec.data), "train_data": _plain(spec.train_data),
              "environ": sorted(k for k in os.environ if k.startswith("SECATEURS_"))}
    (out / "report.json").write_text(json.dumps(report))
    (out / "model.onnx").write_bytes(b"onnx" * 1000)
    return CompressResult(report=report, artifacts={"report": out / "report.json", "onnx": out / "model.onnx"})


def _plain(value: object) -> object:
    """A spec dataclass as JSON values (paths as strings), None for None."""
    if value is None:
        return None
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))  # type: ignore[call-overload]


def touch_marker(path: str) -> None:
    """Creates a file: what an attacker's `module:` request would do with a callable it names."""
    Path(path).touch()
