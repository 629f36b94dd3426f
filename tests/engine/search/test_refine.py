"""Joint refinement: the whole-plan quality it measures, and the local search over plans."""

from __future__ import annotations

import copy
import itertools

import torch

from secateurs.engine.prune.groups import describe_groups, prepare
from secateurs.engine.latency.cache import MeasurementCache
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.prune.apply import prune
from secateurs.engine.spec import PruneSpec
from secateurs.engine.search.refine import refine
from secateurs.engine.search.sensitivity import JointQuality
from secateurs.engine.search.types import SearchPlan
from secateurs.engine.search.sensitivity import Calibration, measure_quality, recalibrated, reference_outputs


def test_joint_quality_of_a_plan_is_the_quality_of_the_pruned_model():
    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20", {"width": 16}).eval()
    x = torch.randn(1, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    calib = Calibration(inputs=[torch.randn(16, 3, 32, 32, generator=g)],
                        labels=[torch.randint(0, 10, (16,), generator=g)], real=True,
                        recalibration=[torch.randn(16, 3, 32, 32, generator=g)])
    ctx = prepare(copy.deepcopy(model), x)
    groups = [info for info in describe_groups(ctx, x) if info.prunable]
    reference = reference_outputs(model, calib)
    joint = JointQuality(ctx, groups, calib, reference, cache=MeasurementCache(None), model_id="m")
    plan = {info.name: info.channels if i % 3 else max(8, info.channels // 2) for i, info in enumerate(groups)}
    plan[groups[0].name] = 8  # the residual stream of one stage too

    ratios = {info.name: 1 - plan[info.name] / info.channels for info in groups if plan[info.name] < info.channels}
    pruned = prune(model, x, PruneSpec(group_ratios=ratios)).model
    with recalibrated(pruned, calib.recalibration):
        expected = measure_quality(pruned, calib, reference)
    got = joint(SearchPlan(plan))
    assert abs(got.loss - expected.loss) < 1e-4 and got.accuracy == expected.accuracy
    assert joint.evaluations == 1
    joint(SearchPlan(plan))  # the second time comes from the cache
    assert joint.evaluations == 1


WIDTHS = {"a": [16, 12, 8, 4], "b": [16, 12, 8, 4], "c": [16, 12, 8, 4]}
COST = {"a": 3.0, "b": 1.0, "c": 2.0}  # cost per channel kept


def _cost(plan):
    return sum(COST[n] * w for n, w in plan.items())


def _loss(plan):
    """Not additive: narrowing a and b together costs far more than the sum of each alone."""
    cut = {n: (16 - w) / 16 for n, w in plan.items()}
    return cut["a"] ** 2 + 0.5 * cut["b"] + 0.3 * cut["c"] ** 2 + 4.0 * cut["a"] * cut["b"]


def _additive(name, width):  # what one-group measurements would say: no interaction
    return _loss({n: (width if n == name else 16) for n in WIDTHS})


def test_refinement_improves_on_its_start_within_the_budget():
    limit = 60.0
    fits = lambda p: _cost(p) <= limit  # noqa: E731
    start = {"a": 8, "b": 4, "c": 8}  # what an additive ranking would pick: b looks cheap alone
    assert fits(start)
    best, steps = refine([start], WIDTHS, fits=fits, loss=_loss, additive=_additive, max_evaluations=200)
    assert fits(best) and _loss(best) < _loss(start)
    assert steps[0].loss == _loss(start) and steps[-1].loss == _loss(best)
    assert [s.loss for s in steps] == sorted((s.loss for s in steps), reverse=True)
    # within a few percent of the best plan that fits, found by brute force
    optimum = min((dict(zip(WIDTHS, ws)) for ws in itertools.product(*WIDTHS.values())
                   if fits(dict(zip(WIDTHS, ws)))), key=_loss)
    assert _loss(best) <= _loss(optimum) * 1.05


def test_refinement_starts_from_the_better_start_and_respects_its_budget():
    calls = []

    def loss(plan):
        calls.append(plan)
        return _loss(plan)

    fits = lambda p: _cost(p) <= 60.0  # noqa: E731
    worse, better = {"a": 4, "b": 16, "c": 4}, {"a": 12, "b": 4, "c": 4}
    best, steps = refine([worse, better], WIDTHS, fits=fits, loss=loss, additive=_additive, max_evaluations=5)
    assert len(calls) == 5 and all(fits(p) for p in calls)
    assert steps[0].loss == min(_loss(worse), _loss(better))
    assert _loss(best) <= min(_loss(worse), _loss(better))


def test_one_group_loss_between_measured_widths_is_interpolated():
    from secateurs.engine.search.run import _loss_at
    from secateurs.engine.search.sensitivity import Quality

    known = {64: Quality(loss=0.0, agreement=1, kl=0), 32: Quality(loss=1.0, agreement=1, kl=0),
             8: Quality(loss=3.0, agreement=1, kl=0)}
    assert _loss_at(known, 32) == 1.0 and _loss_at(known, 48) == 0.5 and _loss_at(known, 20) == 2.0
    assert _loss_at(known, 4) == 3.0  # below the narrowest measured: its loss
