"""Hugging Face transformers models built from a config: no remote code, no download, ever.

`hf:<AutoClass>` names one of AUTO_CLASSES; its config is the job's model arguments (a config.json's
fields: `model_type` and the sizes). Only the families in FAMILIES are built, by transformers' own
classes for them (never `auto_map`, never `trust_remote_code`), with eager attention so the graph is
plain matrix products the dependency tracer follows; weights come with the job.

What a pruned model may change is what the stock config can say, so the pruned model saves as a
Hugging Face checkpoint that reloads with the stock classes (`save_pruned`):

- FFN width: `intermediate_size` (DistilBERT: `hidden_dim`) is one number for every layer, so the
  FFN groups of all layers are tied (one width, chosen once) (`constraints`).
- Depth: whole encoder layers are removable blocks (`encoder_layers`); `num_hidden_layers` counts
  the layers kept.
- Attention heads and the residual width are held: transformers 5 derives BERT's head size from
  `hidden_size / num_attention_heads`, so fewer heads at the same head size, or a narrower residual
  stream with its q/k/v, cannot be written in the config. The report names them with that reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from secateurs.errors import InvalidRequest

AUTO_CLASSES = {
    "AutoModelForSequenceClassification": ("bert", "distilbert", "roberta"),
    "AutoModelForImageClassification": ("vit",),
}
CONFIG_BYTES = 1 << 20
# Config fields never taken from a job: code to fetch or run, weights or dtypes to choose, attention kernels.
_REFUSED = re.compile(r"^(_.*|auto_map|trust_remote_code|quantization_config|torch_dtype|dtype|"
                      r"attn_implementation|.*_implementation|pretrained_.*|name_or_path|architectures)$")
HELD_REASON = ("attention and the residual width: transformers' stock config cannot express fewer heads at "
               "the same head size, nor a residual width apart from q/k/v (hidden_size / num_attention_heads)")


@dataclass(frozen=True)
class Family:
    layers: str  # the ModuleList of encoder layers
    ffn: str  # the first FFN layer inside one (its outputs are the FFN width)
    depth_key: str  # the config field counting layers
    width_key: str  # the config field of the FFN width


FAMILIES = {
    "bert": Family("bert.encoder.layer", "intermediate.dense", "num_hidden_layers", "intermediate_size"),
    "roberta": Family("roberta.encoder.layer", "intermediate.dense", "num_hidden_layers", "intermediate_size"),
    "distilbert": Family("distilbert.transformer.layer", "ffn.lin1", "n_layers", "hidden_dim"),
    "vit": Family("vit.layers", "mlp.fc1", "num_hidden_layers", "intermediate_size"),
}


def build_hf(arch: str, name: str, config: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised model of an allowed class and family from its config fields."""
    transformers = _transformers()
    if name not in AUTO_CLASSES:
        raise InvalidRequest(f"unknown architecture {arch!r}: hf: takes one of {', '.join(AUTO_CLASSES)}",
                             field="model.arch")
    model_config = hf_config(name, config)
    auto = getattr(transformers, name)
    model = auto.from_config(model_config, attn_implementation="eager")
    return model.float().eval()


def hf_config(name: str, config: Mapping[str, Any]) -> Any:
    """The transformers config these fields make, checked: a known family, only its own fields."""
    from transformers import CONFIG_MAPPING

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    allowed = AUTO_CLASSES[name]
    if model_type not in allowed:
        raise InvalidRequest(f"hf:{name} builds model_type {', '.join(allowed)}; the config gives "
                             f"{model_type!r}", field="model.arch_kwargs.model_type")
    known = set(CONFIG_MAPPING[model_type]().to_dict()) | {"num_labels"}  # the label maps' count
    # Refused fields first, so a config that asks for code is named for that whatever else it holds.
    for key in sorted(fields, key=lambda k: (not _REFUSED.match(k), k)):
        if _REFUSED.match(key) or key not in known:
            raise InvalidRequest(f"config field {key!r} is not accepted for {model_type} (only its own size and "
                                 f"behaviour fields; never code, weights or dtypes)", field=f"model.arch_kwargs.{key}")
    return CONFIG_MAPPING[model_type](**fields)


