"""Fuzzing, longer than the tests can afford: every RPC of both services, and the readers.

    .venv/bin/python benchmarks/fuzz.py                       # 2000 examples per RPC, 60 s per reader
    .venv/bin/python benchmarks/fuzz.py --examples 200 --reader-seconds 10

Part 1 runs the strategies of tests/support/fuzz_requests.py against a live server and a live
probe on loopback: for every request, a status other than INTERNAL, the field named where the
request is at fault, and both still serving. Part 2 mutates seed files (bit flips, truncation,
inserted and duplicated bytes) and feeds them to the model and data readers (safetensors, a torch
state dict, a zip ImageFolder, an ONNX model on the probe) for a bounded time each: every
failure must be one of the documented errors (secateurs.errors), and the process's memory stays
bounded. Printed: requests tried, outcomes by status, INTERNAL count, mutants per reader, errors
by kind, peak RSS.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import random
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

import grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_requests import (create_job_requests, enum_number, job_ids, measure_streams, outcome, text, u32,  # noqa: E402
                           u64, upload_streams)
from service_helpers import FAKE_MODULES, FAKE_RUNNER  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fuzz_rpcs(examples: int, tmp: Path) -> tuple[dict[str, collections.Counter], int]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from secateurs.api.server import Server, ServerConfig
    from secateurs.probe.server import ProbeConfig, ProbeServer
    from secateurs_client import pb
    from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

    server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp / "server", runner=FAKE_RUNNER,
                                 allow_modules=FAKE_MODULES, max_upload_bytes=1 << 20, max_queued_jobs=20,
                                 probes={"edge": "127.0.0.1:9"}, data_root=tmp))
    probe = ProbeServer(ProbeConfig(listen="127.0.0.1:0", store_dir=tmp / "probe", max_model_bytes=1 << 20))
    server.start()
    probe.start()
    channels = {"server": grpc.insecure_channel(server.address), "probe": grpc.insecure_channel(probe.address)}
    service, probe_stub = pb_grpc.CompressionServiceStub(channels["server"]), pb_grpc.LatencyProbeStub(channels["probe"])
    seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    internal = 0

    def check(name: str, call: Callable[[], Any], channel: str) -> None:
        nonlocal internal
        try:
            seen[name][outcome(call).name] += 1
        except AssertionError as exc:  # INTERNAL, or a refusal without its field
            internal += 1
            seen[name][f"BAD {exc}"[:80]] += 1
        reply = health_pb2_grpc.HealthStub(channels[channel]).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"{channel} stopped serving after {name}"

    def by_job(j: str, n: str, o: int) -> None:
        for name, call in (
                ("GetJob", lambda: service.GetJob(pb.GetJobRequest(job_id=j), timeout=10)),
                ("CancelJob", lambda: service.CancelJob(pb.CancelJobRequest(job_id=j), timeout=10)),
                ("WatchJob", lambda: service.WatchJob(pb.WatchJobRequest(job_id=j, after_sequence=o), timeout=10)),
                ("DownloadArtifact", lambda: service.DownloadArtifact(pb.DownloadArtifactRequest(
                    job_id=j, name=n, offset=o), timeout=10))):
            check(name, call, "server")

    many = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    cases = [
        ("CreateJob", given(create_job_requests())(lambda r: check("CreateJob", lambda: service.CreateJob(
            r, timeout=30), "server"))),
        ("UploadBlob", given(upload_streams())(lambda s: check("UploadBlob", lambda: service.UploadBlob(
            iter(s), timeout=30), "server"))),
        ("GetJob/CancelJob/WatchJob/DownloadArtifact", given(job_ids, text, u64)(by_job)),
        ("ListJobs", given(u32, text, enum_number, st.dictionaries(text, text, max_size=3))(
            lambda size, token, state, labels: check("ListJobs", lambda: service.ListJobs(pb.ListJobsRequest(
                page_size=size, page_token=token, state=state, labels=labels), timeout=10), "server"))),
        ("Describe", given(text, text, u32)(lambda r, p, t: check("Describe", lambda: probe_stub.Describe(
            pb.DescribeProbeRequest(runtime=r, precision=p, threads=t), timeout=10), "probe"))),
        ("Measure/BuildEngine", given(measure_streams(), st.booleans())(lambda s, b: check(
            "BuildEngine" if b else "Measure", lambda: (probe_stub.BuildEngine if b else probe_stub.Measure)(
                iter(s), timeout=30), "probe"))),
    ]
    for name, case in cases:
        start = time.perf_counter()
        many(case)()
        print(f"  {name}: {sum(sum(seen[k].values()) for k in seen if k in name)} calls in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    for channel in channels.values():
        channel.close()
    probe.stop(grace=1)
    server.stop(grace=2)
    return seen, internal


def _mutants(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(("flip", "truncate", "insert", "duplicate", "zero"))
        at = rng.randrange(max(1, len(data)))
        if kind == "flip" and data:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "duplicate":
            data[at:at] = data[at:at + rng.randint(1, 4096)]
        else:
            data[at:at + rng.randint(1, 256)] = b"\0" * len(data[at:at + rng.randint(1, 256)])
    return bytes(data)


def _seeds(tmp: Path) -> dict[str, bytes]:
    import torch
    from PIL import Image
    from safetensors.torch import save

    from secateurs.engine.export import export_onnx
    from secateurs.engine.intake.models import build_architecture

    torch.manual_seed(0)
    model = build_architecture("zoo:resnet20", {"width": 8}).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for split in ("train", "test"):
            for c in ("a", "b"):
                for i in range(4):
                    img = io.BytesIO()
                    Image.new("RGB", (32, 32), (i * 40, 10, 200)).save(img, "JPEG" if i % 2 else "PNG")
                    zf.writestr(f"{split}/{c}/{i}.{'jpg' if i % 2 else 'png'}", img.getvalue())
    export_onnx(model, torch.randn(1, 3, 32, 32), tmp / "seed.onnx")
    return {"safetensors": save(state), "torch state dict": buf.getvalue(), "zip ImageFolder": zbuf.getvalue(),
            "ONNX on the probe": (tmp / "seed.onnx").read_bytes()}


def fuzz_readers(seconds: float, tmp: Path) -> dict[str, collections.Counter]:
    from secateurs.engine.intake.data import load_dataset
    from secateurs.engine.spec import DataSpec
    from secateurs.engine.intake.models import apply_state_dict, build_architecture, read_weights
    from secateurs.errors import SecateursError
    from secateurs.probe.service import LatencyProbeServicer

    model = build_architecture("zoo:resnet20", {"width": 8})
    probe = LatencyProbeServicer(store_dir=tmp / "store", max_model_bytes=64 << 20)

    def weights(path: Path) -> None:
        loaded = read_weights(path)
        if isinstance(loaded, dict):
            apply_state_dict(model, loaded)

    def dataset(path: Path) -> None:
        for split in ("train", "test"):
            data = load_dataset(DataSpec(source="imagefolder", path=path, split=split))
            for i in range(len(data)):
                data[i]

    def onnx(path: Path) -> None:
        from secateurs.engine.latency.runtimes import RuntimeSettings

        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        probe._backend(RuntimeSettings(threads=1), sha, path, (1, 3, 32, 32), 0, fresh=True)

    readers = {"safetensors": weights, "torch state dict": weights, "zip ImageFolder": dataset,
               "ONNX on the probe": onnx}
    rng = random.Random(0)
    results: dict[str, collections.Counter] = {}
    for name, seed in _seeds(tmp).items():
        counts: collections.Counter = collections.Counter()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            path = tmp / f"mutant-{len(counts)}"
            path.write_bytes(_mutants(seed, rng))
            try:
                readers[name](path)
                counts["accepted"] += 1
            except SecateursError as exc:
                counts[f"{type(exc).__name__}"] += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is here to find
                counts[f"UNDOCUMENTED {type(exc).__name__}: {str(exc)[:60]}"] += 1
            finally:
                path.unlink(missing_ok=True)
        results[name] = counts
        print(f"  {name}: {sum(counts.values())} mutants, peak RSS {_peak_mib():.0f} MiB", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="per RPC group")
    parser.add_argument("--reader-seconds", type=float, default=60.0)
    args = parser.parse_args()
    os.environ.setdefault("SECATEURS_METRICS_LISTEN", "127.0.0.1:0")
    with tempfile.TemporaryDirectory() as tmp:
        print("RPCs:", flush=True)
        seen, internal = fuzz_rpcs(args.examples, Path(tmp))
        print("readers:", flush=True)
        readers = fuzz_readers(args.reader_seconds, Path(tmp))
    print("\n| RPC | requests | outcomes |\n|---|---|---|")
    for name, counts in sorted(seen.items()):
        print(f"| {name} | {sum(counts.values()):,} | {', '.join(f'{k} {v}' for k, v in counts.most_common())} |")
    print(f"\nrequests tried: {sum(sum(c.values()) for c in seen.values()):,}; INTERNAL (or a refusal without its "
          f"field): {internal}")
    print("\n| reader | mutants | outcomes |\n|---|---|---|")
    undocumented = 0
    for name, counts in readers.items():
        undocumented += sum(v for k, v in counts.items() if k.startswith("UNDOCUMENTED"))
        print(f"| {name} | {sum(counts.values()):,} | {', '.join(f'{k} {v}' for k, v in counts.most_common(6))} |")
    print(f"\nundocumented errors: {undocumented}; peak RSS of this process {_peak_mib():.0f} MiB")
    return 0 if internal == 0 and undocumented == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
