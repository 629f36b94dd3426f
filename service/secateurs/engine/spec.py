"""Every frozen job spec, torch-free: what a job asks the engine to do (model, target, protocol,
data, recovery, search, compress).

The gRPC layer builds a `CompressSpec` from a CreateJobRequest; the CLI builds it from
flags. This module imports neither torch nor any stage, so both front ends (and a test walking
the imports) can read it cheaply. Validation of each value happens in `validate_spec` and the
validators beside each spec, so every caller gets the same messages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from secateurs.engine.budget import Budget
from secateurs.errors import InvalidRequest

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

    arch: "zoo:resnet56", "torchvision:resnet18", "timm:resnet18", "module:pkg.mod:factory", or
        "pt2:<sha256>" for `program` (the file's digest: caches keyed by arch stay per program).
    arch_kwargs: keyword arguments for the constructor (e.g. {"num_classes": 10}).
    weights: a .safetensors file or a torch state dict (read with weights_only=True);
        None keeps the constructor's initialisation.
    trust_pickle: allow a whole pickled nn.Module (only for trusted servers).
    allowed_modules: what `module:` may name (engine/intake/models.py build_architecture); None:
        anything importable (the local command line), a tuple: a server's allow-list.
    max_params: refuse an architecture with more parameters and buffers than this, counted
        on the meta device before anything is allocated (None: no limit).
    program: a torch.export program (.pt2) instead of an architecture (engine/intake/program.py).
    """

    arch: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    trust_pickle: bool = False
    allowed_modules: tuple[str, ...] | None = None
    max_params: int | None = None
    program: Path | None = None


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


# Pruning by ratio: what engine/prune/apply.py applies.

@dataclass(frozen=True, kw_only=True)
class PruneSpec:
    """How to prune: one `ratio` for all groups, or `group_ratios` by group name."""

    ratio: float | None = None
    group_ratios: Mapping[str, float] | None = None
    importance: str = "l1"
    round_to: int = 8
    min_channels: int = 8
    drop_blocks: tuple[str, ...] = ()  # removable blocks (engine/prune/blocks.py) replaced by the identity


