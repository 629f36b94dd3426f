"""A 512 MiB upload streams through a server subprocess with bounded memory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_large_upload_has_bounded_server_memory() -> None:
    spec = importlib.util.spec_from_file_location("bench_upload", REPO / "benchmarks/upload.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure_upload(512)
    print(f"\nupload: {result['mb_per_s']:.0f} MB/s, server RSS +{result['rss_growth_mb']:.1f} MB")
    assert result["rss_growth_mb"] < 100
