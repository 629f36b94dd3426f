"""clients/airflow: a DAG with SecateursCompressOperator, run by Airflow's `dag.test()` (the
task defers; its SecateursJobTrigger, serialized and rebuilt as the triggerer would, polls a
real server until the job ends; the task resumes and fetches the artifacts), a downstream
task that receives the operator's XCom, and a task whose job fails on the server.

Airflow lives in its own venv (built once under the tests' cache dir: it pins much of what it
installs), with secateurs-client and secateurs-airflow from this checkout."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from secateurs.api.server import Server
from secateurs_client import Client, pb
from service_helpers import QUICK_PROTOCOL, cached_venv, save_zoo_weights

REPO = Path(__file__).resolve().parents[3]
PACKAGES = (REPO / "clients" / "python", REPO / "clients" / "airflow")

DAG = '''
import json
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task
from secateurs_airflow import SecateursCompressOperator

OUT = Path({out!r})

with DAG("secateurs_compress", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    compress = SecateursCompressOperator(
        task_id="compress", arch="zoo:resnet20", input_shape="1x3x32x32", weights={weights!r},
        output_dir=str(OUT / "artifacts"), ratio=0.5, arch_kwargs={{"width": 8}},
        labels={{"dag": "{{{{ dag.dag_id }}}}"}}, request_json={request_json!r}, poll_interval=0.5)

    @task
    def record(result: dict) -> None:
        (OUT / "xcom.json").write_text(json.dumps(result))

    record(compress.output)

    # A job the server accepts but that fails when it starts: the val data has no split folders.
    SecateursCompressOperator(
        task_id="compress_without_val_split", arch="zoo:resnet20", input_shape="1x3x32x32", weights={weights!r},
        output_dir=str(OUT / "artifacts"), ratio=0.5, arch_kwargs={{"width": 8}},
        request_json='{{"data": {{"val_uri": "empty.zip"}}}}', poll_interval=0.5)

if __name__ == "__main__":
    run = dag.test()
    print("DAG_RUN_STATE", run.state)
    for ti in run.get_task_instances():
        print("TASK_STATE", ti.task_id, ti.state)
'''


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    return cached_venv("airflow", *PACKAGES)


def test_deferrable_operator_runs_a_job_through_its_trigger(airflow_python: Path, make_server: Callable[..., Server],
                                                            tmp_path: Path) -> None:
    data_root = tmp_path / "datasets"
    data_root.mkdir()
    zipfile.ZipFile(data_root / "empty.zip", "w").writestr("README", "no split folders")
    server = make_server(token="airflow-test-token", data_root=data_root)
    home, out = tmp_path / "airflow", tmp_path / "out"
    (home / "dags").mkdir(parents=True)
    out.mkdir()
    weights = save_zoo_weights(tmp_path / "resnet20-w8.safetensors", width=8)
    request_json = json.dumps({"target": {"protocol": QUICK_PROTOCOL}})
    dag_file = home / "dags" / "secateurs_compress.py"
    dag_file.write_text(DAG.format(out=str(out), weights=str(weights), request_json=request_json))
    host, port = server.address.rsplit(":", 1)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False",
               AIRFLOW_CONN_SECATEURS_DEFAULT=json.dumps({"conn_type": "secateurs", "host": host, "port": int(port),
                                                          "password": "airflow-test-token"}))
    migrate = subprocess.run([str(airflow_python), "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    run = subprocess.run([str(airflow_python), str(dag_file)], capture_output=True, text=True, env=env, timeout=400)
    log = run.stdout + run.stderr
    states = dict(line.split()[1:3] for line in run.stdout.splitlines() if line.startswith("TASK_STATE"))
    assert run.returncode == 0 and states == {"compress": "success", "record": "success",
                                              "compress_without_val_split": "failed"}, log[-8000:]
    assert log.count("running trigger in line") == 2  # both tasks deferred, and their triggers ran
    # The failed job fails its task with the server's reason.
    assert "ended FAILED: invalid_data:" in log, log[-8000:]

    result = json.loads((out / "xcom.json").read_text())
    job_id = result["job_id"]
    with Client(server.address, token="airflow-test-token", timeout=30) as client:
        job = client.get_job(job_id)
    assert job.state == pb.SUCCEEDED and job.labels["dag"] == "secateurs_compress"  # templated labels
    assert set(result["artifacts"]) == {"onnx", "report", "report_html"}
    for name, path in result["artifacts"].items():
        assert Path(path).parent == out / "artifacts" / job_id and Path(path).stat().st_size > 0, name
    report = json.loads(Path(result["artifacts"]["report"]).read_text())
    assert report["job"]["id"] == job_id and report["model"]["kwargs"] == {"width": 8}
    assert result["metrics"]["speedup"] == pytest.approx(report["latency"]["speedup"])
