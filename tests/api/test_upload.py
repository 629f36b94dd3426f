"""A 512 MiB upload streams through a server subprocess with bounded memory."""

from __future__ import annotations

from service_helpers import load_benchmark


def test_large_upload_has_bounded_server_memory() -> None:
    bench = load_benchmark("upload")
    result = bench.measure_upload(512)
    print(f"\nupload: {result['mb_per_s']:.0f} MB/s, server RSS +{result['rss_growth_mb']:.1f} MB")
    assert result["rss_growth_mb"] < 100
