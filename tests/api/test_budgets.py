"""Budget jobs through the API: refusals with their exact messages, the spec reaching the
worker, the client's flags and summary, and two real searches on ResNet-20 (one met,
one out of reach) sharing the server's measurement cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf import json_format

from service_helpers import QUICK_PROTOCOL, fake_request, resnet20_request
from secateurs.api.server import Server, ServerConfig
from secateurs.engine.budget import Budget
from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, TargetSpec
from secateurs.jobs.specs import spec_from_json, spec_to_json
from secateurs_client import Client, field_violations, pb
from secateurs_client.cli import main as client_main
from secateurs_client.cli import summary

MESSAGES: list[tuple[dict[str, Any], str, str]] = [
    (dict(latency_ms=-1.0), "budget.latency_ms", "budget.latency_ms must be a positive number, got -1.0"),
    (dict(speedup=1.0), "budget.speedup", "budget.speedup must be greater than 1, got 1.0"),
    (dict(max_accuracy_drop=0.01), "budget.max_accuracy_drop",
     "budget.max_accuracy_drop limits a budget; give latency_ms, speedup, size_bytes, params or macs too"),
    (dict(speedup=2.0, percentile=42.0), "target.percentile",
     "target.percentile: must be one of 50, 90, 95, 99 (got 42)"),
    (dict(speedup=2.0, ratio=0.5), "pruning.ratio",
     "pruning.ratio: give a budget or pruning.ratio, not both (with a budget the search chooses the ratios)"),
]


@pytest.mark.parametrize(("kw", "field", "message"), MESSAGES, ids=[m[1] + ":" + m[2][:30] for m in MESSAGES])
def test_bad_budgets_name_the_field(fake_client: Client, kw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fake_client.create_job(fake_request(**{"ratio": None, **kw}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message
    assert [f for f, _ in field_violations(err.value)] == [field]


def test_budget_and_cache_dir_round_trip(tmp_path: Path) -> None:
    spec = CompressSpec(model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path,
                        budget=Budget(speedup=2.0, size_bytes=700_000, max_accuracy_drop=0.01, percentile=90.0),
                        target=TargetSpec(percentile=90.0), protocol=ProtocolSpec(min_samples=40),
                        cache_dir=tmp_path / "cache")
    again = spec_from_json(spec_to_json(spec), tmp_path)
    assert again == spec
    assert isinstance(again.budget, Budget) and isinstance(again.cache_dir, Path)


def test_budget_reaches_the_worker_with_the_server_cache(fake_server: Server, fake_client: Client) -> None:
    job = fake_client.create_job(fake_request(ratio=None, speedup=2.0, max_accuracy_drop=0.0, percentile=90.0))
    done = fake_client.wait(job.id, timeout=60)
    assert done.state == pb.SUCCEEDED, done.error
    assert done.request.budget.speedup == 2.0 and done.request.budget.HasField("max_accuracy_drop")
    report = json_format.MessageToDict(done.report)
    assert report["budget"] == {"speedup": 2.0, "max_accuracy_drop": 0.0, "percentile": 90.0}
    assert report["percentile"] == 90.0 and report["ratio"] is None
    assert report["cache_dir"] == str(fake_server.config.data_dir.resolve() / "cache")


def test_client_budget_flags(fake_server: Server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                      "1x3x32x32", "--speedup", "2.5", "--size-mb", "0.7", "--params", "1.5e5", "--macs", "2e7",
                      "--latency-ms", "1.5", "--max-accuracy-drop", "0.01", "--percentile", "95",
                      "--label", "kind=budget", "--out", str(tmp_path)])
    assert rc == 0
    job_id = capsys.readouterr().out.strip()
    with Client(fake_server.address) as client:
        budget = client.get_job(job_id).request.budget
    assert (budget.speedup, budget.size_bytes, budget.params, budget.macs, budget.latency_ms) == (
        2.5, 700_000, 150_000, 20_000_000, 1.5)
    assert budget.max_accuracy_drop == pytest.approx(0.01)
    assert client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                        "1x3x32x32", "--speedup", "0.5", "--out", str(tmp_path)]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_client_protocol_flags_set_fields_by_name_and_type(fake_server: Server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                        "1x3x32x32", "--ratio", "0.5", "--protocol", "window=12", "--protocol", "max_seconds=1.5",
                        "--out", str(tmp_path)]) == 0
    with Client(fake_server.address) as client:
        protocol = client.get_job(capsys.readouterr().out.strip()).request.target.protocol
    assert (protocol.window, protocol.max_seconds, protocol.min_samples) == (12, 1.5, 0)  # 0: the server's default
    assert client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                        "1x3x32x32", "--ratio", "0.5", "--protocol", "speed=3", "--out", str(tmp_path)]) == 2
    assert "expected one of warmup_runs" in capsys.readouterr().err


def test_summary_shows_the_budget_and_the_reason() -> None:
    report = {"budget": {"speedup": 50.0, "percentile": 50.0}, "budget_met": False, "budget_shortfall": 12.5,
              "target": {"percentile": 50.0}, "search": {"budget_met": False, "reason": "every group is at its floor"}}
    assert summary(report)[-1] == ("  budget       speedup >= 50x at p50: NOT MET, 13.5x off "
                                   "(every group is at its floor)")
    near = {**report, "budget_shortfall": 0.04}
    assert "NOT MET, short by 4% (every group" in summary(near)[-1]
    met = {**report, "budget": {"size_bytes": 7e5, "percentile": 50.0}, "budget_met": True, "budget_shortfall": 0.0,
           "search": {"budget_met": True, "reason": "budget met with 3% to spare"}}
    assert summary(met)[-1] == "  budget       ONNX bytes <= 700,000: MET (budget met with 3% to spare)"


# -- real searches: one server, so the second job finds the first one's measurements ----------

@pytest.fixture(scope="module")
def search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("data")))
    server.start()
    yield server
    server.stop(grace=3)


def _run(server: Server, tmp_path: Path, weights: Path, **budget: float) -> tuple[pb.Job, dict[str, Any]]:
    with Client(server.address, timeout=30) as client:
        blob = client.upload_blob(weights)
        # channels: what these jobs check; depth has its own tests (test_search.py)
        req = resnet20_request(ratio=None, weights_blob_id=blob.id, exports=["onnx"], protocol=QUICK_PROTOCOL,
                               depth="off", **budget)
        job = client.wait(client.create_job(req).id, timeout=300)
        assert job.state == pb.SUCCEEDED, job.error
        path = client.download_artifact(job.id, "report", tmp_path)
    return job, json.loads(path.read_text())


def test_budget_job_meets_a_size_budget(search_server: Server, resnet20_weights: Path, tmp_path: Path) -> None:
    job, report = _run(search_server, tmp_path, resnet20_weights, size_bytes=700_000)
    assert report["budget"] == {"size_bytes": 700_000, "percentile": 50.0}
    assert report["budget_met"] is True and report["budget_shortfall"] == 0
    assert report["size"]["compressed"]["onnx_bytes"] <= 700_000
    assert report["search"]["trace"] and report["search"]["groups"]
    assert job.report["budget_met"] is True  # the inline report says the same
    assert (search_server.config.data_dir / "cache" / "measurements.sqlite").exists()


def test_unreachable_budget_is_a_result_not_a_failure(search_server: Server, resnet20_weights: Path,
                                                      tmp_path: Path) -> None:
    shared = (search_server.config.data_dir / "cache" / "measurements.sqlite").exists()
    job, report = _run(search_server, tmp_path, resnet20_weights, speedup=50.0)
    assert report["budget_met"] is False and report["budget_shortfall"] > 0
    assert report["search"]["budget_met"] is False and report["search"]["reason"]
    assert report["search"]["trace"]
    if shared:  # the first job's measurements were reused
        assert report["search"]["cache"]["hits"] > 0
    (line,) = [line for line in summary(report) if line.lstrip().startswith("budget")]
    assert "NOT MET" in line and report["search"]["reason"] in line
