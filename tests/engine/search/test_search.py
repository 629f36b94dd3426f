"""The latency-budget search on a real tiny model: verification, infeasibility, the cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from secateurs.engine.budget import Budget, Measurement, budget_shortfall, budget_slack
from secateurs.engine.export import export_onnx
from secateurs.engine.intake.models import build_architecture
from secateurs.engine.pipeline import compress
from secateurs.engine.search.run import search
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, SearchSpec
from secateurs.engine.search.sensitivity import Calibration, reference_outputs
from secateurs.engine.search.types import Candidate, SearchPlan
from secateurs.engine.size import count_params
from secateurs.engine.search.verify import Verifier, measurement, sessions_agree
from secateurs.errors import InvalidRequest

FAST = ProtocolSpec(warmup_runs=5, warmup_seconds=0.05, window=30, min_samples=90, max_seconds=3.0)
BRIEF = ProtocolSpec(warmup_runs=2, warmup_seconds=0.0, window=10, min_samples=10, max_seconds=0.2)  # counts decide
# What the tests that assert structure, not latency, measure with: on two busy cores a session that never
# settles runs to its cap, and FAST's 3 s cap made the cache and depth tests a minute each.
QUICK = ProtocolSpec(warmup_runs=3, warmup_seconds=0.0, window=10, min_samples=20, max_seconds=0.5)


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path_factory.mktemp("base") / "baseline.onnx"
    export_onnx(model, x, path)
    calib = Calibration(inputs=[torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))])
    return model, x, path, calib


@pytest.fixture(scope="module")
def resnet20_batch8(resnet20, tmp_path_factory):
    """The same model at batch 8: its latency is compute, not per-operator overhead, so a budget has
    room on any machine (at batch 1 this 0.3 ms model's floor sits near 1.5x on some)."""
    model, _, _, calib = resnet20
    x = torch.randn(8, 3, 32, 32)
    path = tmp_path_factory.mktemp("base8") / "baseline.onnx"
    export_onnx(model, x, path)
    return model, x, path, calib


def _search(resnet20, budget, cache_dir, **kw):
    model, x, path, calib = resnet20
    return search(model, x, path, SearchSpec(budget=budget, cache_dir=cache_dir, arch="zoo:resnet20",
                                             **({"protocol": QUICK} | kw)), calib)


def test_params_budget_lands_within_ten_percent(resnet20, tmp_path):
    result = _search(resnet20, Budget(params=150_000), tmp_path)
    assert result.budget_met
    params = count_params(result.model)
    assert 0.9 * 150_000 <= params <= 150_000
    assert result.final.params == params


@pytest.mark.measures
def test_speedup_budget_is_verified_by_measurement(resnet20_batch8, tmp_path):
    # aimed 15% inside, at batch 8: at batch 1 a session of this 0.3 ms model settles fast or slow (README,
    # Limits; a fresh clone's run of 2026-12-02 missed 1.3x by 8.3% there), and what is tested is
    # verification by measurement; how close a search lands is benchmarks/search.py's
    result = _search(resnet20_batch8, Budget(speedup=1.3), tmp_path, aim=0.85, protocol=FAST)
    assert result.budget_met, result.reason
    assert result.final.speedup >= 1.3
    chosen = [c for c in result.trace if c.plan == result.plan and c.stage != "uniform"]
    assert chosen and chosen[0].measured["speedup"] >= 1.3
    # each verified candidate records what was predicted next to what was measured
    assert all("latency_ms" in c.predicted and "latency_ms" in c.measured for c in result.trace)
    assert result.latency_model["mean_abs_error"] is not None
    # and the classical baseline is measured for comparison
    assert result.uniform is not None and result.uniform["stage"] == "uniform"


def test_second_search_reuses_the_cache(resnet20, tmp_path):
    first = _search(resnet20, Budget(speedup=1.2), tmp_path)
    second = _search(resnet20, Budget(speedup=1.2), tmp_path)
    assert first.cache["misses"] > 0
    # layer tables and sensitivities come from the first search; its candidate plans steer the second
    # (the baseline is measured afresh, so the second may try a plan the first did not)
    assert first.cache["misses_by_kind"]["layer"] > 0 and first.cache["misses_by_kind"]["sensitivity"] > 0
    assert not {"layer", "sensitivity", "block-importance"} & set(second.cache["misses_by_kind"]), second.cache
    assert second.cache["hits"] > 0
    # the figure that decides the result is never another search's: the chosen plan was measured again
    chosen = next(c for c in second.trace if c.id == second.chosen)
    assert chosen.measured["cached"] == 0.0 and chosen.measured.get("decisive") == 1.0


def test_infeasible_budget_returns_the_best_reachable_point(resnet20, tmp_path):
    # the floor plan runs 1.5x or more at batch 1: the quick protocol resolves "faster than the original"
    result = _search(resnet20, Budget(speedup=50.0), tmp_path, max_rounds=2)
    assert not result.budget_met
    assert "floor" in result.reason
    assert result.final.speedup > 1.0  # the best it could do, measured
    assert any(w < 64 for w in result.widths.values())  # pruned towards the floor, not the original


def test_depth_search_drops_blocks_and_keeps_channels_whole_when_asked(resnet20, tmp_path):
    only = _search(resnet20, Budget(speedup=1.4), tmp_path, depth="only")
    assert only.dropped and all(r == 0 for r in only.ratios.values())  # blocks alone
    assert [b["name"] for b in only.blocks if b["dropped"]] == only.dropped
    assert all(0 < b["latency_share"] < 1 and b["loss"] >= 0 for b in only.blocks)
    chosen = next(c for c in only.trace if c.plan == only.plan and c.stage != "uniform")
    assert sorted(chosen.plan.dropped_blocks) == sorted(only.dropped)
    assert chosen.measured["params"] == sum(p.numel() for p in only.model.parameters())
    assert only.budget_met == (only.final.speedup >= 1.4)
    # block removal was calibrated end to end once per stage of alike blocks (ResNet-20 has three),
    # and every block of a stage shares its stage's figure
    assert [c.stage for c in only.trace].count("calibration") == 2  # two stages' own, the third shares
    scales = only.latency_model["block_scales"]
    assert set(scales) == {b["name"] for b in only.blocks}
    assert len({scales[b["name"]] for b in only.blocks if b["name"].startswith("layer1.")}) == 1

    off = _search(resnet20, Budget(speedup=1.4), tmp_path, depth="off")
    assert off.dropped == [] and off.blocks == []
    assert all(not c.plan.dropped_blocks for c in off.trace)


@pytest.mark.measures
def test_joint_search_weighs_blocks_against_channels(resnet20_batch8, tmp_path):
    # depth "auto" is the default. Aimed 10% inside: at the default 5% a fresh clone's run on a slow
    # machine missed 1.5x by 2.6% in all 5 rounds (2026-12-07); what is tested is the joint plan and how
    # its decisive figures were measured; how close a search lands is benchmarks/search.py's
    result = _search(resnet20_batch8, Budget(speedup=1.5), tmp_path, protocol=FAST, aim=0.9)
    assert len(result.blocks) == 7 and [c.stage for c in result.trace].count("calibration") == 1 + 2
    assert result.budget_met, result.reason
    # steering figures take one session; a decisive figure near the budget was measured again in fresh
    # sessions (a third only when the first two fall on different sides of the budget), one far from it once
    decisive = [c for c in result.trace if c.measured.get("decisive")]
    assert decisive and all(c.measured["sessions"] == 1 for c in result.trace if c not in decisive)
    for c in decisive:
        near = abs(1.5 / c.measured["speedup"] - 1) < 0.10
        assert c.measured["sessions"] in (1, 2, 3) and not (near and c.measured["sessions"] == 1)
    chosen = next(c for c in result.trace if c.plan == result.plan and c.stage != "uniform")
    assert chosen.measured["sessions"] >= 2 or chosen.slack > 0.10
    # whatever mix it chose, the model verified is the one returned
    kept = {b["name"] for b in result.blocks} - set(result.dropped)
    assert all(any(True for _ in result.model.get_submodule(n).parameters()) for n in kept)
    assert all(not any(True for _ in result.model.get_submodule(n).parameters()) for n in result.dropped)


def test_shortfall_and_slack_are_graded():
    budget = Budget(latency_ms=10.0, params=1000)
    at = Measurement(latency_ms=9.0, speedup=2.0, size_bytes=1, params=500, macs=1)
    assert budget_shortfall(at, budget) == 0 and budget_slack(at, budget) == pytest.approx(0.1)
    over = Measurement(latency_ms=12.0, speedup=2.0, size_bytes=1, params=1100, macs=1)
    assert budget_shortfall(over, budget) == pytest.approx(0.2)


@pytest.mark.parametrize("budget,message,field", [
    (Budget(speedup=0.5), "budget.speedup must be greater than 1, got 0.5", "budget.speedup"),
    (Budget(latency_ms=-4.0), "budget.latency_ms must be a positive number, got -4.0", "budget.latency_ms"),
    (Budget(params=0), "budget.params must be a positive number, got 0", "budget.params"),
    (Budget(speedup=2.0, percentile=42.0), "budget.percentile must be one of 50, 90, 95, 99, got 42.0",
     "budget.percentile"),
    (Budget(max_accuracy_drop=0.01), "budget.max_accuracy_drop limits a budget; give latency_ms, speedup, "
                                     "size_bytes, params or macs too", "budget.max_accuracy_drop"),
    (Budget(speedup=2.0, max_accuracy_drop=1.5), "budget.max_accuracy_drop must be in [0, 1) (0.01 = one point), "
                                                 "got 1.5", "budget.max_accuracy_drop"),
])
def test_invalid_budgets(tmp_path, budget, message, field):
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path,
                        budget=budget)
    with pytest.raises(InvalidRequest) as err:
        compress(spec)
    assert str(err.value) == message and err.value.field == field


