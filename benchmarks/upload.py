"""Loopback upload throughput and server memory during a large upload.

Starts `python -m secateurs.api.server` in a subprocess on a temp data dir,
streams SIZE MiB of generated data through UploadBlob (1 MiB chunks), and prints
the throughput and how much the server's RSS grew (peak during the upload minus
the level after a warm-up upload). Goal: >= 200 MB/s, growth < 100 MB.

    python benchmarks/upload.py [--mib 512]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil

from secateurs_client import Client

CHUNK = 1 << 20


def _chunks(mib: int, seed: bytes) -> Iterator[bytes]:
    base = seed * (CHUNK // len(seed))
    for i in range(mib):  # every chunk differs, so nothing dedupes
        yield i.to_bytes(8, "little") + base[8:]


def _digest(mib: int, seed: bytes) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(mib, seed):
        h.update(chunk)
    return h.hexdigest()


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "secateurs.api.server", "--listen", "127.0.0.1:0",
                             "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in proc.stdout:
        m = re.search(rb"listening on (\S+)", line)
        if m:
            return proc, m.group(1).decode()
    raise RuntimeError("server did not start")


def measure_upload(mib: int = 512) -> dict[str, float]:
    """Upload `mib` MiB to a fresh server subprocess; return MB/s and RSS growth (MB)."""
    with tempfile.TemporaryDirectory(prefix="secateurs-bench-") as tmp:
        proc, address = start_server(Path(tmp))
        try:
            server = psutil.Process(proc.pid)
            with Client(address, timeout=60) as client:
                warm = os.urandom(4096)
                client.upload_chunks(lambda: _chunks(8, warm), sha256=_digest(8, warm), size_bytes=8 * CHUNK)
                baseline = server.memory_info().rss
                peak, stop = [baseline], threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        peak[0] = max(peak[0], server.memory_info().rss)
                        time.sleep(0.02)

                sampler = threading.Thread(target=sample, daemon=True)
                seed = os.urandom(4096)
                digest = _digest(mib, seed)
                sampler.start()
                start = time.perf_counter()
                blob = client.upload_chunks(lambda: _chunks(mib, seed), sha256=digest, size_bytes=mib * CHUNK)
                seconds = time.perf_counter() - start
                stop.set()
                sampler.join()
            assert blob.id == digest and blob.size_bytes == mib * CHUNK
            return {"mib": mib, "seconds": seconds, "mb_per_s": mib * CHUNK / 1e6 / seconds,
                    "rss_growth_mb": (peak[0] - baseline) / 1e6, "rss_baseline_mb": baseline / 1e6}
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    r = measure_upload(parser.parse_args().mib)
    print(f"upload {r['mib']} MiB in {r['seconds']:.2f} s: {r['mb_per_s']:.0f} MB/s "
          f"(goal >= 200); server RSS +{r['rss_growth_mb']:.1f} MB over {r['rss_baseline_mb']:.0f} MB "
          f"(goal < 100)")


if __name__ == "__main__":
    main()
