"""A real Prometheus scrapes a real `secateurs serve` on loopback while a real small job runs;
what it stored, read back through its HTTP API, matches the job."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from service_helpers import resnet20_request, wait_for
from secateurs_client import Client, pb

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "secateurs-dashboard.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics_address(log: Path) -> str | None:
    match = re.search(r"metrics on http://(\S+)/metrics", log.read_text() if log.exists() else "")
    return match.group(1) if match else None


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as response:
            return json.loads(response.read())

    def value(self, promql: str) -> float | None:
        """The value of a query that selects one series; None while Prometheus has no such series."""
        result = self.query(promql)["data"]["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_for(self, expected: dict[str, float], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            try:
                seen = {q: self.value(q) for q in expected}
            except OSError:  # still starting
                seen = {}
            if seen == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"Prometheus has {seen}, expected {expected}")


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path) -> Callable[[str], PrometheusApi]:
    procs: list[subprocess.Popen] = []

    def start(target: str) -> PrometheusApi:
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n  - job_name: secateurs\n"
                          f"    static_configs:\n      - targets: ['{target}']\n")
        port = _free_port()
        log = open(tmp_path / "prometheus.log", "ab")
        procs.append(subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=log))
        log.close()
        return PrometheusApi(f"http://127.0.0.1:{port}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(15)


def test_prometheus_scrapes_job_stage_and_rpc_metrics_of_a_real_job(
        server_process: Any, prometheus: Callable[[str], PrometheusApi], resnet20_weights: Path,
        tmp_path: Path) -> None:
    server = server_process("--metrics-listen", "127.0.0.1:0")
    target = wait_for(lambda: _metrics_address(tmp_path / "server.log"), 30, "the metrics address in the log")
    api = prometheus(target)
    api.wait_for({'up{job="secateurs"}': 1.0}, timeout=30)

    out = tmp_path / "out"
    out.mkdir()
    with Client(server.address, timeout=60) as client:
        blob = client.upload_blob(resnet20_weights)
        with pytest.raises(grpc.RpcError):
            client.get_job("no-such-job")
        job = client.wait(client.create_job(resnet20_request(weights_blob_id=blob.id)).id, timeout=180)
        assert job.state == pb.SUCCEEDED, job.error
        report = json.loads(client.download_artifact(job.id, "report", out).read_text())
        page = client.download_artifact(job.id, "report_html", out)
    assert page.name == "report.html" and page.read_text().startswith("<!DOCTYPE html>")

    stages = report["stage_seconds"]
    api.wait_for({
        'secateurs_jobs_total{result="succeeded"}': 1.0,
        'secateurs_jobs_total{result="failed"}': 0.0,
        'secateurs_jobs_in_progress': 0.0,
        'grpc_server_handled_total{grpc_method="CreateJob",grpc_code="OK"}': 1.0,
        'grpc_server_handled_total{grpc_method="GetJob",grpc_code="NotFound"}': 1.0,
        'grpc_server_handled_total{grpc_method="UploadBlob",grpc_code="OK"}': 1.0,
        'secateurs_stage_duration_seconds_count{stage="export"}': 1.0,
        'secateurs_stage_duration_seconds_sum{stage="export"}': stages["export"],
        'sum(secateurs_stage_duration_seconds_count)': float(len(stages)),
        'secateurs_upload_bytes_total': float(resnet20_weights.stat().st_size),
        'secateurs_latency_measurements_total{runtime="onnxruntime-cpu"}': float(report["measurements"]["latency"]),
        'secateurs_job_speedup_count': 1.0,
    }, timeout=30)
    assert report["measurements"]["latency"] == 2  # no search: the baseline and the pruned model, once each
    assert api.value('grpc_server_handled_total{grpc_method="WatchJob",grpc_code="OK"}') >= 1
    # a job takes seconds here; its duration landed in a bucket of the seconds-to-hours histogram
    assert api.value('secateurs_job_duration_seconds_bucket{result="succeeded",le="3600.0"}') == 1.0

    # every query of the Grafana dashboard is valid PromQL for this Prometheus
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target_query in panel.get("targets", []):
            promql = (target_query["expr"].replace("$__rate_interval", "1m").replace("$__range", "5m")
                      .replace("$job", ".*").replace("$instance", ".*"))
            assert api.query(promql)["status"] == "success", promql