def read_config_file(path: Path) -> dict[str, Any]:
    """A config.json as model arguments: its label maps become num_labels, bookkeeping fields go."""
    raw = Path(path).read_bytes()
    if len(raw) > CONFIG_BYTES:
        raise InvalidRequest(f"{path} is over {CONFIG_BYTES} bytes: not a model config", field="model.arch_kwargs")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not JSON: {exc}", field="model.arch_kwargs") from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"{path} must hold a JSON object", field="model.arch_kwargs")
    labels = config.pop("id2label", None)
    config.pop("label2id", None)
    if isinstance(labels, dict) and "num_labels" not in config:
        config["num_labels"] = len(labels)
    for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        config.pop(key, None)
    return config


def family_of(model: nn.Module) -> Family | None:
    """The family of a transformers model this module builds, else None."""
    config = getattr(model, "config", None)
    if config is None or not type(model).__module__.startswith("transformers."):
        return None
    return FAMILIES.get(getattr(config, "model_type", ""))


def encoder_layers(model: nn.Module) -> list[str]:
    """The names of the encoder layers, each removable as a whole."""
    family = family_of(model)
    if family is None:
        return []
    return [f"{family.layers}.{i}" for i in range(len(model.get_submodule(family.layers)))]


def constraints(model: nn.Module, classifier: str) -> tuple[dict[str, str], list[tuple[str, ...]]]:
    """(layers held whole with why, groups of FFN roots tied to one width) for a transformers model."""
    family = family_of(model)
    if family is None:
        return {}, []
    ffn = [f"{layer}.{family.ffn}" for layer in encoder_layers(model)]
    held = {name: HELD_REASON for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name not in ffn and name != classifier}
    return held, [tuple(ffn)] if len(ffn) > 1 else []


def save_pruned(model: nn.Module, directory: Path) -> Path:
    """The pruned model as a save_pretrained directory (config.json and model.safetensors) that the
    stock class reloads: its config gets the FFN width and the number of layers kept."""
    family = family_of(model)
    if family is None:
        raise InvalidRequest("not a transformers model", field="model.arch")
    layers = model.get_submodule(family.layers)
    kept = [i for i, layer in enumerate(layers) if any(True for _ in layer.parameters())]
    widths = {layers[i].get_submodule(family.ffn).out_features for i in kept}
    if len(widths) > 1:
        raise InvalidRequest(f"FFN widths differ between layers ({sorted(widths)}): the stock config holds one",
                             field="model.arch")
    config = model.config.__class__.from_dict(model.config.to_dict())
    setattr(config, family.depth_key, len(kept))
    if widths:
        setattr(config, family.width_key, widths.pop())
    renamed = {}
    prefix = family.layers + "."
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if int(index) not in kept:
                continue
            key = f"{prefix}{kept.index(int(index))}.{rest}"
        renamed[key] = tensor
    rebuilt = type(model)(config)
    rebuilt.load_state_dict(renamed, strict=True)
    directory.mkdir(parents=True, exist_ok=True)
    rebuilt.save_pretrained(str(directory), safe_serialization=True)
    return directory


def save_pruned_archive(model: nn.Module, path: Path) -> dict[str, Any]:
    """save_pruned into a zip at `path` (one artifact file); the config fields it changed."""
    import shutil
    import tempfile
    import zipfile

    family = family_of(model)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        directory = save_pruned(model, Path(tmp) / "checkpoint")
        config = json.loads((directory / "config.json").read_text())
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # safetensors does not compress
            for file in sorted(directory.iterdir()):
                archive.write(file, file.name)
        shutil.rmtree(directory)
    return {"ok": True, "config": {key: config.get(key) for key in (family.depth_key, family.width_key)}}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise InvalidRequest("hf: models need the transformers package (pip install 'secateurs[hf]')",
                             field="model.arch") from None
    return transformers

