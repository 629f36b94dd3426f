"""How long a job's worker process takes to be ready to run a job: spawned (a fresh interpreter
imports torch, ONNX and the engine) against forked from the scheduler's fork server (which imported
them once). Both sides in one run, alternated; the fork server's own start is timed apart.

    python benchmarks/worker_start.py [--jobs 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time


def ready(conn) -> None:  # type: ignore[no-untyped-def]
    """What every worker does before its first stage: the engine's entry point imported."""
    from secateurs.engine.pipeline import compress  # noqa: F401

    conn.send(True)
    conn.close()


def start_seconds(ctx: mp.context.BaseContext) -> float:
    recv, send = ctx.Pipe(duplex=False)
    started = time.perf_counter()
    proc = ctx.Process(target=ready, args=(send,))
    proc.start()
    send.close()
    recv.recv()
    proc.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    jobs = parser.parse_args().jobs
    from secateurs.jobs import scheduler

    scheduler.use_fork_server_for(scheduler.DEFAULT_RUNNER)  # the fork server a server of real jobs starts
    forked_ctx, spawned_ctx = scheduler.WORKER_CONTEXT, mp.get_context("spawn")
    first = start_seconds(forked_ctx)  # starts the fork server: it imports the engine once
    spawned, forked = [], []
    for _ in range(jobs):
        spawned.append(start_seconds(spawned_ctx))
        forked.append(start_seconds(forked_ctx))
    s, f = statistics.median(spawned), statistics.median(forked)
    print(f"fork server start (once per server process, with the first job): {first:.2f} s")
    print(f"worker ready, median of {jobs}: spawned {s:.2f} s, forked {f:.3f} s, {s / f:.0f}x")


if __name__ == "__main__":
    main()
