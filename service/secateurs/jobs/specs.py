"""A CompressSpec as JSON, so a queued job survives a restart and crosses to a worker.

The output directory is not part of the stored form: the scheduler picks it
when the job starts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from secateurs.engine.budget import Budget
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, TargetSpec


def spec_to_json(spec: CompressSpec) -> str:
    raw = dataclasses.asdict(spec)
    raw.pop("out_dir")
    return json.dumps(raw, sort_keys=True, default=_path)


def spec_from_json(text: str, out_dir: Path) -> CompressSpec:
    raw: dict[str, Any] = json.loads(text)
    model = dict(raw.pop("model"))
    if model.get("weights") is not None:
        model["weights"] = Path(model["weights"])
    if raw.get("budget") is not None:
        raw["budget"] = Budget(**raw["budget"])
    if raw.get("cache_dir") is not None:
        raw["cache_dir"] = Path(raw["cache_dir"])
    if raw.get("data") is not None:  # the API refuses data sources for now
        raise ValueError("stored job specs do not carry data sources yet")
    return CompressSpec(
        **{
            **raw,
            "model": ModelSpec(**model),
            "target": TargetSpec(**raw["target"]),
            "protocol": ProtocolSpec(**raw["protocol"]),
            "input_shape": tuple(raw["input_shape"]),
            "exports": tuple(raw["exports"]),
        },
        out_dir=out_dir,
    )


def _path(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a job spec")