# Element types a model input may have (ONNX's names); integers are token ids and masks.
INPUT_DTYPES = ("float32", "float16", "int64", "int32", "bool")
DEFAULT_INPUT_NAME = "input"
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class InputSpec:
    """One named model input: what is traced, exported (the ONNX input's name) and fed."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def text(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"


def parse_inputs(text: str | tuple | list) -> tuple[InputSpec, ...]:
    """'1x3x224x224' -> one float input named 'input'; 'input_ids:1x128:int64,attention_mask:1x128:int64'
    -> named inputs in the model's argument order; InputSpecs as they are, checked. Raises
    InvalidRequest(field='inputs')."""
    if isinstance(text, (tuple, list)) and text and isinstance(text[0], InputSpec):
        validate_inputs(tuple(text))
        return tuple(text)
    if not isinstance(text, str) or ":" not in text:
        return (InputSpec(DEFAULT_INPUT_NAME, parse_input_shape(text)),)
    inputs = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3):
            raise InvalidRequest(f"input {part!r} is malformed: expected NAME:SHAPE[:DTYPE], "
                                 f"e.g. input_ids:1x128:int64", field="inputs")
        inputs.append(InputSpec(fields[0], parse_input_shape(fields[1]), fields[2] if len(fields) == 3 else "float32"))
    validate_inputs(tuple(inputs))
    return tuple(inputs)


def validate_inputs(inputs: tuple[InputSpec, ...]) -> None:
    """Names unique and plain, dtypes known, shapes as parse_input_shape allows, one batch size."""
    if not inputs:
        raise InvalidRequest("a model needs at least one input", field="inputs")
    if len(inputs) > 16:
        raise InvalidRequest(f"at most 16 inputs, got {len(inputs)}", field="inputs")
    for spec in inputs:
        if not isinstance(spec.name, str) or not _INPUT_NAME.fullmatch(spec.name):
            raise InvalidRequest(f"input name {spec.name!r} must be letters, digits and '_' (not first), "
                                 f"at most 64", field="inputs")
        if spec.dtype not in INPUT_DTYPES:
            raise InvalidRequest(f"input {spec.name!r}: dtype must be one of {', '.join(INPUT_DTYPES)}, "
                                 f"got {spec.dtype!r}", field="inputs")
        parse_input_shape(spec.shape)
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"input names repeat: {', '.join(names)}", field="inputs")
    if len({i.shape[0] for i in inputs}) != 1:
        raise InvalidRequest("every input must have the same batch size (dimension 0): "
                             + ", ".join(i.text() for i in inputs), field="inputs")


def parse_input_shape(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224). Raises InvalidRequest(field='input_shape')."""
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InvalidRequest(
                f"input shape {text!r} is malformed: expected integers joined by 'x', e.g. 1x3x224x224",
                field="input_shape",
            ) from None
    else:
        dims = tuple(int(d) for d in text)
    if len(dims) < 2 or len(dims) > 5:
        raise InvalidRequest(
            f"input shape {'x'.join(map(str, dims))!r} must have 2 to 5 dimensions (batch first)",
            field="input_shape",
        )
    if any(d <= 0 for d in dims):
        raise InvalidRequest(f"input shape {dims} has a dimension <= 0", field="input_shape")
    return dims


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
    inputs: the model's inputs by name, shape and dtype, in argument order; input_shape is the first's.
    """

    model: ModelSpec
    input_shape: tuple[int, ...]  # the first input's: its batch is the batch measured
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
    inputs: tuple[InputSpec, ...] = ()  # named inputs; () is one float input of input_shape named "input"

    def __post_init__(self) -> None:
        if not self.inputs:
            object.__setattr__(self, "inputs", (InputSpec(DEFAULT_INPUT_NAME, tuple(self.input_shape)),))


# Data: what a job reads (engine/intake/data.py loads it).
SOURCES = ("imagefolder", "digits", "synthetic", "jsonl", "voc", "coco")
SPLITS = ("train", "test", "val")
DISTRIBUTIONS = ("normal", "uniform")
_PRESETS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

Size = int | tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class TransformSpec:
    """Per-sample transforms, applied in this order to a float CHW tensor in [0, 1].

    resize: shorter side to this length (int) or exact (h, w).
    center_crop / random_crop: output size; random_crop pads by crop_padding first.
    hflip: random horizontal flip with probability 0.5 (training).
    mean, std: per-channel normalisation (one value, or one per channel).

    >>> TransformSpec.preset("cifar10", train=True).random_crop
    32
    """

    resize: Size | None = None
    center_crop: Size | None = None
    random_crop: Size | None = None
    crop_padding: int = 0
    hflip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def preset(cls, name: str, *, train: bool = False, source: str = "imagefolder") -> TransformSpec:
        """The named preset ("cifar10" or "imagenet"); training augmentation when train is True.
        For masks and boxes (source "voc", "coco") only its normalisation: images are resized to the input.

        Raises InvalidRequest(field="data.transform") for an unknown name.
        """
        if name in _PRESETS and source in ("voc", "coco"):
            return cls(mean=_PRESETS[name][0], std=_PRESETS[name][1])
        if name not in _PRESETS:
            raise InvalidRequest(
                f"unknown transform preset {name!r}; expected one of: {', '.join(_PRESETS)}",
                field="data.transform",
            )
        mean, std = _PRESETS[name]
        if name == "cifar10":
            return cls(random_crop=32 if train else None, crop_padding=4 if train else 0,
                       hflip=train, mean=mean, std=std)
        return cls(resize=256, random_crop=224 if train else None, center_crop=None if train else 224,
                   hflip=train, mean=mean, std=std)


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Which data to load.

    source: "imagefolder" (path: a directory or .zip holding <split>/<class>/<image>),
        "digits" (scikit-learn's 8x8 digits, splits train/test), "synthetic", or "jsonl" (path: a
        directory or .zip holding <split>.jsonl, one {"text": ..., "label": <int>} per line, and
        tokenizer.json, a `tokenizers` tokenizer; engine/intake/text.py), or "voc" (path: a
        directory or .zip in Pascal VOC's segmentation layout: JPEGImages/<id>.jpg,
        SegmentationClass/<id>.png class-index masks with 255 for "ignore",
        ImageSets/Segmentation/<split>.txt; per-pixel labels, scored as mIoU), or "coco" (path: a
        directory or .zip in COCO's layout: annotations/instances_<split>[year].json and the images
        in <split>[year]/; boxes, scoring a detector as COCO mAP: engine/intake/coco.py).
    split: "train", "test" or "val" (ignored for synthetic).
    limit: keep at most this many samples, balanced over classes (synthetic: how
        many samples to generate, default SYNTHETIC_DEFAULT_SIZE).
    limit_per_class: keep at most this many samples of each class.
    transform: applied to each sample (not allowed for synthetic).
    seed: picks the subset; seeds the synthetic values.
    channels: 1 or 3; images are converted, digits replicated (default: 3 for
        imagefolder, 1 for digits).
    shape: synthetic only, the shape of one sample, e.g. (3, 32, 32).
    distribution: synthetic only, "normal" (standard normal) or "uniform" ([0, 1)).
    holdout: with a fraction of the split held out (by a seeded hash of each image's name, so
        the same images whatever the limit or order), "held" keeps only those and "kept" only
        the others: a split carved in two that never share an image (evaluation and training
        from one train split). None: the whole split.
    holdout_fraction: the part held out (default 0.1).
    ignore_labels: read the samples without their labels (an image folder given to a segmentation
        network or a detector, whose outputs per-image classes cannot score; COCO boxes of a
        training split, which recovery does not train on): real images, each UNLABELLED.
    """

    source: str
    path: Path | str | None = None
    split: str = "train"
    limit: int | None = None
    limit_per_class: int | None = None
    transform: TransformSpec | None = None
    seed: int = 0
    channels: int | None = None
    shape: tuple[int, ...] | None = None
    distribution: str = "normal"
    holdout: str | None = None
    holdout_fraction: float = 0.1
    ignore_labels: bool = False


