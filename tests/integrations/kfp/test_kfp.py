"""clients/kfp: the sample pipeline compiles with the kfp SDK, and the compress_model component,
run by KFP's local runner (a subprocess in a fresh virtual environment, as in its container),
compresses a model on a real server and hands on the ONNX model, the metrics and the report.

kfp pins protobuf below 7 and the client's stubs need 7, so the SDK lives in its own venv
(built once under the tests' cache dir); the component installs secateurs-client from this
checkout into the venv KFP makes for it, the way a cluster installs it from an index."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from secateurs.api.server import Server
from secateurs_client import Client, pb
from service_helpers import QUICK_PROTOCOL, cached_venv, save_zoo_weights

REPO = Path(__file__).resolve().parents[3]
KFP_PACKAGE = REPO / "clients" / "kfp"

# Runs in the kfp venv: an importer and the component (installing the client from this
# checkout), as a pipeline executed by KFP's local runner. A fixed ratio rather than the sample
# pipeline's speedup budget: the same component path, without minutes of search on 2 cores.
RUN_LOCALLY = """
import sys
from kfp import dsl, local
from secateurs_kfp import make_compress_component

repo, server, weights, root, request_json = sys.argv[1:6]
local.init(runner=local.SubprocessRunner(use_venv=True), pipeline_root=root + "/outputs",
           workspace_root=root + "/workspace")
compress_model = make_compress_component(packages_to_install=[repo + "/clients/python"])

@dsl.pipeline(name="compress-test")
def pipeline(weights_uri: str, server: str, request_json: str) -> dsl.Model:
    weights = dsl.importer(artifact_uri=weights_uri, artifact_class=dsl.Model)
    task = compress_model(server=server, arch="zoo:resnet20", input_shape="1x3x32x32", weights=weights.output,
                          ratio=0.5, arch_kwargs={"width": 8}, labels={"pipeline": "compress-test"},
                          request_json=request_json)
    return task.outputs["onnx_model"]

result = pipeline(weights_uri=weights, server=server, request_json=request_json)
print("ONNX_MODEL", result.output.path)
"""


@pytest.fixture(scope="module")
def kfp_python() -> Path:
    return cached_venv("kfp", KFP_PACKAGE)


def test_sample_pipeline_compiles(kfp_python: Path, tmp_path: Path) -> None:
    package = tmp_path / "compress_pipeline.yaml"
    done = subprocess.run([str(kfp_python), "-m", "secateurs_kfp.pipeline", str(package)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(package.read_text())
    assert spec["pipelineInfo"]["name"] == "secateurs-compress"
    component = spec["components"]["comp-compress-model"]
    outputs = {name: a["artifactType"]["schemaTitle"]
               for name, a in component["outputDefinitions"]["artifacts"].items()}
    assert outputs == {"onnx_model": "system.Model", "metrics": "system.Metrics", "report": "system.HTML",
                       "report_json": "system.Artifact"}
    assert component["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"  # the job id
    inputs = component["inputDefinitions"]
    assert inputs["artifacts"]["weights"]["isOptional"] is True
    assert {"server", "arch", "input_shape", "speedup", "latency_ms", "size_mb", "ratio"} <= set(inputs["parameters"])
    tasks = spec["root"]["dag"]["tasks"]
    weights_from = tasks["compress-model"]["inputs"]["artifacts"]["weights"]["taskOutputArtifact"]
    assert weights_from == {"outputArtifactKey": "artifact", "producerTask": "importer"}
    (executor,) = [e for name, e in spec["deploymentSpec"]["executors"].items() if "compress-model" in name]
    install = " ".join(executor["container"]["command"])
    assert "'secateurs-client==0.1.0'" in install and executor["container"]["image"].startswith("python:3.11")


def test_component_compresses_on_a_real_server(kfp_python: Path, make_server: Callable[..., Server],
                                               tmp_path: Path) -> None:
    server = make_server()
    weights = save_zoo_weights(tmp_path / "resnet20-w8.safetensors", width=8)
    extra = json.dumps({"target": {"protocol": QUICK_PROTOCOL}})
    done = subprocess.run([str(kfp_python), "-c", RUN_LOCALLY, str(REPO), server.address, str(weights),
                           str(tmp_path / "kfp"), extra], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    onnx_path = Path(done.stdout.split("ONNX_MODEL ")[-1].split()[0])
    task_dir = onnx_path.parent
    executor_output: dict[str, Any] = json.loads((task_dir / "executor_output.json").read_text())
    artifacts = {name: a["artifacts"][0] for name, a in executor_output["artifacts"].items()}
    job_id = executor_output["parameterValues"]["Output"]

    # The job ran on the server, labelled by the pipeline, and its artifacts are what KFP holds.
    with Client(server.address, timeout=30) as client:
        job = client.get_job(job_id)
    assert job.state == pb.SUCCEEDED and job.labels["pipeline"] == "compress-test"
    served = {a.name: a.sha256 for a in job.artifacts}
    assert artifacts["onnx_model"]["metadata"]["sha256"] == served["onnx"]
    assert hashlib.sha256(onnx_path.read_bytes()).hexdigest() == served["onnx"]
    assert artifacts["onnx_model"]["metadata"]["job_id"] == job_id

    # The model runs; the report is the job's; the metrics are its headline figures.
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert output.shape == (1, 10)
    report = json.loads((task_dir / "report_json").read_text())
    assert report["job"]["id"] == job_id and report["pruning"]["ratio"] == 0.5
    assert report["model"]["kwargs"] == {"width": 8}  # arch_kwargs and request_json both reached the job
    assert report["protocol"]["min_samples"] == QUICK_PROTOCOL["min_samples"]
    metrics = artifacts["metrics"]["metadata"]
    assert metrics["speedup"] == pytest.approx(report["latency"]["speedup"])
    assert metrics["params_compressed"] < metrics["params_baseline"]
    html = (task_dir / "report").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
