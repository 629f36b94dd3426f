"""SecateursCompressOperator: submit a compression job, defer while it runs, fetch its artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from google.protobuf import json_format
from secateurs_client import build_request, pb, report_metrics

from secateurs_airflow.hooks import SecateursHook
from secateurs_airflow.triggers import SecateursJobTrigger


class SecateursCompressOperator(BaseOperator):
    """Compress a model with a secateurs server.

    Uploads `weights`, creates the job, then (deferrable, the default) hands the wait to
    SecateursJobTrigger so no worker slot is held while the job runs. When the job has
    succeeded, downloads `artifacts` into `output_dir`/<job id>/ and returns (as XCom)
    {"job_id", "artifacts": {name: path}, "metrics": report_metrics(report)}. A job that fails
    or is cancelled fails the task with the server's reason.

    :param arch: architecture spec (`zoo:resnet20`, `torchvision:resnet50`, `module:pkg.mod:fn`)
    :param input_shape: "1x3x224x224" or a sequence of ints
    :param weights: path of the weights file (safetensors or a state dict); templated
    :param output_dir: where the artifacts go; templated
    :param ratio: one pruning ratio for every group; or give a budget:
    :param latency_ms, speedup, size_mb, max_accuracy_drop: budget limits
    :param epochs: > 0 turns on recovery (fine-tuning with distillation)
    :param arch_kwargs: constructor arguments of the architecture
    :param labels: job labels; templated
    :param request_json: a CreateJobRequest in protobuf JSON merged into the request, for every
        other field; templated
    :param require_budget_met: fail the task when the budget was not met (by default that is a
        result the report describes, not a failure)
    :param artifacts: artifact names to download
    :param secateurs_conn_id: the Airflow connection to the server (see SecateursHook)
    :param deferrable: wait in the triggerer (True) or in the worker (False)
    :param poll_interval: seconds between the trigger's GetJob calls
    """

    template_fields: Sequence[str] = ("weights", "output_dir", "labels", "request_json")
    ui_color = "#d6eadf"

    def __init__(
        self, *, arch: str, input_shape: str | Sequence[int], output_dir: str, weights: str | None = None,
        ratio: float | None = None, latency_ms: float | None = None, speedup: float | None = None,
        size_mb: float | None = None, max_accuracy_drop: float | None = None, epochs: int | None = None,
        arch_kwargs: Mapping[str, Any] | None = None, labels: Mapping[str, str] | None = None,
        request_json: str = "", require_budget_met: bool = False,
        artifacts: Sequence[str] = ("onnx", "report", "report_html"),
        secateurs_conn_id: str = SecateursHook.default_conn_name, deferrable: bool = True,
        poll_interval: float = 10.0, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arch, self.input_shape, self.weights, self.output_dir = arch, input_shape, weights, output_dir
        self.ratio, self.latency_ms, self.speedup, self.size_mb = ratio, latency_ms, speedup, size_mb
        self.max_accuracy_drop, self.epochs, self.arch_kwargs = max_accuracy_drop, epochs, dict(arch_kwargs or {})
        self.labels, self.request_json, self.require_budget_met = dict(labels or {}), request_json, require_budget_met
        self.artifacts, self.secateurs_conn_id = list(artifacts), secateurs_conn_id
        self.deferrable, self.poll_interval = deferrable, poll_interval
        self.job_id: str | None = None

    def _request(self, weights_blob_id: str) -> pb.CreateJobRequest:
        shape = self.input_shape
        if isinstance(shape, str):
            shape = [int(d) for d in shape.lower().split("x")]
        request = build_request(
            arch=self.arch, arch_kwargs=self.arch_kwargs, input_shape=shape, weights_blob_id=weights_blob_id,
            ratio=self.ratio, latency_ms=self.latency_ms, speedup=self.speedup,
            size_bytes=None if self.size_mb is None else int(self.size_mb * 1e6),
            max_accuracy_drop=self.max_accuracy_drop, epochs=self.epochs, labels=self.labels,
        )
        if self.request_json:
            request.MergeFrom(json_format.Parse(self.request_json, pb.CreateJobRequest()))
        return request

    def execute(self, context: Any) -> dict[str, Any]:
        hook = SecateursHook(self.secateurs_conn_id)
        weights_blob_id = hook.upload(self.weights) if self.weights else ""
        job = hook.submit(self._request(weights_blob_id))
        self.job_id = job.id
        self.log.info("secateurs job %s created", job.id)
        if self.deferrable:
            self.defer(trigger=SecateursJobTrigger(job.id, self.secateurs_conn_id, self.poll_interval),
                       method_name="execute_complete")
        job = hook.wait(job.id)
        return self._finish(hook, job.id, pb.JobState.Name(job.state),
                            {"reason": job.error.reason, "message": job.error.message})

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resumes the task when the trigger fires."""
        return self._finish(SecateursHook(self.secateurs_conn_id), event["job_id"], event["state"], event["error"])

    def _finish(self, hook: SecateursHook, job_id: str, state: str, error: Mapping[str, str]) -> dict[str, Any]:
        if state != "SUCCEEDED":
            raise AirflowException(f"secateurs job {job_id} ended {state}: {error.get('reason')}: "
                                   f"{error.get('message')}")
        names = list(dict.fromkeys([*self.artifacts, "report"]))  # the report gives the metrics
        paths = hook.download(job_id, names, Path(self.output_dir) / job_id)
        report = json.loads(Path(paths["report"]).read_text())
        metrics = report_metrics(report)
        self.log.info("secateurs job %s: %s", job_id, ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())))
        if self.require_budget_met and report.get("budget") is not None and not report.get("budget_met"):
            raise AirflowException(f"secateurs job {job_id} did not meet its budget: "
                                   f"{(report.get('search') or {}).get('reason', '')}")
        return {"job_id": job_id, "artifacts": paths, "metrics": metrics}

    def on_kill(self) -> None:
        """A task killed while it waits in the worker cancels its job."""
        if self.job_id is not None:
            SecateursHook(self.secateurs_conn_id).cancel(self.job_id)
