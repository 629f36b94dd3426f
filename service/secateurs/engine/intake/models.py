"""Model intake: an architecture spec plus weights, read without running untrusted code.

Weights are safetensors or a state dict read with `torch.load(weights_only=True)`.
A whole pickled nn.Module can only be loaded when the caller passes trust_pickle
(the server's explicit trust flag); otherwise it is refused before any of its
code runs, because the restricted unpickler rejects every non-tensor global.
"""

from __future__ import annotations

import ast
import importlib
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from secateurs.engine.spec import DataSpec, InputSpec, ModelSpec, parse_inputs
from secateurs.engine.intake.zoo import ZOO
from secateurs.engine.outputs import Detections, Output, is_dense, unwrap_single_output
from secateurs.engine.inputs import call, describe, generate
from secateurs.errors import (InvalidModel, InvalidRequest, PermissionDenied, ResourceExhausted, UnsafeModel,
                              machine_limit)

_SHOWN = 5  # how many offending tensor names an error message lists
# The keyword arguments a `timm:` architecture may take: sizes and shapes only. timm's others can
# name a file to load (checkpoint_path), weights to download (pretrained, pretrained_cfg*) or a
# cache directory, none of which a request may choose.
TIMM_KWARGS = frozenset({
    "num_classes", "in_chans", "img_size", "patch_size", "window_size", "global_pool", "drop_rate",
    "drop_path_rate", "embed_dim", "depth", "depths", "dims", "num_heads", "mlp_ratio", "class_token",
    "qkv_bias", "channel_multiplier", "width_multiplier", "dynamic_img_size",
})


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """['num_classes=10', 'width=8'] -> {'num_classes': 10, 'width': 8} (Python literals)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidRequest(f"model argument {item!r} must look like name=value", field="model.arch_kwargs")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string such as a block name
    return kwargs


def build_architecture(arch: str, kwargs: Mapping[str, Any] | None = None, *,
                       allowed_modules: Sequence[str] | None = None) -> nn.Module:
    """Instantiate `zoo:<name>`, `torchvision:<name>`, `timm:<name>`, `hf:<AutoClass>` (kwargs: its config's
    fields, engine/intake/hf.py) or `module:<pkg.mod>:<callable>`.

    timm (an optional extra) builds its registered models without weights and never downloads:
    weights come with the job; its keyword arguments are limited to TIMM_KWARGS.

    allowed_modules: None lets `module:` name any importable code (the local command line:
    the user's own code on the user's own machine); a sequence is the server operator's
    allow-list (`--allow-module`): `pkg.mod` admits nn.Module subclasses from that package
    and its submodules, `pkg.mod:callable` admits that one factory too. What is not
    admitted is refused with PermissionDenied before anything is imported or called.
    """
    kwargs = dict(kwargs or {})
    kind, _, name = arch.partition(":")
    try:
        if kind == "zoo":
            if name not in ZOO:
                raise InvalidRequest(
                    f"unknown architecture {arch!r}; the zoo has: {', '.join(sorted(ZOO))}", field="model.arch"
                )
            return ZOO[name](**kwargs)
        if kind == "torchvision":
            import torchvision

            if name not in torchvision.models.list_models():
                raise InvalidRequest(
                    f"unknown architecture {arch!r}: torchvision has no model named {name!r}", field="model.arch"
                )
            return _build_torchvision(name, kwargs)
        if kind == "timm":
            return _build_timm(arch, name, kwargs)
        if kind == "hf":
            from secateurs.engine.intake.hf import build_hf

            return build_hf(arch, name, kwargs)
        if kind == "module":
            return _build_module(arch, name, kwargs, allowed_modules)
    except (TypeError, ValueError, RuntimeError) as exc:  # a constructor refusing its keyword arguments
        if machine_limit(exc):
            raise  # out of memory: not the request's arguments
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(f"cannot build {arch!r} with {kwargs}: {first}", field="model.arch_kwargs") from None
    raise InvalidRequest(
        f"unknown architecture {arch!r}: expected zoo:<name>, torchvision:<name>, timm:<name>, hf:<AutoClass> or "
        f"module:<pkg.mod>:<callable>",
        field="model.arch",
    )


def _build_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Built without weights; a backbone's pretrained weights (segmentation and detection builders
    download them by default) are never fetched: weights come with the job."""
    import inspect

    import torchvision

    for key in ("weights", "weights_backbone", "progress"):
        if key in kwargs:
            raise InvalidRequest(f"model.arch_kwargs: {key!r} is not accepted: it would download weights; "
                                 f"a job's weights come with the job (model.weights)", field="model.arch_kwargs")
    from secateurs.engine.intake.detection import DETECTORS, build_detector

    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs = {**kwargs, "weights_backbone": None}
    model = builder(weights=None, **kwargs)
    return build_detector(name, model) if name in DETECTORS else model  # a detector: its heads, decoded


