"""32 clients poll GetJob/ListJobs while a real job runs: no call fails."""

from __future__ import annotations

from service_helpers import load_benchmark

from secateurs_client import pb


def test_32_pollers_while_a_job_runs() -> None:
    bench = load_benchmark("concurrency")
    r = bench.measure_polling(32)
    print(f"\n{r['calls']} calls, p99 {r['p99_ms']:.1f} ms")
    assert r["errors"] == 0, r["first_error"]
    assert r["job_state"] == pb.SUCCEEDED
    assert r["calls"] > 1000
