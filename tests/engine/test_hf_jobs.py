"""Whole hf: jobs from small configs: a DistilBERT-shaped text classifier on text tokenised by a
tokenizer trained here, and a ViT-shaped image classifier; each under a speedup budget, with parity,
a report that validates, and a Hugging Face checkpoint that reloads with the stock class and gives
the returned ONNX model's logits."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers is the optional 'hf' extra (make test installs it)")

from secateurs.engine.budget import Budget  # noqa: E402
from secateurs.engine.intake.data import load_dataset  # noqa: E402
from secateurs.engine.pipeline import compress  # noqa: E402
from secateurs.engine.report.schema import validate_report  # noqa: E402
from secateurs.engine.spec import DataSpec, ModelSpec, ProtocolSpec, RecoverySpec  # noqa: E402
from secateurs.engine.validate import build_spec  # noqa: E402
from text_data import distilbert_config, vit_config, write_text_dataset  # noqa: E402

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no budget asserted
TEXT_INPUTS = "input_ids:1x16:int64,attention_mask:1x16:int64"


def test_a_distilbert_job_on_text_meets_its_budget_shape_and_its_checkpoint_reloads(tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    texts = write_text_dataset(tmp_path / "texts", train=256, test=128)
    spec = build_spec(
        model=ModelSpec(arch="hf:AutoModelForSequenceClassification", arch_kwargs=distilbert_config()),
        input_shape=TEXT_INPUTS, out_dir=tmp_path / "out", limits={"speedup": 1.2}, protocol=QUICK,
        data=DataSpec(source="jsonl", path=texts, split="test"),
        train_data=DataSpec(source="jsonl", path=texts, split="train"),
        recovery=RecoverySpec(epochs=1, optimizer="adamw", lr=1e-3, batch_size=32),
        calibration_samples=32, cache_dir=tmp_path / "cache")
    result = compress(spec)
    report = result.report
    validate_report(report)
    assert report["parity"]["passed"]
    assert [i["name"] for i in report["model"]["inputs"]] == ["input_ids", "attention_mask"]
    assert report["model"]["output"] == "logits"
    assert report["quality"]["after"]["samples"] == 128 and report["quality"]["after"]["accuracy"] is not None
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
    changed = report["exports"]["hf_checkpoint"]
    assert changed["ok"], changed

    # The reload round-trip: the checkpoint through the stock class gives the returned ONNX model's logits.
    checkpoint = tmp_path / "checkpoint"
    with zipfile.ZipFile(result.artifacts["hf_checkpoint"]) as archive:
        archive.extractall(checkpoint)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    assert {"n_layers": reloaded.config.n_layers, "hidden_dim": reloaded.config.hidden_dim} == changed["config"]
    batch = load_dataset(DataSpec(source="jsonl", path=texts, split="test", limit=8), spec.inputs)
    ids = torch.stack([batch[i][0][0] for i in range(8)])
    mask = torch.stack([batch[i][0][1] for i in range(8)])
    session = ort.InferenceSession(str(result.artifacts["onnx"]), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input_ids": ids[i:i + 1].numpy(),
                                              "attention_mask": mask[i:i + 1].numpy()})[0] for i in range(8)])
    with torch.no_grad():
        want = reloaded(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - want).max() < 1e-4


def test_a_vit_job_from_a_config_prunes_its_ffn_or_layers_with_parity(tmp_path):
    spec = build_spec(model=ModelSpec(arch="hf:AutoModelForImageClassification", arch_kwargs=vit_config()),
                      input_shape="1x3x32x32", out_dir=tmp_path / "out", limits={"speedup": 1.2}, protocol=QUICK,
                      calibration_samples=32, cache_dir=tmp_path / "cache")
    report = compress(spec).report
    validate_report(report)
    assert report["parity"]["passed"] and report["exports"]["hf_checkpoint"]["ok"]
    cut = [g for g in report["pruning"]["groups"] if g["after"] < g["before"]]
    assert all(g["name"].endswith("mlp.fc1") for g in cut)
    assert cut or report["pruning"]["dropped_blocks"]
    assert report["size"]["compressed"]["macs"] < report["size"]["baseline"]["macs"]
