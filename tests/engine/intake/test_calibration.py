"""Data roles: calibration and evaluation never share an image, whatever data a job has."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from secateurs.engine.intake.calibration import build_roles, held_out, wilson
from secateurs.engine.intake.data import load_dataset
from secateurs.engine.spec import DataSpec

SHAPE = (1, 3, 16, 16)


def _zip(path: Path, splits: tuple[str, ...], per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split in splits:
            for c in ("cat", "dog"):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
                    zf.writestr(f"{split}/{c}/{i:03d}.png", buf.getvalue())
    return path


def _disjoint(roles) -> None:  # type: ignore[no-untyped-def]
    assert roles.calibration_ids and roles.evaluation_ids
    assert not set(roles.calibration_ids) & set(roles.evaluation_ids)
    assert len(roles.evaluation_ids) == roles.summary["evaluation"]["samples"] == len(roles.evaluation)


def test_calibration_comes_from_the_train_split_and_the_test_split_is_evaluated_whole(tmp_path: Path) -> None:
    data = _zip(tmp_path / "d.zip", ("train", "test"))
    roles = build_roles(DataSpec(source="imagefolder", path=data, split="test"), None, SHAPE, calibration_samples=4,
                        evaluation_samples=None, seed=0)
    _disjoint(roles)
    assert all(i.startswith("train/") for i in roles.calibration_ids)
    assert len(roles.evaluation_ids) == 24 and all(i.startswith("test/") for i in roles.evaluation_ids)
    assert sum(x.shape[0] for x in roles.calibration.inputs) == 4 and roles.calibration.labels is not None
    assert sum(x.shape[0] for x in roles.calibration.recalibration) == 4


def test_without_a_train_split_calibration_is_carved_and_the_report_says_so(tmp_path: Path) -> None:
    data = _zip(tmp_path / "d.zip", ("test",))
    roles = build_roles(DataSpec(source="imagefolder", path=data, split="test"), None, SHAPE, calibration_samples=4,
                        evaluation_samples=None, seed=0)
    _disjoint(roles)
    assert len(roles.evaluation_ids) == 24 - 8 and "carved" in roles.summary["calibration"]["note"]


def test_only_a_train_split_evaluates_on_a_held_out_part_recovery_never_sees(tmp_path: Path) -> None:
    data = _zip(tmp_path / "d.zip", ("train",), per_class=60)
    train = DataSpec(source="imagefolder", path=data, split="train", seed=3)
    evaluation, training = held_out(train, None)
    roles = build_roles(evaluation, training, SHAPE, calibration_samples=4, evaluation_samples=None, seed=3)
    _disjoint(roles)
    trained = {name for name, _ in load_dataset(training).samples}
    assert trained.isdisjoint(roles.evaluation_ids) and set(roles.calibration_ids) <= trained
    assert 0 < len(roles.evaluation_ids) < 40 and "held out" in roles.summary["evaluation"]["note"]


def test_evaluation_samples_is_a_seeded_subset(tmp_path: Path) -> None:
    data = _zip(tmp_path / "d.zip", ("train", "test"))
    spec = DataSpec(source="imagefolder", path=data, split="test")
    first = build_roles(spec, None, SHAPE, calibration_samples=4, evaluation_samples=10, seed=1)
    again = build_roles(spec, None, SHAPE, calibration_samples=4, evaluation_samples=10, seed=1)
    assert len(first.evaluation_ids) == 10 and first.evaluation_ids == again.evaluation_ids


def test_digits_and_generated_inputs_keep_the_roles_apart() -> None:
    from secateurs.engine.spec import TransformSpec

    digits = DataSpec(source="digits", split="test", channels=3, transform=TransformSpec(resize=16))
    roles = build_roles(digits, None, SHAPE, calibration_samples=8, evaluation_samples=None, seed=0)
    _disjoint(roles)
    generated = build_roles(None, None, SHAPE, calibration_samples=8, evaluation_samples=None, seed=0)
    _disjoint(generated)
    assert not generated.evaluation.labelled


@pytest.mark.parametrize(("k", "n", "low", "high"), [(90, 100, 0.825, 0.945), (0, 10, 0.0, 0.278), (64, 64, 0.943, 1.0)])
def test_wilson_interval(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=2e-3) and hi == pytest.approx(high, abs=2e-3)
