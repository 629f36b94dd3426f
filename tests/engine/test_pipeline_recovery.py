"""Recovery as a pipeline stage: labelled data, label-free, progressive, the accuracy floor."""

from __future__ import annotations

import pytest

from secateurs.engine.budget import Budget
from secateurs.engine.spec import CompressSpec, DataSpec, ModelSpec, ProtocolSpec, RecoverySpec, TransformSpec
from secateurs.engine.pipeline import compress

QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)  # no latency asserted
DIGITS = TransformSpec(resize=32)


def _spec(tmp_path, **kw):
    base = dict(model=ModelSpec(arch="zoo:resnet20", arch_kwargs={"width": 8}), input_shape=(1, 3, 32, 32),
                out_dir=tmp_path, protocol=QUICK, exports=("onnx", "plan"), calibration_samples=64,
                cache_dir=tmp_path / "cache")
    base.update(kw)
    return CompressSpec(**base)


def test_recovery_with_labels_reports_accuracy_and_epoch_events(tmp_path):
    events = []
    spec = _spec(tmp_path, ratio=0.5,
                 data=DataSpec(source="digits", split="test", channels=3, transform=DIGITS),
                 train_data=DataSpec(source="digits", split="train", channels=3, transform=DIGITS),
                 recovery=RecoverySpec(epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.0))
    report = compress(spec, on_event=events.append).report
    rec = report["recovery"]
    assert not rec["label_free"] and len(rec["history"]) == 2
    epochs = [e for e in events if e.stage == "recover" and e.kind == "progress" and "epoch" in e.data]
    assert [e.data["epoch"] for e in epochs] == [1, 2] and all("lr" in e.data for e in epochs)
    assert report["quality"]["after"]["accuracy"] is not None
    assert "recover" in report["stage_seconds"]


def test_label_free_recovery_reports_fidelity(tmp_path):
    spec = _spec(tmp_path, ratio=0.5, recovery=RecoverySpec(epochs=1, batch_size=64))
    report = compress(spec).report
    assert report["recovery"]["label_free"] and report["quality"]["after"]["accuracy"] is None
    assert "accuracy could not be measured" in report["recovery"]["note"]


def test_progressive_recovery_lands_on_the_one_shot_widths(tmp_path):
    spec = _spec(tmp_path, ratio=0.5, recovery=RecoverySpec(epochs=2, batch_size=64, progressive_steps=2))
    report = compress(spec).report
    assert {row["step"] for row in report["recovery"]["history"]} == {1, 2}
    oneshot = {g["name"]: g["after"] for g in report["pruning"]["groups"]}
    assert report["size"]["compressed"]["params"] < report["size"]["baseline"]["params"]
    assert all(v <= 16 for v in oneshot.values())


def test_missed_accuracy_floor_is_reported_not_fatal(tmp_path):
    spec = _spec(tmp_path, budget=Budget(params=20_000, max_accuracy_drop=0.0),
                 data=DataSpec(source="digits", split="test", channels=3, transform=DIGITS))
    report = compress(spec).report
    floor = report["accuracy_floor"]
    assert floor["max_drop"] == 0.0 and floor["measured_as"] == "accuracy"
    assert floor["met"] == (floor["drop"] <= 0.0)
    assert floor["missed_by"] == pytest.approx(max(0.0, floor["drop"]))
    assert floor["samples"] == report["quality"]["after"]["samples"] > 0


def test_a_missed_accuracy_limit_is_a_missed_budget(tmp_path):
    # fidelity on generated inputs: after pruning half the model, agreement with it is below 100%
    report = compress(_spec(tmp_path, budget=Budget(params=60_000, max_accuracy_drop=0.0))).report
    floor = report["accuracy_floor"]
    assert report["size"]["compressed"]["params"] <= 60_000 and report["budget_shortfall"] == 0  # the rest met
    assert not floor["met"] and floor["drop"] > 0 and report["budget_met"] is False
    assert 1 <= len(floor["attempts"]) <= 3 and floor["outcome"].startswith("missed")
    ids = [a["candidate"] for a in floor["attempts"]]
    assert ids[0] == report["search"]["chosen"] and len(set(ids)) == len(ids)  # each retry a less-pruned plan
    params = {c["id"]: c["measured"]["params"] for c in report["search"]["trace"]}
    assert all(params[a] < params[b] for a, b in zip(ids, ids[1:]))
    generous = compress(_spec(tmp_path / "b", budget=Budget(params=60_000, max_accuracy_drop=0.99),
                              cache_dir=tmp_path / "cache")).report  # the first job's layer tables
    assert generous["accuracy_floor"]["met"] and generous["budget_met"] is True


def test_an_interrupted_job_reuses_its_search_only_for_the_same_job(tmp_path):
    def run(budget):
        events = []
        report = compress(_spec(tmp_path, budget=budget), on_event=events.append).report
        reused = any(e.stage == "search" and "reusing the search result" in e.message for e in events)
        return report, reused

    first, reused = run(Budget(params=20_000))
    assert not reused and (tmp_path / "search.json").exists()
    again, reused = run(Budget(params=20_000))  # what a resumed attempt of the same job sees
    assert reused and again["search"]["trace"] == first["search"]["trace"]
    assert again["pruning"]["groups"] == first["pruning"]["groups"]
    other, reused = run(Budget(params=30_000))  # another job in the same directory searches afresh
    assert not reused and other["search"]["budget"]["params"] == 30_000
