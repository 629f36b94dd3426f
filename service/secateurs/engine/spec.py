"""Frozen value objects that cross module boundaries: what a job asks the engine to do.

The gRPC layer builds a `CompressSpec` from a CreateJobRequest; the CLI builds it from
flags. Validation of each value happens in `validate_spec` (one place, cross-field
checks included), so every caller gets the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from secateurs.engine.budget import Budget

if TYPE_CHECKING:
    from secateurs.engine.data import DataSpec
    from secateurs.engine.recover import RecoverySpec

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
    """

    arch: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    trust_pickle: bool = False


@dataclass(frozen=True, kw_only=True)
class ProtocolSpec:
    """Latency measurement protocol (see engine/latency/protocol.py)."""

    warmup_runs: int = 20
    warmup_seconds: float = 0.5
    window: int = 100
    min_samples: int = 300
    max_seconds: float = 30.0
    tolerance: float = 0.03
    interleave: str = "window"  # "window": A's window, B's window, ...; "run": A B A B run by run


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """Where latency is measured.

    batch: the batch measured, and exported (0: the batch of the input shape).
    probe_address: host:port of a `secateurs probe` on the device; every latency figure
        of the job is measured there (None: in this process).
    """

    runtime: str = "onnxruntime-cpu"
    threads: int = 2
    percentile: float = 50.0
    precision: str = "fp32"
    batch: int = 0
    probe_address: str | None = None


@dataclass(frozen=True, kw_only=True)
class CompressSpec:
    """One compression job.

    Exactly one of: `ratio` (one ratio for every prunable group), `group_ratios`
    (group name -> ratio; unnamed groups are left whole), or `budget` (the search
    chooses per-group ratios that meet it, measured on the target).

    data: calibration/validation data (labelled: accuracy; none: fidelity on
    generated inputs). train_data: what recovery trains on (none: label-free
    distillation on generated inputs). recovery: fine-tuning and distillation
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
    calibration_samples: int = 64
    cache_dir: Path | None = None
    dynamic_batch: bool = False
    parity_tolerance: float = 1e-3
    seed: int = 0
    job_id: str | None = None
    depth: str = "auto"
