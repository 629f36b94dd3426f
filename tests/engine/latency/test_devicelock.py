"""One measurement at a time per data directory: measurement windows of two processes never
overlap, and compute in one process waits while another measures."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from secateurs.engine.latency import devicelock


def _measure_and_compute(directory: str, out: "mp.Queue", rounds: int) -> None:
    devicelock.configure(Path(directory))
    computed: list[tuple[float, float]] = []
    for _ in range(rounds):
        with devicelock.measuring():
            time.sleep(0.05)
        with devicelock.computing():
            start = time.time()
            time.sleep(0.02)
            computed.append((start, time.time()))
    out.put((devicelock.windows(), computed))


def test_two_processes_never_measure_at_once_nor_compute_while_the_other_measures(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_measure_and_compute, args=(str(tmp_path), queue, 15)) for _ in range(2)]
    for p in procs:
        p.start()
    (measured_a, computed_a), (measured_b, computed_b) = queue.get(timeout=120), queue.get(timeout=120)
    for p in procs:
        p.join(30)
    assert len(measured_a) == len(measured_b) == 15
    for mine, theirs in ((measured_a, measured_b + computed_b), (measured_b, measured_a + computed_a)):
        for start, end in mine:
            assert all(end <= s or e <= start for s, e in theirs), "a measurement overlapped the other process"


def test_nothing_waits_within_one_process(tmp_path: Path) -> None:
    devicelock.configure(tmp_path)
    try:
        with devicelock.measuring(), devicelock.computing():  # compute inside a measurement: no deadlock
            pass
        with devicelock.computing(), devicelock.computing():
            pass
    finally:
        devicelock.configure(None)
