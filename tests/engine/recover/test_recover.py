"""Recovery after pruning, on a tiny CNN and 16x16 digits (one core, well under a minute)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from secateurs.engine.intake.data import load_dataset, make_loader
from secateurs.engine.spec import DataSpec, RecoverySpec, TransformSpec, validate_recovery_spec
from secateurs.engine.recover.distill import Distiller, attention_loss, find_feature_points
from secateurs.engine.events import CancelToken
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.recover.progressive import progressive
from secateurs.engine.recover.train import evaluate, latest_checkpoint, lr_at, recover
from secateurs.errors import Cancelled, InvalidRequest

torch.set_num_threads(1)


class Toy(nn.Module):
    """Two resolutions (16x16, 8x8), three prunable convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))))


def _digits(split: str, limit: int | None) -> TensorDataset:
    ds = load_dataset(DataSpec(source="digits", split=split, limit=limit, transform=TransformSpec(resize=16)))
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.tensor(ys))  # resized once, not every epoch


@pytest.fixture(scope="module")
def data() -> tuple[TensorDataset, TensorDataset]:
    return _digits("train", 600), _digits("test", None)


@pytest.fixture(scope="module")
def teacher(data) -> nn.Module:
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for x, y in make_loader(data[0], 64, shuffle=True, seed=1):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


EXAMPLE = torch.zeros(1, 1, 16, 16)
FAST = dict(epochs=2, warmup_epochs=0.5, max_steps_per_epoch=4, recalibration_batches=2)


def test_recovery_improves_accuracy_after_pruning(data, teacher):
    train, test = data
    val = make_loader(test, 180)
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    before = evaluate(pruned, val, teacher)
    events = []
    result = recover(pruned, teacher, make_loader(train, 64, shuffle=True), RecoverySpec(epochs=3, lr=0.05),
                     val=val, on_event=events.append)
    after = evaluate(pruned, val, teacher)
    assert after["accuracy"] > before["accuracy"] + 0.05
    assert result.metrics["accuracy"] == pytest.approx(after["accuracy"])
    assert not result.label_free and result.resumed_from_epoch is None
    progress = [e for e in events if e.kind == "progress"]
    assert [e.message for e in progress] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert progress[-1].progress == 1.0 and progress[-1].stage == "recover"
    assert {"epoch", "loss", "lr", "train_accuracy", "val_accuracy", "val_agreement"} <= set(progress[0].data)
    assert teacher.training is False  # the teacher is left as it was


