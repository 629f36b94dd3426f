"""Frozen value objects that cross module boundaries: what a job asks the engine to do.

The gRPC layer builds a `CompressSpec` from a CreateJobRequest; the CLI builds it from
flags. Validation of each value happens in `validate_spec` (one place, cross-field
checks included), so every caller gets the same messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from secateurs.engine.budget import Budget
from secateurs.errors import InvalidRequest

if TYPE_CHECKING:
    from secateurs.engine.intake.data import DataSpec
    from secateurs.engine.recover.train import RecoverySpec

# engine/latency/runtimes.py runs them; ONNX runtimes first, then those that run the torch module
RUNTIMES = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt",
            "torch-cpu", "torch-cuda", "torch-compile-cpu", "torch-compile-cuda")
PRECISIONS = ("fp32", "fp16")
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
EXPORTS = ("onnx", "pt2", "plan")
# Depth pruning in a budget search: "auto" lets the search drop whole residual blocks where
# that costs less quality than the same latency taken from channels; "off": channels only;
# "only": blocks only (channels stay whole).
DEPTH_MODES = ("auto", "off", "only")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """An architecture spec plus weights.

    arch: "zoo:resnet56", "torchvision:resnet18" or "module:pkg.mod:factory".
    arch_kwargs: keyword arguments for the constructor (e.g. {"num_classes": 10}).
    weights: a .safetensors file or a torch state dict (read with weights_only=True);
        None keeps the constructor's initialisation.
    trust_pickle: allow a whole pickled nn.Module (only for trusted servers).
    allowed_modules: what `module:` may name (engine/intake/models.py build_architecture); None:
        anything importable (the local command line), a tuple: a server's allow-list.
    max_params: refuse an architecture with more parameters and buffers than this, counted
        on the meta device before anything is allocated (None: no limit).
    """

    arch: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    trust_pickle: bool = False
    allowed_modules: tuple[str, ...] | None = None
    max_params: int | None = None


@dataclass(frozen=True, kw_only=True)
class ProtocolSpec:
    """Latency measurement protocol (see engine/latency/protocol.py). PROTOCOL_MAXIMA bounds
    each number a request can set, so no request holds a measurement (or a probe's one
    measurement lock) for long."""

    warmup_runs: int = 20
    warmup_seconds: float = 0.5
    window: int = 100
    min_samples: int = 300
    max_seconds: float = 30.0
    tolerance: float = 0.03
    interleave: str = "window"  # "window": A's window, B's window, ...; "run": A B A B run by run


# The largest value of each protocol field a job may ask for (validated with the rest of the spec).
PROTOCOL_MAXIMA: dict[str, float] = {"warmup_runs": 10_000, "warmup_seconds": 60.0, "window": 10_000,
                                     "min_samples": 100_000, "max_seconds": 600.0, "tolerance": 1.0}


def validate_protocol(p: ProtocolSpec) -> None:
    """Every field finite, positive where it must be, and at most its PROTOCOL_MAXIMA value;
    raises InvalidRequest(field="protocol.<name>") naming the first bad one."""
    for name, most in PROTOCOL_MAXIMA.items():
        value = getattr(p, name)
        least = 0 if name in ("warmup_runs", "warmup_seconds") else 1 if name in ("window", "min_samples") else None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or \
                (value < least if least is not None else value <= 0):
            raise InvalidRequest(f"protocol.{name} must be a {'non-negative' if least == 0 else 'positive'} number, "
                                 f"got {value!r}", field=f"protocol.{name}")
        if value > most:
            raise InvalidRequest(f"protocol.{name} must be at most {most:g}, got {value:g}", field=f"protocol.{name}")
    if p.interleave not in ("window", "run"):
        raise InvalidRequest(f"protocol.interleave must be 'window' or 'run', got {p.interleave!r}",
                             field="protocol.interleave")


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """Where latency is measured.

    batch: the batch measured, and exported (0: the batch of the input shape).
    probe_address: host:port of a `secateurs probe` on the device; every latency figure
        of the job is measured there (None: in this process). Over the API it comes from the
        server's own list of probes, never from the request.
    probe_name: the name that list gives the probe (None from the command line); the
        measurement cache keys on the configured name and address, not on what a probe
        says about itself.
    """

    runtime: str = "onnxruntime-cpu"
    threads: int = 2
    percentile: float = 50.0
    precision: str = "fp32"
    batch: int = 0
    probe_address: str | None = None
    probe_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class CompressSpec:
    """One compression job.

    Exactly one of: `ratio` (one ratio for every prunable group), `group_ratios`
    (group name -> ratio; unnamed groups are left whole), or `budget` (the search
    chooses per-group ratios that meet it, measured on the target).

    data: the evaluation data, whose split the reported quality is measured on (labelled:
    accuracy; none: fidelity on generated inputs). train_data: what recovery trains on (none:
    label-free distillation on generated inputs). calibration_samples: images that score plans
    (and as many again recalibrate BatchNorm), drawn from a train split and never evaluated on
    (engine/intake/calibration.py). evaluation_samples: a seeded subset of the evaluation split (None:
    all of it, but any calibration image). recovery: fine-tuning and distillation
    after pruning (none: the pruned model is returned as pruned, BatchNorm
    recalibrated when there is data). cache_dir: measurements cached across jobs.
    job_id: the server's id of the job, copied into the report (None from the command line).
    depth: whether a budget search may drop whole residual blocks (DEPTH_MODES).
    """

    model: ModelSpec
    input_shape: tuple[int, ...]
    out_dir: Path
    ratio: float | None = None
    group_ratios: Mapping[str, float] | None = None
    importance: str = "l1"
    round_to: int = 8
    min_channels: int = 8
    target: TargetSpec = field(default_factory=TargetSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    exports: tuple[str, ...] = EXPORTS
    budget: Budget | None = None
    data: DataSpec | None = None
    train_data: DataSpec | None = None
    recovery: RecoverySpec | None = None
    calibration_samples: int = 128
    evaluation_samples: int | None = None
    cache_dir: Path | None = None
    dynamic_batch: bool = False
    parity_tolerance: float = 1e-3
    seed: int = 0
    job_id: str | None = None
    depth: str = "auto"
