"""The server under load: many clients polling and watching while jobs queue.

    .venv/bin/python benchmarks/load.py                 # 200 clients, 60 s, 10 queued jobs
    .venv/bin/python benchmarks/load.py --clients 50 --seconds 20

A real `secateurs serve` in its own process (the fake runner of the tests, so the jobs cost
the machine little and the RPCs are what is measured) gets 10 jobs; then N client threads,
each with its own channel, call GetJob, ListJobs and WatchJob in turn for the duration.
Printed: calls, errors and p50/p99 latency per RPC, the server's RSS (start, peak, end), and
whether every job ended. Client and server share the machine's cores, so the latencies
include the load generator's own contention.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from service_helpers import FAKE_RUNNER, fake_request, listening_address  # noqa: E402

from secateurs_client import Client, pb  # noqa: E402
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc  # noqa: E402

RPCS = ("GetJob", "ListJobs", "WatchJob")


def _client(address: str, jobs: list[str], until: float, results: dict[str, list], errors: dict[str, list],
            seed: int) -> None:
    rng = random.Random(seed)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.CompressionServiceStub(channel)
    while time.monotonic() < until:
        rpc = rng.choice(RPCS)
        start = time.perf_counter()
        try:
            if rpc == "GetJob":
                stub.GetJob(pb.GetJobRequest(job_id=rng.choice(jobs)), timeout=30)
            elif rpc == "ListJobs":
                stub.ListJobs(pb.ListJobsRequest(page_size=20), timeout=30)
            else:  # replay a job's events; live ones end with the job (at most 5 s here)
                for _ in stub.WatchJob(pb.WatchJobRequest(job_id=rng.choice(jobs)), timeout=5):
                    pass
        except grpc.RpcError as err:
            if not (rpc == "WatchJob" and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                errors[rpc].append(f"{err.code().name}: {err.details()}")
                continue
        results[rpc].append((time.perf_counter() - start) * 1000)
    channel.close()


def run(clients: int, seconds: float, queued: int) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "support"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "secateurs.cli", "serve", "--listen", "127.0.0.1:0", "--data-dir",
                                 str(Path(tmp) / "data"), "--runner", FAKE_RUNNER, "--allow-module", "service_fakes",
                                 "--no-metrics"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            address = listening_address(proc, 120)
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            server = psutil.Process(proc.pid)
            with Client(address, timeout=30) as client:
                jobs = [client.create_job(fake_request("steady")).id for _ in range(queued)]
            rss = [server.memory_info().rss]
            results: dict[str, list] = {r: [] for r in RPCS}
            errors: dict[str, list] = {r: [] for r in RPCS}
            until = time.monotonic() + seconds
            threads = [threading.Thread(target=_client, args=(address, jobs, until, results, errors, i), daemon=True)
                       for i in range(clients)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                rss.append(server.memory_info().rss)
                time.sleep(0.5)
            with Client(address, timeout=30) as client:
                states = [client.wait(j, timeout=300).state for j in jobs]
            rss.append(server.memory_info().rss)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{clients} clients for {seconds:.0f} s while {queued} jobs queued (fake runner), one server process")
    print("| RPC | calls | errors | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for rpc in RPCS:
        times = sorted(results[rpc])
        p = (lambda q: times[min(len(times) - 1, int(q * len(times)))]) if times else (lambda q: float("nan"))
        print(f"| {rpc} | {len(times):,} | {len(errors[rpc])} | {p(0.5):.1f} | {p(0.99):.1f} |")
    mib = [r / 2**20 for r in rss]
    print(f"server RSS: start {mib[0]:.0f} MiB, peak {max(mib):.0f} MiB, end {mib[-1]:.0f} MiB "
          f"(median {statistics.median(mib):.0f})")
    ended = sum(s in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED) for s in states)
    print(f"jobs: {ended}/{len(states)} ended, {sum(s == pb.SUCCEEDED for s in states)} succeeded")
    for rpc in RPCS:
        for message in sorted(set(errors[rpc]))[:5]:
            print(f"  {rpc} error: {message}")
    return 0 if not any(errors.values()) and ended == len(states) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    return run(args.clients, args.seconds, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
