"""deploy/: Prometheus accepts the scrape config and the alert rules, the rules fire as their
unit tests say, and the dashboard and the rules only name metrics the server exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from secateurs.metrics import ServiceMetrics

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "secateurs-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:secateurs|grpc_server)_[a-z_]+)")


def _promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_config_and_the_rules(promtool_bin: str) -> None:
    assert "SUCCESS" in _promtool(promtool_bin, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "4 rules found" in _promtool(promtool_bin, "check", "rules", str(PROMETHEUS / "alerts.yml"))


def test_alert_rules_fire_as_their_unit_tests_say(promtool_bin: str) -> None:
    assert "SUCCESS" in _promtool(promtool_bin, "test", "rules", str(PROMETHEUS / "alerts_test.yml"))


def _exported_names() -> set[str]:
    """Every series name the server can export (histogram and counter suffixes included)."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
                    "gauge": ("",)}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("jobs", "duration", "in progress", "error rate", "speedup"):
        assert topic in titles
    rules = (PROMETHEUS / "alerts.yml").read_text()
    used = {m for text in exprs + [rules] for m in METRIC_NAME.findall(text)}
    assert used - _exported_names() == set()
    assert {"secateurs_jobs_total", "secateurs_jobs_queued", "grpc_server_handled_total"} <= used