def validate_data_spec(spec: DataSpec) -> None:
    """Check the fields of a DataSpec against each other (the file system is not touched).

    Raises InvalidRequest(field="data.<name>") naming the first bad field.
    """

    def bad(name: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, field=f"data.{name}")

    if spec.source not in SOURCES:
        raise bad("source", f"unknown data source {spec.source!r}; expected one of: {', '.join(SOURCES)}")
    if spec.split not in SPLITS:
        raise bad("split", f"unknown split {spec.split!r}; expected one of: {', '.join(SPLITS)}")
    if spec.limit is not None and spec.limit <= 0:
        raise bad("limit", f"limit must be positive, got {spec.limit}")
    if spec.limit_per_class is not None and spec.limit_per_class <= 0:
        raise bad("limit_per_class", f"limit_per_class must be positive, got {spec.limit_per_class}")
    if spec.limit is not None and spec.limit_per_class is not None:
        raise bad("limit", "give limit or limit_per_class, not both")
    if spec.seed < 0:
        raise bad("seed", f"seed must be >= 0, got {spec.seed}")
    if spec.channels is not None and spec.channels not in (1, 3):
        raise bad("channels", f"channels must be 1 or 3, got {spec.channels}")
    if spec.holdout is not None and spec.holdout not in ("held", "kept"):
        raise bad("holdout", f"holdout must be 'held' or 'kept', got {spec.holdout!r}")
    if not 0 < spec.holdout_fraction < 1:
        raise bad("holdout_fraction", f"holdout_fraction must be in (0, 1), got {spec.holdout_fraction}")
    if spec.source in ("imagefolder", "jsonl", "voc", "coco") and spec.path is None:
        raise bad("path", f"source {spec.source!r} needs a path (a directory or a .zip)")
    if spec.source == "jsonl":
        for name in ("transform", "channels"):
            if getattr(spec, name) is not None:
                raise bad(name, f"{name} does not apply to text data")
    if spec.source in ("voc", "coco"):
        what = "per-pixel labels" if spec.source == "voc" else "boxes"
        if spec.limit_per_class is not None:
            raise bad("limit_per_class", f"limit_per_class does not apply to {what} (give limit)")
        t = spec.transform
        if t is not None and (t.resize, t.center_crop, t.random_crop, t.hflip) != (None, None, None, False):
            raise bad("transform", ("VOC images and masks are resized together" if spec.source == "voc" else
                                    "COCO images are resized, their boxes scaled with them,") +
                      " to the model's input; only mean and std apply")
    if spec.source == "synthetic":
        if spec.shape is None or not spec.shape or any(d <= 0 for d in spec.shape):
            raise bad("shape", f"synthetic data needs a shape of positive sizes, got {spec.shape}")
        if spec.distribution not in DISTRIBUTIONS:
            raise bad("distribution", f"unknown distribution {spec.distribution!r}; "
                                      f"expected one of: {', '.join(DISTRIBUTIONS)}")
        for name in ("transform", "channels", "limit_per_class"):
            if getattr(spec, name) is not None:
                raise bad(name, f"{name} does not apply to synthetic data")
    if spec.transform is not None:
        images = spec.source in ("imagefolder", "voc", "coco")
        _validate_transform(spec.transform, spec.channels or (3 if images else 1))