@pytest.mark.parametrize("depth,ratio,message", [
    ("sideways", None, "depth must be one of auto, off, only, got 'sideways'"),
    ("only", 0.5, "depth 'only' needs a budget: the search chooses which blocks to drop"),
])
def test_invalid_depth(tmp_path, depth, ratio, message):
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path,
                        ratio=ratio, budget=None if ratio is not None else Budget(speedup=2.0), depth=depth)
    with pytest.raises(InvalidRequest) as err:
        compress(spec)
    assert str(err.value) == message and err.value.field == "depth"


def test_ratio_and_budget_together_are_refused(tmp_path):
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path,
                        ratio=0.5, budget=Budget(speedup=2.0))
    with pytest.raises(InvalidRequest, match=r"^give exactly one of ratio, group_ratios or budget \(got ratio, "
                                             r"budget\)$"):
        compress(spec)


def test_budget_job_end_to_end(tmp_path):
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path,
                        budget=Budget(size_bytes=700_000), protocol=QUICK, cache_dir=tmp_path / "cache",
                        calibration_samples=8)
    report = compress(spec).report
    assert report["budget_met"] is True and report["size"]["compressed"]["onnx_bytes"] <= 700_000
    assert report["search"]["trace"] and report["search"]["groups"]
    assert report["pruning"]["dropped_blocks"] == [b["name"] for b in report["search"]["blocks"] if b["dropped"]]
    assert report["data"]["note"].startswith("no data: quality is fidelity")