def test_resume_from_checkpoint_matches_an_uninterrupted_run(data, teacher, tmp_path):
    train = data[0]
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    spec = RecoverySpec(**FAST, feature_weight=1.0, attention_weight=1.0)
    straight = copy.deepcopy(pruned)
    recover(straight, teacher, make_loader(train, 32, shuffle=True, seed=3), spec)

    token = CancelToken()
    first = copy.deepcopy(pruned)
    with pytest.raises(Cancelled):  # interrupted after epoch 1's checkpoint
        recover(first, teacher, make_loader(train, 32, shuffle=True, seed=3), spec, checkpoint_dir=tmp_path,
                on_event=lambda e: token.set() if e.kind == "progress" else None, cancel=token)
    assert latest_checkpoint(tmp_path).name == "recover-epoch0001.pt"
    resumed = copy.deepcopy(pruned)  # a new process: fresh model and loader
    result = recover(resumed, teacher, make_loader(train, 32, shuffle=True, seed=3), spec, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 1 and [h["epoch"] for h in result.history] == [1, 2]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_checkpoint_from_another_recipe_is_refused(data, teacher, tmp_path):
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    recover(copy.deepcopy(pruned), teacher, make_loader(data[0], 32), RecoverySpec(**FAST), checkpoint_dir=tmp_path)
    with pytest.raises(InvalidRequest, match="different recovery recipe") as err:
        recover(pruned, teacher, make_loader(data[0], 32), RecoverySpec(**{**FAST, "epochs": 3}),
                checkpoint_dir=tmp_path)
    assert err.value.field == "checkpoint_dir"


def test_label_free_recovery_reports_fidelity_not_accuracy(teacher):
    synthetic = load_dataset(DataSpec(source="synthetic", shape=(1, 16, 16), limit=96, distribution="uniform"))
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    result = recover(pruned, teacher, make_loader(synthetic, 32, shuffle=True),
                     RecoverySpec(**FAST, kd_weight=0.0, ce_weight=1.0, attention_weight=0.5),
                     val=make_loader(synthetic, 48))
    assert result.label_free
    assert result.metrics["accuracy"] is None
    assert 0.0 <= result.metrics["agreement"] <= 1.0 and result.metrics["kl"] >= 0.0
    assert "accuracy could not be measured" in result.note
    assert result.history[-1]["kd"] > 0 and result.history[-1]["ce"] == 0  # distillation only


def test_feature_points_and_adapters_only_where_channels_differ(teacher):
    assert find_feature_points(teacher, EXAMPLE) == ["stem", "stage2"]  # the end of each resolution
    pruned = prune(teacher, EXAMPLE, PruneSpec(group_ratios={"stage1.0": 0.5})).model
    distiller = Distiller.build(pruned, teacher, ["stem", "stage1", "stage2"], EXAMPLE)
    assert distiller.points == ["stem", "stage1", "stage2"]
    assert distiller.adapted_points() == ["stage1"]
    conv = distiller.adapters["stage1"]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (16, 32, (1, 1))


def test_adapters_start_at_the_least_squares_fit(data, teacher):
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    distiller = Distiller.build(pruned, teacher, ["stem", "stage2"], EXAMPLE)
    batch = data[0].tensors[0][:64]
    s, t = _taps(pruned, teacher, distiller.points, batch)
    untrained = distiller.losses(s, t, features=True, attention=False)[0].detach()
    distiller.fit_adapters(pruned, teacher, [batch])
    s, t = _taps(pruned, teacher, distiller.points, batch)
    fitted = distiller.losses(s, t, features=True, attention=False)[0].detach()
    assert float(fitted) < float(untrained) and float(fitted) < 1.0


def _taps(student, teacher, points, x):
    from secateurs.engine.recover.distill import _features

    s, t = _features(student, points, [x]), _features(teacher, points, [x])
    return {k: v[0] for k, v in s.items()}, {k: v[0] for k, v in t.items()}


def test_attention_transfer_is_zero_for_identical_maps_and_channel_agnostic():
    f = torch.randn(4, 8, 6, 6)
    assert float(attention_loss(f, f.clone())) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_loss(f, 3 * f)) == pytest.approx(0.0, abs=1e-6)  # normalised: scale-free
    assert float(attention_loss(f[:, :3], torch.randn(4, 16, 6, 6))) > 0  # different channel counts work


def test_progressive_reaches_the_one_shot_widths_monotonically(data, teacher):
    events = []
    result = progressive(teacher, EXAMPLE, 0.75, make_loader(data[0], 64, shuffle=True),
                         RecoverySpec(**{**FAST, "epochs": 3}), steps=3, on_event=events.append)
    one_shot = {g["name"]: g["after"] for g in prune(teacher, EXAMPLE, PruneSpec(ratio=0.75)).plan.groups}
    assert result.widths[-1] == one_shot
    for name in one_shot:
        series = [w[name] for w in result.widths]
        assert series == sorted(series, reverse=True), name
    assert result.widths[0]["stage1.0"] == 24 and result.widths[1]["stage1.0"] == 16
    assert len(result.steps) == 3 and all(len(r.history) == 1 for r in result.steps)
    fractions = [e.progress for e in events if e.kind == "progress"]
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])
    # The combined plan replays on the original architecture.
    from secateurs.engine.prune.apply import apply_plan

    replayed = apply_plan(copy.deepcopy(teacher), EXAMPLE, result.plan)
    replayed.load_state_dict(result.model.state_dict())


def test_cancel_stops_within_a_step(data, teacher):
    class AfterCalls:
        def __init__(self, n: int) -> None:
            self.n, self.calls = n, 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls > self.n

    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    cancel, events = AfterCalls(3), []
    with pytest.raises(Cancelled):
        recover(pruned, teacher, make_loader(data[0], 32), RecoverySpec(**FAST), cancel=cancel,
                on_event=events.append)
    assert cancel.calls == 4  # checked at the start and before each step: stopped before the third step
    assert not [e for e in events if e.kind == "progress"]