def _validate_transform(t: TransformSpec, channels: int) -> None:
    def bad(message: str) -> InvalidRequest:
        return InvalidRequest(message, field="data.transform")

    for name in ("resize", "center_crop", "random_crop"):
        size = getattr(t, name)
        dims = (size,) if isinstance(size, int) else size
        if size is not None and (len(dims) not in (1, 2) or any(int(d) <= 0 for d in dims)):
            raise bad(f"{name} must be a positive size or (height, width), got {size}")
    if t.crop_padding < 0:
        raise bad(f"crop_padding must be >= 0, got {t.crop_padding}")
    if t.crop_padding and t.random_crop is None:
        raise bad("crop_padding needs random_crop")
    if (t.mean is None) != (t.std is None):
        raise bad("mean and std must be given together")
    if t.mean is not None and t.std is not None:
        if len(t.mean) != len(t.std) or len(t.mean) not in (1, channels):
            raise bad(f"mean and std need 1 or {channels} values each, got {len(t.mean)} and {len(t.std)}")
        if any(s <= 0 for s in t.std):
            raise bad(f"std values must be positive, got {t.std}")


# Recovery: how a job fine-tunes (engine/recover/train.py runs it).
OPTIMIZERS = ("sgd", "adamw")
_DEFAULTS = {"sgd": (0.01, 5e-4), "adamw": (1e-3, 0.05)}  # (lr, weight decay) per optimizer


@dataclass(frozen=True, kw_only=True)
class RecoverySpec:
    """How to recover. lr and weight_decay default per optimizer (SGD 0.01 / 5e-4, AdamW 1e-3 / 0.05).

    Fine-tuning starts from trained weights, so the lr is a tenth of a from-scratch one and a short
    warm-up keeps the first large gradients of a freshly pruned net from undoing what it kept.
    """

    epochs: int = 10
    optimizer: str = "sgd"  # SGD with Nesterov momentum 0.9, or AdamW
    lr: float | None = None
    weight_decay: float | None = None  # never applied to BatchNorm or bias parameters
    warmup_epochs: float = 1.0  # linear warm-up, then cosine annealing to 0, per step
    label_smoothing: float = 0.0  # off: smoothing blurs the class similarities distillation transfers
    batch_size: int = 128  # for the caller's loader; recover() uses the loader it is given
    seed: int = 0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    feature_weight: float = 0.0  # opt-in: adds adapters and a hook per stage
    attention_weight: float = 0.0  # opt-in: cheap and channel-agnostic
    feature_points: tuple[str, ...] | None = None  # None: the end of each resolution stage
    progressive_steps: int = 1
    max_steps_per_epoch: int | None = None
    recalibration_batches: int = 8
    amp: bool = True  # mixed precision on CUDA only; ignored on CPU
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else _DEFAULTS.get(self.optimizer, (0.01, 0.0))[0]

    @property
    def decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else _DEFAULTS.get(self.optimizer, (0, 5e-4))[1]


