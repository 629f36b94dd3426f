"""The `compress_model` component: submit a job to a secateurs server, wait for it, and hand the
compressed ONNX model, the report's figures and the HTML report on as KFP artifacts.

    from secateurs_kfp import compress_model
    task = compress_model(server="secateurs.secateurs.svc:50051", arch="zoo:resnet20",
                          input_shape="1x3x32x32", weights=trained.outputs["model"], speedup=1.5)

The component is a lightweight Python component: KFP runs the function below in `base_image`
after installing `packages_to_install` (secateurs-client and what it needs: grpcio, protobuf).
`make_compress_component` builds it for another image or package source (a private index, a
wheel's URL, an image with the client already installed and no package to install).
"""

# No `from __future__ import annotations`: KFP reads the signature's types at definition time.
from typing import Callable, List, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

BASE_IMAGE = "python:3.11.13-slim-bookworm"
CLIENT_PACKAGE = "secateurs-client==0.1.0"


def _compress_model(
    server: str,
    arch: str,
    input_shape: str,
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    report_json: Output[Artifact],
    weights: Optional[Input[Model]] = None,
    arch_kwargs: Optional[dict] = None,
    ratio: Optional[float] = None,
    latency_ms: Optional[float] = None,
    speedup: Optional[float] = None,
    size_mb: Optional[float] = None,
    max_accuracy_drop: Optional[float] = None,
    epochs: int = 0,
    labels: Optional[dict] = None,
    request_json: str = "",
    tls: bool = False,
    wait_hours: float = 24.0,
) -> str:
    """Compress a model with a secateurs server; returns the job id.

    `arch_kwargs` are the architecture's constructor arguments (e.g. {"num_classes": 10}).
    Give one of `ratio` (one pruning ratio for every group) or a budget (`latency_ms`,
    `speedup`, `size_mb`; `max_accuracy_drop` with one of them). `epochs` > 0 turns on
    recovery (fine-tuning with distillation). `request_json` is a CreateJobRequest in protobuf JSON
    merged into the request, for every other field (e.g. `{"target": {"percentile": 90}}`).
    The bearer token is read from the environment variable SECATEURS_TOKEN (mount a Secret).
    A job that does not succeed fails the task with the server's reason.
    """
    # Runs inside the component's container: everything it uses is imported here.
    import json
    import os
    from pathlib import Path

    from google.protobuf import json_format
    from secateurs_client import Client, build_request, pb, report_metrics

    shape = [int(d) for d in input_shape.lower().split("x")]
    token = os.environ.get("SECATEURS_TOKEN") or None
    with Client(server, token=token, tls=tls, timeout=60, watch_timeout=wait_hours * 3600) as client:
        weights_id = client.upload_blob(weights.path).id if weights is not None else ""
        request = build_request(
            arch=arch, arch_kwargs=arch_kwargs, input_shape=shape, weights_blob_id=weights_id, ratio=ratio,
            latency_ms=latency_ms, speedup=speedup, size_bytes=None if size_mb is None else int(size_mb * 1e6),
            max_accuracy_drop=max_accuracy_drop, epochs=epochs or None,
            labels={str(k): str(v) for k, v in (labels or {}).items()},
        )
        if request_json:
            request.MergeFrom(json_format.Parse(request_json, pb.CreateJobRequest()))
        job = client.create_job(request)
        print(f"secateurs job {job.id} on {server}", flush=True)

        def show(event: pb.JobEvent) -> None:
            if event.kind in ("started", "finished") or event.state:
                print(f"  [{event.stage or 'job'}] {event.kind} {event.message}".rstrip(), flush=True)

        job = client.wait(job.id, on_event=show)
        if job.state != pb.SUCCEEDED:
            raise RuntimeError(f"secateurs job {job.id} ended {pb.JobState.Name(job.state)}: "
                               f"{job.error.reason}: {job.error.message}")
        for name, artifact in (("onnx", onnx_model), ("report", report_json), ("report_html", report)):
            Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
            client.download_artifact(job.id, name, artifact.path)
        sha256 = {a.name: a.sha256 for a in job.artifacts}

    figures = report_metrics(json.loads(Path(report_json.path).read_text()))
    for key, value in sorted(figures.items()):
        metrics.log_metric(key, value)
    onnx_model.metadata.update({"format": "onnx", "job_id": job.id, "server": server, "arch": arch,
                                "input_shape": input_shape, "sha256": sha256.get("onnx", ""),
                                "speedup": figures.get("speedup", 0.0)})
    report_json.metadata.update({"job_id": job.id, "sha256": sha256.get("report", "")})
    return job.id


def make_compress_component(*, base_image: str = BASE_IMAGE, packages_to_install: Optional[List[str]] = None,
                            pip_index_urls: Optional[List[str]] = None) -> Callable[..., dsl.PipelineTask]:
    """The component for another image or package source. `packages_to_install` defaults to
    [CLIENT_PACKAGE]; pass [] for an image that already has secateurs-client."""
    return dsl.component(
        _compress_model, base_image=base_image, pip_index_urls=pip_index_urls,
        packages_to_install=[CLIENT_PACKAGE] if packages_to_install is None else packages_to_install,
    )


compress_model = make_compress_component()
