"""The headline figures of a job's report.json as flat numbers, for the metric stores of
pipeline systems (KFP Metrics artifacts, Airflow XCom, experiment trackers)."""

from __future__ import annotations

from typing import Any, Mapping


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """Latency at the target percentile, speedup, sizes, the budget verdict and quality, each as a
    float; a figure the report does not have (no budget, no labelled data) is left out.

    >>> report_metrics(report)["speedup"]
    1.69
    """
    metrics: dict[str, float] = {}
    latency, size = report.get("latency") or {}, report.get("size") or {}
    percentile = int((report.get("target") or {}).get("percentile", 50))
    for side in ("baseline", "compressed"):
        stats = latency.get(side) or {}
        if f"p{percentile}_ms" in stats:
            metrics[f"latency_p{percentile}_ms_{side}"] = float(stats[f"p{percentile}_ms"])
        for key in ("params", "macs", "onnx_bytes"):
            if (size.get(side) or {}).get(key) is not None:
                metrics[f"{key}_{side}"] = float(size[side][key])
    if latency.get("speedup") is not None:
        metrics["speedup"] = float(latency["speedup"])
    if report.get("budget") is not None:
        metrics["budget_met"] = 1.0 if report.get("budget_met") else 0.0
        metrics["budget_shortfall"] = float(report.get("budget_shortfall") or 0.0)
    quality = report.get("quality") or {}
    for side in ("before", "after"):
        for key in ("accuracy", "agreement"):
            value = (quality.get(side) or {}).get(key)
            if value is not None:
                metrics[f"{key}_{side}"] = float(value)
    seconds = (report.get("job") or {}).get("seconds")
    if seconds is not None:
        metrics["job_seconds"] = float(seconds)
    return metrics
