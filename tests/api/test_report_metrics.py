"""secateurs_client.report_metrics: a report's headline figures as flat floats."""

from __future__ import annotations

from secateurs_client import report_metrics


def test_figures_of_a_budget_job_with_labels() -> None:
    report = {
        "target": {"percentile": 90},
        "latency": {"baseline": {"p50_ms": 1.0, "p90_ms": 2.0}, "compressed": {"p50_ms": 0.5, "p90_ms": 1.0},
                    "speedup": 2.0},
        "size": {"baseline": {"params": 100, "macs": 1000, "onnx_bytes": 400},
                 "compressed": {"params": 50, "macs": 400, "onnx_bytes": 200}},
        "budget": {"speedup": 1.5, "percentile": 90}, "budget_met": True, "budget_shortfall": 0,
        "quality": {"before": {"accuracy": 0.9, "agreement": None}, "after": {"accuracy": 0.88, "agreement": 0.97}},
        "job": {"seconds": 12.5},
    }
    assert report_metrics(report) == {
        "latency_p90_ms_baseline": 2.0, "latency_p90_ms_compressed": 1.0, "speedup": 2.0,
        "params_baseline": 100.0, "macs_baseline": 1000.0, "onnx_bytes_baseline": 400.0,
        "params_compressed": 50.0, "macs_compressed": 400.0, "onnx_bytes_compressed": 200.0,
        "budget_met": 1.0, "budget_shortfall": 0.0,
        "accuracy_before": 0.9, "accuracy_after": 0.88, "agreement_after": 0.97, "job_seconds": 12.5,
    }


def test_what_a_report_lacks_is_left_out() -> None:
    assert report_metrics({"budget": None, "latency": {"speedup": 1.3}}) == {"speedup": 1.3}
    assert report_metrics({}) == {}
