"""32 clients polling GetJob and ListJobs while a real job runs: errors and RPC latency.

Starts a server subprocess (temp data dir), queues a ResNet-20 job, and has each
client thread (its own channel) alternate GetJob and ListJobs until the job ends.
Prints the number of calls, errors and the p50/p99 latency.

    python benchmarks/concurrency.py [--clients 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upload import start_server  # noqa: E402

from secateurs_client import TERMINAL, Client, build_request  # noqa: E402

QUICK_PROTOCOL = dict(warmup_runs=3, warmup_seconds=0.05, window=20, min_samples=40, max_seconds=2.0)


def measure_polling(clients: int = 32, max_seconds: float = 120.0, pause: float = 0.0,
                    **request: Any) -> dict[str, float]:
    """`pause`: seconds each client waits between its calls (0: as fast as the server answers);
    `request`: more fields of the job's request."""
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        proc, address = start_server(Path(tmp))
        try:
            with Client(address) as owner:
                job = owner.create_job(build_request(arch="zoo:resnet20", input_shape=(1, 3, 32, 32), ratio=0.5,
                                                     protocol=QUICK_PROTOCOL, **request))
                latencies: list[float] = []
                errors: list[str] = []
                done = threading.Event()
                lock = threading.Lock()

                def poll() -> None:
                    mine: list[float] = []
                    with Client(address, timeout=10) as c:
                        n = 0
                        while not done.is_set():
                            start = time.perf_counter()
                            try:
                                if n % 2:
                                    c.list_jobs_page(page_size=20)
                                else:
                                    c.get_job(job.id)
                            except grpc.RpcError as err:
                                with lock:
                                    errors.append(f"{err.code().name}: {err.details()}")
                            mine.append(time.perf_counter() - start)
                            n += 1
                            done.wait(pause)
                    with lock:
                        latencies.extend(mine)

                threads = [threading.Thread(target=poll) for _ in range(clients)]
                for t in threads:
                    t.start()
                start = time.monotonic()
                final = owner.wait(job.id, timeout=max_seconds)
                seconds = time.monotonic() - start
                done.set()
                for t in threads:
                    t.join()
            assert final.state in TERMINAL
            q = statistics.quantiles(latencies, n=100)
            return {"clients": clients, "calls": len(latencies), "errors": len(errors),
                    "first_error": errors[0] if errors else "", "seconds": seconds,
                    "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "max_ms": max(latencies) * 1e3,
                    "job_state": final.state}
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    r = measure_polling(parser.parse_args().clients)
    print(f"{r['clients']} clients, {r['calls']} calls in {r['seconds']:.1f} s while a job ran: "
          f"{r['errors']} errors; latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
          f"max {r['max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
