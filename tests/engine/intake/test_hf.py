"""hf:<AutoClass> models from a config: built without code or downloads, their FFNs tied to one width,
their encoder layers removable, and a pruned model that saves as a stock-reloadable checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from secateurs.engine.inputs import generate  # noqa: E402
from secateurs.engine.intake.hf import HELD_REASON, read_config_file, save_pruned  # noqa: E402
from secateurs.engine.intake.models import build_architecture, check_runs, parameter_count  # noqa: E402
from secateurs.engine.prune.apply import prune  # noqa: E402
from secateurs.engine.prune.blocks import find_blocks  # noqa: E402
from secateurs.engine.prune.groups import describe_groups, prepare  # noqa: E402
from secateurs.engine.spec import InputSpec, PruneSpec  # noqa: E402
from secateurs.errors import InvalidRequest  # noqa: E402
from text_data import distilbert_config, vit_config  # noqa: E402

TEXT = "hf:AutoModelForSequenceClassification"
INPUTS = (InputSpec("input_ids", (2, 16), "int64"), InputSpec("attention_mask", (2, 16), "int64"))


def _distilbert(**overrides: object) -> torch.nn.Module:
    model = build_architecture(TEXT, distilbert_config(**overrides))
    check_runs(model, INPUTS)
    return model


@pytest.mark.parametrize("fields, field, message", [
    ({"model_type": "gpt2"}, "model.arch_kwargs.model_type", "builds model_type bert, distilbert, roberta"),
    ({**distilbert_config(), "auto_map": ["x.Y"]}, "model.arch_kwargs.auto_map", "never code"),
    ({**distilbert_config(), "trust_remote_code": True}, "model.arch_kwargs.trust_remote_code", "never code"),
    ({**distilbert_config(), "quantization_config": "bnb"}, "model.arch_kwargs.quantization_config", "never code"),
    ({**distilbert_config(), "not_a_field": 1}, "model.arch_kwargs.not_a_field", "only its own"),
    # A field asking for code is named even beside an unknown one that comes first.
    ({**distilbert_config(), "aaa_unknown": 1, "auto_map": ["x.Y"]}, "model.arch_kwargs.auto_map", "never code"),
])
def test_configs_that_would_run_code_or_are_not_the_models_own_are_refused(fields, field, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        build_architecture(TEXT, fields)
    assert err.value.field == field


def test_an_unknown_auto_class_is_refused_by_name():
    with pytest.raises(InvalidRequest, match="hf: takes one of AutoModelForSequenceClassification"):
        build_architecture("hf:AutoModelForCausalLM", distilbert_config())


def test_a_config_file_becomes_model_arguments(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "distilbert", "dim": 32, "id2label": {"0": "a", "1": "b", "2": "c"}, '
                    '"architectures": ["DistilBertForSequenceClassification"], "transformers_version": "5.0"}')
    assert read_config_file(path) == {"model_type": "distilbert", "dim": 32, "num_labels": 3}


def test_the_size_is_counted_on_the_meta_device():
    model = _distilbert()
    assert parameter_count(TEXT, distilbert_config()) == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers())


def test_ffn_widths_are_tied_attention_is_held_and_layers_are_blocks():
    model = _distilbert()
    example = generate(INPUTS, generator=torch.Generator().manual_seed(0))
    groups = describe_groups(prepare(copy.deepcopy(model), example), example)
    free = [g for g in groups if g.prunable]
    assert [(g.name, g.tied, g.channels) for g in free] == [
        ("distilbert.transformer.layer.0.ffn.lin1", ("distilbert.transformer.layer.1.ffn.lin1",), 64)]
    held = {g.name: g.reason for g in groups if not g.prunable}
    assert held["distilbert.transformer.layer.0.attention.q_lin"] == HELD_REASON
    assert "classifier" not in held  # the classifier is never a group: its outputs are the model's
    assert [b.name for b in find_blocks(model, example)] == [
        "distilbert.transformer.layer.0", "distilbert.transformer.layer.1"]


def test_a_pruned_model_reloads_with_the_stock_class_and_gives_the_same_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _distilbert()
    example = generate(INPUTS, generator=torch.Generator().manual_seed(0))
    pruned = prune(model, example, PruneSpec(group_ratios={"distilbert.transformer.layer.0.ffn.lin1": 0.5},
                                             drop_blocks=("distilbert.transformer.layer.0",))).model
    widths = {m.out_features for n, m in pruned.named_modules() if n.endswith("ffn.lin1")}
    assert widths == {32}  # the tied layer took the width too
    directory = save_pruned(pruned, tmp_path / "checkpoint")
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    assert (reloaded.config.n_layers, reloaded.config.hidden_dim) == (1, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(*example), reloaded(*example).logits, atol=1e-5)


def test_vit_from_a_config_prunes_its_ffn_and_keeps_its_heads():
    model = build_architecture("hf:AutoModelForImageClassification", vit_config())
    example = torch.randn(1, 3, 32, 32)
    check_runs(model, (1, 3, 32, 32))
    groups = describe_groups(prepare(copy.deepcopy(model), example), example)
    assert [g.name for g in groups if g.prunable] == ["vit.layers.0.mlp.fc1"]
    assert len(find_blocks(model, example)) == 2