def validate_recovery_spec(spec: RecoverySpec) -> None:
    """Every check that needs no model; raises InvalidRequest(field="recovery.<name>")."""

    def bad(name: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, field=f"recovery.{name}")

    if not isinstance(spec.epochs, int) or not 1 <= spec.epochs <= 10_000:
        raise bad("epochs", f"epochs must be an integer in [1, 10000], got {spec.epochs!r}")
    if spec.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"optimizer {spec.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if spec.lr is not None and not 0 < spec.lr <= 10:
        raise bad("lr", f"lr must be in (0, 10], got {spec.lr}")
    if spec.weight_decay is not None and not 0 <= spec.weight_decay < 1:
        raise bad("weight_decay", f"weight_decay must be in [0, 1), got {spec.weight_decay}")
    if not 0 <= spec.warmup_epochs <= spec.epochs:
        raise bad("warmup_epochs", f"warmup_epochs must be in [0, epochs={spec.epochs}], got {spec.warmup_epochs}")
    if not 0 <= spec.label_smoothing < 1:
        raise bad("label_smoothing", f"label_smoothing must be in [0, 1), got {spec.label_smoothing}")
    if spec.batch_size < 1:
        raise bad("batch_size", f"batch_size must be >= 1, got {spec.batch_size}")
    if spec.seed < 0:
        raise bad("seed", f"seed must be >= 0, got {spec.seed}")
    for name in ("ce_weight", "kd_weight", "feature_weight", "attention_weight"):
        value = getattr(spec, name)
        if not 0 <= value < math.inf:
            raise bad(name, f"{name} must be finite and >= 0, got {value}")
    if spec.ce_weight + spec.kd_weight + spec.feature_weight + spec.attention_weight == 0:
        raise bad("ce_weight", "all loss weights are 0: nothing to train on")
    if not 0 < spec.kd_temperature <= 100:
        raise bad("kd_temperature", f"kd_temperature must be in (0, 100], got {spec.kd_temperature}")
    if spec.feature_points is not None and (not spec.feature_points or not all(spec.feature_points)):
        raise bad("feature_points", "feature_points must name at least one module, without empty names")
    if not 1 <= spec.progressive_steps <= spec.epochs:
        raise bad("progressive_steps", f"progressive_steps must be in [1, epochs={spec.epochs}] (each step "
                                       f"needs an epoch of recovery), got {spec.progressive_steps}")
    if spec.max_steps_per_epoch is not None and spec.max_steps_per_epoch < 1:
        raise bad("max_steps_per_epoch", f"max_steps_per_epoch must be >= 1, got {spec.max_steps_per_epoch}")
    if spec.recalibration_batches < 0:
        raise bad("recalibration_batches", f"recalibration_batches must be >= 0, got {spec.recalibration_batches}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec.device):
        raise bad("device", f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec.device!r}")


# The budget search: what it is asked (engine/search/run.py runs it).
@dataclass(frozen=True, kw_only=True)
class SearchSpec:
    budget: Budget
    target: TargetSpec = field(default_factory=TargetSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    importance: str = "l1"
    round_to: int = 8
    min_channels: int = 8
    max_rounds: int = 5
    precision: float = 0.10  # a plan more than this far under its budget wastes it
    aim: float = 0.95  # aim this fraction of the ceiling: room for measurement noise
    # Once a plan lands within `precision`, up to `tighten_rounds` more rounds aim for a slack of
    # `tight`: near the budget every percent of latency left unused is accuracy given away.
    tight: float = 0.02
    tighten_rounds: int = 2
    cache_dir: Path | None = None
    arch: str = ""
    seed: int = 0
    refine_evaluations: int = 40  # whole-plan quality measurements per round; 0 turns refinement off
    depth: str = "auto"  # "auto": channels and whole blocks; "off": channels only; "only": blocks only
    dynamic_batch: bool = False  # how the baseline was exported: candidates are exported (and keyed) alike
    # A limit on the drop of the candidates' own quality (accuracy on the calibration images, or top-1
    # agreement without labels): a plan over it does not count as meeting the budget. None: no limit.
    max_accuracy_drop: float | None = None