def test_blocks_are_calibrated_by_families_of_alike_blocks_at_most_two():
    from secateurs.engine.prune.blocks import BlockInfo
    from secateurs.engine.search.run import _families

    def block(name, channels, size=16):
        return BlockInfo(name=name, kind="BasicBlock", params=channels * 10, shape=(1, channels, size, size))

    stage = [block(f"layer1.{i}", 16) for i in range(3)] + [block(f"layer2.{i}", 32, 8) for i in range(2)]
    families = _families(stage, lambda b: b.params)
    assert [[b.name for b in f] for f in families] == [["layer2.0", "layer2.1"], ["layer1.0", "layer1.1", "layer1.2"]]
    unlike = [block(f"b{i}", 8 + i) for i in range(8)]
    families = _families(unlike, lambda b: b.params)
    assert len(families) == 2 and sorted(len(f) for f in families) == [1, 7]
    assert {b.name for b in families[-1]} == {f"b{i}" for i in range(7)}  # the least latency shares one point


def test_the_search_ranks_channels_by_the_jobs_criterion(resnet20, tmp_path):
    # counted budgets, channels only: what differs between the three is the ranking
    by = {importance: _search(resnet20, Budget(params=150_000), tmp_path, importance=importance, depth="off",
                              max_rounds=2, tighten_rounds=0, protocol=BRIEF)
          for importance in ("l1", "l2", "taylor")}
    sensitivity = {name: {g["name"]: g["sensitivity"] for g in result.groups} for name, result in by.items()}
    assert sensitivity["l1"] != sensitivity["l2"] and sensitivity["l1"] != sensitivity["taylor"]
    # and what the search measured is the model it returns: its quality is the delivered model's
    for result in by.values():
        chosen = next(c for c in result.trace if c.id == result.chosen)
        assert chosen.measured["params"] == count_params(result.model)