def module_admitted(module_name: str, attr: str, allowed: Sequence[str]) -> tuple[bool, bool]:
    """(whether the allow-list admits importing `module_name`, whether it names `module_name:attr`)."""
    named = f"{module_name}:{attr}" in allowed
    package = any(":" not in entry and (module_name == entry or module_name.startswith(entry + "."))
                  for entry in allowed)
    return package or named, named


def _build_timm(arch: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network, whatever timm is asked
    try:
        import timm
    except ImportError:
        raise InvalidRequest(f"{arch!r} needs timm, which this server does not have (install the 'timm' "
                             f"extra: pip install 'secateurs[timm]')", field="model.arch") from None
    refused = sorted(set(kwargs) - TIMM_KWARGS)
    if refused:
        raise InvalidRequest(f"timm keyword argument(s) {', '.join(refused)} not accepted; a timm model takes "
                             f"only {', '.join(sorted(TIMM_KWARGS))} (weights come with the job)",
                             field="model.arch_kwargs")
    if name not in timm.list_models():
        raise InvalidRequest(f"unknown architecture {arch!r}: timm has no model named {name!r}", field="model.arch")
    return timm.create_model(name, pretrained=False, **kwargs)


def _build_module(arch: str, name: str, kwargs: dict[str, Any], allowed: Sequence[str] | None) -> nn.Module:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not attr.isidentifier():
        raise InvalidRequest(f"architecture {arch!r} must look like module:<package.module>:<callable>",
                             field="model.arch")
    named = True
    if allowed is not None:
        admitted, named = module_admitted(module_name, attr, allowed)
        if not admitted:
            listed = ", ".join(allowed) if allowed else "none"
            raise PermissionDenied(
                f"{arch!r} names code on the server, and this server allows no such module (allowed: {listed}); "
                f"the operator can allow a package with `secateurs serve --allow-module {module_name}`, or one "
                f"factory with `--allow-module {module_name}:{attr}`", field="model.arch")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidRequest(f"unknown architecture {arch!r}: {exc}", field="model.arch") from None
    is_module_class = isinstance(factory, type) and issubclass(factory, nn.Module)
    if not is_module_class and not named:  # checked before anything is called
        raise PermissionDenied(
            f"{arch!r} is a {type(factory).__name__}, not an nn.Module subclass; a factory function runs only "
            f"when the operator names it: `--allow-module {module_name}:{attr}`", field="model.arch")
    if not callable(factory):
        raise InvalidRequest(f"{arch!r} is not callable", field="model.arch")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise InvalidRequest(f"{arch!r} returned {type(model).__name__}, not an nn.Module", field="model.arch")
    return model


def parameter_count(arch: str, kwargs: Mapping[str, Any] | None = None, *,
                    allowed_modules: Sequence[str] | None = None) -> int:
    """Parameters the architecture would have, built on the meta device: no memory is allocated,
    so a request for an enormous model is refused before it costs anything."""
    with torch.device("meta"):
        model = build_architecture(arch, kwargs, allowed_modules=allowed_modules)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def check_model_size(spec: ModelSpec) -> int:
    """The architecture's parameter count; ResourceExhausted when it is over spec.max_params."""
    count = parameter_count(spec.arch, spec.arch_kwargs, allowed_modules=spec.allowed_modules)
    if spec.max_params is not None and count > spec.max_params:
        raise ResourceExhausted(
            f"{spec.arch} with {dict(spec.arch_kwargs)} has {count:,} parameters and buffers, over this server's "
            f"limit of {spec.max_params:,} (--max-model-params)", field="model.arch_kwargs")
    return count


def read_weights(path: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor] | nn.Module:
    """Read a state dict (safetensors or torch) or, only with trust_pickle, a pickled module."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModel(f"weights file {path.name!r} does not exist", field="model.weights")
    with path.open("rb") as fh:
        head = fh.read(16)
    if zipfile.is_zipfile(path) or head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return _read_torch(path, trust_pickle)
    return _read_safetensors(path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidModel(
            f"weights file {path.name!r} is not a readable safetensors or torch file "
            f"(truncated or corrupt?): {exc}",
            field="model.weights",
        ) from None


def _read_torch(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor] | nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsafeModel(
                f"weights file {path.name!r} holds pickled Python objects, not just tensors "
                f"(a whole nn.Module?); refused without running it. Send a state dict or "
                f"safetensors, or start the server with --trust-pickled-models. Detail: "
                f"{str(exc).splitlines()[-1] if str(exc) else exc!r}",
                field="model.weights",
            ) from None
        obj = _load_trusted(path)
    except MemoryError:
        raise
    except Exception as exc:  # a corrupt pickle stream can raise anything (KeyError, IndexError, ...)
        raise InvalidModel(
            f"weights file {path.name!r} is truncated or corrupt: {type(exc).__name__}: {exc}",
            field="model.weights") from None
    if isinstance(obj, nn.Module):
        return obj
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidModel(
            f"weights file {path.name!r} is not a state dict of tensors", field="model.weights"
        )
    return obj


def _load_trusted(path: Path) -> nn.Module:
    # Only reached when the server operator passed the explicit trust flag.
    obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - trusted by flag
    if not isinstance(obj, nn.Module):
        raise InvalidModel(f"trusted pickle {path.name!r} holds {type(obj).__name__}, not an nn.Module",
                           field="model.weights")
    return obj


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` strictly, naming missing, unexpected and mis-shaped tensors."""
    expected = model.state_dict()
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    # BatchNorm's step counter (absent from FrozenBatchNorm checkpoints: torchvision's pretrained
    # detectors) changes nothing in eval mode or at a fixed momentum: the model's own is kept.
    counters = {k: v for k, v in expected.items() if k.endswith("num_batches_tracked") and k not in state}
    state = {**counters, **state}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} (expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)})"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            problems.append(f"{len(names)} {label} tensor(s): {', '.join(names[:_SHOWN])}{more}")
    if problems:
        raise InvalidModel("weights do not fit the architecture: " + "; ".join(problems), field="model.weights")
    model.load_state_dict(dict(state), strict=True)


