"""A CompressSpec as JSON, so a queued job survives a restart and crosses to a worker.

The output directory is not part of the stored form: the scheduler picks it
when the job starts. JSON has no tuples or paths, so each nested dataclass is
rebuilt with its tuples and paths restored (`again == spec`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secateurs.engine.budget import Budget
from secateurs.engine.spec import CompressSpec, InputSpec, ModelSpec, ProtocolSpec, TargetSpec

if TYPE_CHECKING:
    from secateurs.engine.spec import DataSpec
    from secateurs.engine.spec import RecoverySpec


def spec_to_json(spec: CompressSpec) -> str:
    raw = dataclasses.asdict(spec)
    raw.pop("out_dir")
    return json.dumps(raw, sort_keys=True, default=_path)


def spec_from_json(text: str, out_dir: Path) -> CompressSpec:
    raw: dict[str, Any] = json.loads(text)
    model = dict(raw.pop("model"))
    for key in ("weights", "program"):
        if model.get(key) is not None:
            model[key] = Path(model[key])
    if raw.get("budget") is not None:
        raw["budget"] = Budget(**raw["budget"])
    if raw.get("cache_dir") is not None:
        raw["cache_dir"] = Path(raw["cache_dir"])
    for name in ("data", "train_data"):
        if raw.get(name) is not None:
            raw[name] = _data_spec(raw[name])
    if raw.get("recovery") is not None:
        raw["recovery"] = _recovery_spec(raw["recovery"])
    return CompressSpec(
        **{
            **raw,
            "model": ModelSpec(**model),
            "target": TargetSpec(**raw["target"]),
            "protocol": ProtocolSpec(**raw["protocol"]),
            "input_shape": tuple(raw["input_shape"]),
            "inputs": tuple(InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in raw.get("inputs", ())),
            "exports": tuple(raw["exports"]),
        },
        out_dir=out_dir,
    )


def _data_spec(raw: dict[str, Any]) -> DataSpec:
    # imported here: engine.data loads torch, which a worker without data need not pay for
    from secateurs.engine.spec import DataSpec, TransformSpec

    raw = dict(raw)
    if raw.get("path") is not None:
        raw["path"] = Path(raw["path"])
    if raw.get("shape") is not None:
        raw["shape"] = tuple(raw["shape"])
    if raw.get("transform") is not None:
        raw["transform"] = TransformSpec(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in raw["transform"].items()})
    return DataSpec(**raw)


def _recovery_spec(raw: dict[str, Any]) -> RecoverySpec:
    from secateurs.engine.spec import RecoverySpec

    raw = dict(raw)
    if raw.get("feature_points") is not None:
        raw["feature_points"] = tuple(raw["feature_points"])
    return RecoverySpec(**raw)


def _path(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a job spec")