def test_predicted_params_and_macs_are_counts_of_the_pruned_model(resnet20, tmp_path):
    result = _search(resnet20, Budget(macs=20_000_000), tmp_path, depth="auto")
    for c in result.trace:
        if "macs" in c.predicted:
            assert c.predicted["macs"] > 0 and c.predicted["params"] > 0
            assert abs(c.predicted["macs"] - c.measured["macs"]) <= 0.05 * c.measured["macs"], c


@given(st.lists(st.floats(1.0, 3.0), min_size=3, max_size=3), st.sampled_from([1.5, 2.0]))
def test_two_agreeing_sessions_decide_what_three_would(speedups, budget):
    """The decisive measurement stops after two sessions only when no third could move the median
    of three across the budget or the precision band under it."""
    counts = {"size_bytes": 1.0, "params": 1.0, "macs": 1.0}
    runs = [{"latency_ms": 1.0 / s, "speedup": s} for s in speedups]
    spec_budget = Budget(speedup=budget)

    def side(run):
        m = measurement(dict(run, **counts))
        return budget_shortfall(m, spec_budget) == 0, budget_slack(m, spec_budget) <= 0.10

    median = sorted(runs, key=lambda r: r["speedup"])[1]
    if sessions_agree(runs[:2], counts, spec_budget, 0.10):
        assert side(median) == side(runs[0]) == side(runs[1])
    else:
        assert side(runs[0]) != side(runs[1])


def test_a_decisive_session_keeps_the_jobs_protocol_but_its_length():
    from secateurs.engine.search.verify import DECISIVE_SESSION_SECONDS, decisive_protocol

    job = ProtocolSpec()  # 30 s at most per measurement
    capped = decisive_protocol(job)
    assert capped.max_seconds == DECISIVE_SESSION_SECONDS < job.max_seconds
    assert (capped.min_samples, capped.window, capped.tolerance) == (job.min_samples, job.window, job.tolerance)
    assert decisive_protocol(FAST) == FAST  # a job asking for less keeps it


class _TableVerifier(Verifier):
    """The decision of `Verifier.decide` on a table of decisive figures (steering speedup -> decisive
    speedup) instead of a runtime; its pruned model is the original perturbed, so the decided plan's
    own quality is worse than the masked estimate every other candidate carries."""

    def __init__(self, figures: dict[float, float]) -> None:  # none of Verifier's runtime is needed
        torch.manual_seed(0)
        self.figures, self.spec = figures, SearchSpec(budget=Budget(speedup=2.0))
        self.model = torch.nn.Linear(4, 3)
        self.calib = Calibration(inputs=[torch.randn(16, 4)])
        self.reference = reference_outputs(self.model, self.calib)
        self.models, self.decisive = {}, []

    def pruned(self, plan, *, importance=None):
        worse = torch.nn.Linear(4, 3)
        worse.load_state_dict({k: -v for k, v in self.model.state_dict().items()})
        return worse

    def _measure(self, pruned, *, decisive, steering=None):
        self.decisive.append(steering["speedup"])
        speedup = self.figures[steering["speedup"]]
        return {"latency_ms": 10.0 / speedup, "speedup": speedup, "size_bytes": 1.0, "params": 1.0,
                "macs": 1.0, "sessions": 2.0}