def test_lr_warms_up_linearly_then_anneals_to_zero():
    assert [round(lr_at(s, 10, 2, 1.0), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


BAD = [
    ({"epochs": 0}, "recovery.epochs", "epochs must be an integer in [1, 10000], got 0"),
    ({"optimizer": "rmsprop"}, "recovery.optimizer", "optimizer 'rmsprop' is not one of sgd, adamw"),
    ({"lr": 0.0}, "recovery.lr", "lr must be in (0, 10], got 0.0"),
    ({"weight_decay": -0.1}, "recovery.weight_decay", "weight_decay must be in [0, 1), got -0.1"),
    ({"epochs": 2, "warmup_epochs": 3}, "recovery.warmup_epochs", "warmup_epochs must be in [0, epochs=2], got 3"),
    ({"label_smoothing": 1.0}, "recovery.label_smoothing", "label_smoothing must be in [0, 1), got 1.0"),
    ({"batch_size": 0}, "recovery.batch_size", "batch_size must be >= 1, got 0"),
    ({"seed": -1}, "recovery.seed", "seed must be >= 0, got -1"),
    ({"kd_weight": -1.0}, "recovery.kd_weight", "kd_weight must be finite and >= 0, got -1.0"),
    ({"attention_weight": float("inf")}, "recovery.attention_weight",
     "attention_weight must be finite and >= 0, got inf"),
    ({"ce_weight": 0.0, "kd_weight": 0.0}, "recovery.ce_weight", "all loss weights are 0: nothing to train on"),
    ({"kd_temperature": 0.0}, "recovery.kd_temperature", "kd_temperature must be in (0, 100], got 0.0"),
    ({"feature_points": ()}, "recovery.feature_points",
     "feature_points must name at least one module, without empty names"),
    ({"epochs": 2, "progressive_steps": 3}, "recovery.progressive_steps",
     "progressive_steps must be in [1, epochs=2] (each step needs an epoch of recovery), got 3"),
    ({"max_steps_per_epoch": 0}, "recovery.max_steps_per_epoch", "max_steps_per_epoch must be >= 1, got 0"),
    ({"recalibration_batches": -1}, "recovery.recalibration_batches", "recalibration_batches must be >= 0, got -1"),
    ({"device": "tpu"}, "recovery.device", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
]


@pytest.mark.parametrize("fields,field,message", BAD, ids=[b[1] for b in BAD])
def test_bad_recovery_specs_name_the_field(fields, field, message):
    with pytest.raises(InvalidRequest) as err:
        validate_recovery_spec(RecoverySpec(**fields))
    assert str(err.value) == message and err.value.field == field


def test_defaults_are_valid_and_per_optimizer():
    validate_recovery_spec(RecoverySpec())
    assert (RecoverySpec().learning_rate, RecoverySpec().decay) == (0.01, 5e-4)
    assert (RecoverySpec(optimizer="adamw").learning_rate, RecoverySpec(optimizer="adamw").decay) == (1e-3, 0.05)


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the mixed-precision "
                             "recovery path is tested only where one exists")


def test_cuda_asked_for_without_a_gpu_is_refused_clearly(data, teacher):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from secateurs.errors import BackendUnavailable

    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    with pytest.raises(BackendUnavailable, match="no CUDA GPU is present"):
        recover(pruned, teacher, make_loader(data[0], 32), RecoverySpec(**FAST, device="cuda"))


@NO_CUDA
def test_recovery_on_cuda_with_mixed_precision_improves_and_resumes(data, teacher, tmp_path):
    train, test = data
    val = make_loader(test, 180)
    pruned = prune(teacher, EXAMPLE, PruneSpec(ratio=0.5)).model
    before = evaluate(pruned, val, teacher)
    spec = RecoverySpec(epochs=3, lr=0.05, device="cuda", amp=True)
    tuned = copy.deepcopy(pruned)
    recover(tuned, teacher, make_loader(train, 64, shuffle=True), spec, val=val, checkpoint_dir=tmp_path)
    assert next(tuned.parameters()).device.type == "cpu"  # handed back where it came from
    assert evaluate(tuned, val, teacher)["accuracy"] > before["accuracy"] + 0.05
    again = copy.deepcopy(pruned)  # every epoch is checkpointed: a rerun resumes after the last one
    result = recover(again, teacher, make_loader(train, 64, shuffle=True), spec, val=val, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 3
