"""32 clients poll GetJob/ListJobs while a real job runs: no call fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from secateurs_client import pb

REPO = Path(__file__).resolve().parents[2]


def test_32_pollers_while_a_job_runs() -> None:
    spec = importlib.util.spec_from_file_location("bench_concurrency", REPO / "benchmarks/concurrency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure_polling(32)
    print(f"\n{r['calls']} calls, p99 {r['p99_ms']:.1f} ms")
    assert r["errors"] == 0, r["first_error"]
    assert r["job_state"] == pb.SUCCEEDED
    assert r["calls"] > 1000