def _candidate(index: int, speedup: float, loss: float):
    measured = {"latency_ms": 10.0 / speedup, "speedup": speedup, "size_bytes": 1.0, "params": 1.0, "macs": 1.0}
    m, budget = measurement(measured), Budget(speedup=2.0)
    return Candidate(id=index, parent=None, stage="search", plan=SearchPlan({"g": 8 - index}), predicted={},
                     measured=measured, quality={"loss": loss, "agreement": 1.0}, shortfall=budget_shortfall(m, budget),
                     slack=budget_slack(m, budget), start=0.0, end=0.0)


def _choose(trace):
    met = [c for c in trace if c.shortfall == 0]
    in_band = [c for c in met if c.slack <= 0.1]
    return min(in_band or met or trace, key=lambda c: c.quality["loss"]) if (in_band or met) else \
        min(trace, key=lambda c: c.shortfall)


def test_a_decisive_figure_that_leaves_the_choice_where_it_stood_ends_the_decision():
    """The first choice's decisive figure keeps it met and within 10%: it is returned after one decisive
    measurement, though its own (pruned) quality reads worse than the runner-up's masked estimate."""
    verifier = _TableVerifier({2.07: 2.03, 2.06: 2.05})
    first, runner_up = _candidate(0, 2.07, 0.0), _candidate(1, 2.06, 1e-6)
    best = verifier.decide([first, runner_up], _choose)
    assert best is first and verifier.decisive == [2.07] and first.quality["loss"] > runner_up.quality["loss"]
    assert first.measured["decisive"] == 1.0 and first.measured["speedup"] == 2.03


def test_when_both_decisions_miss_a_plan_with_room_for_the_gap_is_measured_last():
    # the two nearest plans' decisive figures read 6% and 4.6% under their steering ones; a plan 4.8%
    # inside cannot absorb that, one 16.7% inside can: it is measured and returned, met
    verifier = _TableVerifier({2.07: 1.95, 2.06: 1.97, 2.1: 2.02, 2.4: 2.3})
    first, runner_up = _candidate(0, 2.07, 0.0), _candidate(1, 2.06, 1e-6)
    close, roomy = _candidate(2, 2.1, 2e-6), _candidate(3, 2.4, 1e-3)
    best = verifier.decide([first, runner_up, close, roomy], _choose)
    assert best is roomy and verifier.decisive == [2.07, 2.06, 2.4] and best.shortfall == 0
    verifier = _TableVerifier({2.07: 1.95, 2.06: 1.97})  # no plan met with room: the smaller miss
    first, runner_up = _candidate(0, 2.07, 0.0), _candidate(1, 2.06, 1e-6)
    assert verifier.decide([first, runner_up], _choose) is runner_up and verifier.decisive == [2.07, 2.06]


def test_a_decisive_figure_that_misses_the_budget_makes_the_choice_again():
    verifier = _TableVerifier({2.07: 1.90, 2.06: 2.05})
    first, runner_up = _candidate(0, 2.07, 0.0), _candidate(1, 2.06, 1e-6)
    assert verifier.decide([first, runner_up], _choose) is runner_up and verifier.decisive == [2.07, 2.06]
    verifier = _TableVerifier({2.07: 2.5, 2.06: 2.05})  # out of the 10% band: a nearer plan may be there
    first, runner_up = _candidate(0, 2.07, 0.0), _candidate(1, 2.06, 1e-6)
    assert verifier.decide([first, runner_up], _choose) is runner_up and verifier.decisive == [2.07, 2.06]