def load_model(spec: ModelSpec) -> nn.Module:
    """Build the architecture and load its weights; returns the model in eval mode.

    The architecture is sized on the meta device first (spec.max_params), so nothing is
    allocated for a model over the limit."""
    loaded = read_weights(spec.weights, trust_pickle=spec.trust_pickle) if spec.weights else None
    if spec.program is not None:
        model = _program_model(spec)
        if isinstance(loaded, dict):
            apply_state_dict(model, loaded)
    elif isinstance(loaded, nn.Module):
        model = loaded
    else:
        check_model_size(spec)
        model = build_architecture(spec.arch, spec.arch_kwargs, allowed_modules=spec.allowed_modules)
        if loaded is not None:
            apply_state_dict(model, loaded)
    return model.eval()


def _program_model(spec: ModelSpec) -> nn.Module:
    from secateurs.engine.intake.program import program_module

    model = program_module(spec.program)
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    if spec.max_params is not None and count > spec.max_params:
        raise ResourceExhausted(f"the program has {count:,} parameters and buffers, over this server's limit of "
                                f"{spec.max_params:,} (--max-model-params)", field="model.program_blob_id")
    return model


def check_runs(model: nn.Module, inputs: Sequence[InputSpec] | Sequence[int]) -> Output:
    """Run one forward pass; inputs the model cannot take are the request's fault. A model whose
    one output tensor comes in a dict or tuple is made to return the tensor (engine/outputs.py)."""
    inputs = parse_inputs(inputs)
    try:
        with torch.no_grad():
            out = call(model, generate(inputs, generator=torch.Generator().manual_seed(0)))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        if machine_limit(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidRequest(
            f"the model cannot run on {'input shape' if len(inputs) == 1 else 'inputs'} {describe(inputs)}: {first}",
            field="input_shape" if len(inputs) == 1 else "inputs",
        ) from None
    return unwrap_single_output(model, out)  # {"out": t} -> t, by a hook on the model


def labels_for_output(output: Output, data: DataSpec | None,
                      train: DataSpec | None) -> tuple[DataSpec | None, DataSpec | None]:
    """(data, train) fitted to the output's labels: per-image classes score a classifier, per-pixel masks
    (source "voc") a segmentation network (mIoU), boxes (source "coco") a detector (COCO mAP). What no
    figure reads is read without its labels (`ignore_labels`): an image folder given to a dense model
    (real images, scored by fidelity to the original row by row), and the boxes of the training data
    (recovery distils on the images). Raises InvalidRequest for masks or boxes the output cannot take."""
    given = [d for d in (data, train) if d is not None and d.source != "synthetic"]
    detector = isinstance(output, Detections)
    segmentation = is_dense(output) and not detector
    what = "per anchor (a detector)" if detector else f"per position (segmentation, {tuple(output.shape)})" \
        if segmentation else f"per example {tuple(output.shape)}"
    for source, fits, scores in (("voc", segmentation, "per-pixel masks (source 'voc') score a segmentation model"),
                                 ("coco", detector, "boxes (source 'coco') score a detector")):
        if any(d.source == source for d in given) and not fits:
            raise InvalidRequest(f"{scores}; this model's output has scores {what}", field="data.source")

    def unread(d: DataSpec | None, trained: bool) -> DataSpec | None:
        drop = d is not None and ((is_dense(output) and d.source == "imagefolder") or (trained and d.source == "coco"))
        return replace(d, ignore_labels=True) if drop else d

    return unread(data, False), unread(train, True)
