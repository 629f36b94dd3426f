"""32 clients poll GetJob/ListJobs while a real job runs: no call fails."""

from __future__ import annotations

from service_helpers import load_benchmark

from secateurs_client import pb


def test_32_pollers_while_a_job_runs() -> None:
    bench = load_benchmark("concurrency")
    # Each client polls five times a second (a pipeline polls every few seconds) on a width-8 ResNet-20's
    # job: 14 s here. Polling without pause starves the job of the cores (40 s); the benchmark measures that.
    r = bench.measure_polling(32, pause=0.2, arch_kwargs={"width": 8}, exports=("onnx",))
    print(f"\n{r['calls']} calls, p99 {r['p99_ms']:.1f} ms")
    assert r["errors"] == 0, r["first_error"]
    assert r["job_state"] == pb.SUCCEEDED
    assert r["calls"] > 1000
