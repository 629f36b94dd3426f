"""Hypothesis strategies for every RPC of both services, and the check every answer must pass.

Used by tests/api/test_fuzz.py (a few dozen examples per RPC) and benchmarks/fuzz.py (many).
Values are random and at the boundaries: huge and negative numbers, NaN and infinities, unicode,
unknown enum numbers, truncated and out-of-order streams. Whatever is sent, the answer is a
status other than INTERNAL (or UNKNOWN), a refusal of the request's fault names the field, and
the server is still serving afterwards.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

import grpc
from hypothesis import strategies as st

from secateurs_client import build_request, field_violations, pb

UINT32, UINT64 = 2**32 - 1, 2**64 - 1
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# statuses of a request at fault: each must name the field
FIELD_NAMED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)

text = st.text(max_size=80)
names = st.one_of(text, st.sampled_from(["", "zoo:resnet20", "zoo:resnet9000", "torchvision:resnet18",
                                         "torchvision:nope", "module:os:system", "module:service_fakes:FakeNet",
                                         "module:service_fakes:touch_marker", "x:y", ":", "zoo:"]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1.0, 1e308, 5e-324]))
u32 = st.one_of(st.integers(0, UINT32), st.sampled_from([0, 1, UINT32]))
u64 = st.one_of(st.integers(0, UINT64), st.sampled_from([0, 1, UINT64]))
sha = st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), text)
json_value = st.recursive(st.one_of(st.none(), st.booleans(), floats, st.integers(-10**12, 10**12), text),
                          lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=3)),
                          max_leaves=8)
enum_number = st.integers(-5, 50)  # JobState has 6 values; the rest are unknown to the server


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def _set(path: str) -> Callable[[pb.CreateJobRequest, Any], None]:
    """A setter for a request field given as a.b.c (maps and repeated fields are updated)."""
    *parents, leaf = path.split(".")

    def setter(req: pb.CreateJobRequest, value: Any) -> None:
        msg = req
        for name in parents:
            msg = getattr(msg, name)
        if isinstance(value, dict):
            getattr(msg, leaf).update(value)
        elif isinstance(value, list):
            getattr(msg, leaf).extend(value)
        else:
            setattr(msg, leaf, value)
    return setter


# Every field of CreateJobRequest with the values it is fuzzed with.
FIELDS: list[tuple[str, st.SearchStrategy]] = [
    ("request_id", text), ("labels", st.dictionaries(text, text, max_size=3)),
    ("input_shape", st.lists(u32, max_size=6)), ("exports", st.lists(st.sampled_from(["onnx", "pt2", "plan", "x"]),
                                                                   max_size=4)),
    ("model.arch", names), ("model.arch_kwargs", st.dictionaries(text, json_value, max_size=4)),
    ("model.weights_blob_id", sha),
    *[(f"budget.{n}", floats) for n in ("latency_ms", "speedup", "max_accuracy_drop")],
    *[(f"budget.{n}", u64) for n in ("size_bytes", "params", "macs")],
    ("target.runtime", st.one_of(text, st.sampled_from(["onnxruntime-cpu", "tensorrt", "torch-cpu"]))),
    ("target.threads", u32), ("target.batch", u32), ("target.percentile", floats),
    ("target.precision", st.sampled_from(["", "fp32", "fp16", "int4"])), ("target.probe", text),
    *[(f"target.protocol.{n}", u32) for n in ("warmup_runs", "window", "min_samples")],
    *[(f"target.protocol.{n}", floats) for n in ("warmup_seconds", "max_seconds", "tolerance")],
    *[(f"data.{n}", sha) for n in ("train_blob_id", "val_blob_id")],
    *[(f"data.{n}", st.one_of(text, st.sampled_from(["cifar10", "../x", "file:///etc", "s3://b/k"])))
      for n in ("train_uri", "val_uri")],
    ("data.preset", st.sampled_from(["", "cifar10", "imagenet", "x"])), ("data.val_split", text),
    ("data.calibration_samples", u32), ("data.evaluation_samples", u32),
    *[(f"recovery.{n}", u32) for n in ("epochs", "progressive_steps", "batch_size")],
    *[(f"recovery.{n}", floats) for n in ("lr", "distill_kl_weight", "distill_feature_weight",
                                         "distill_attention_weight")],
    ("recovery.optimizer", st.sampled_from(["", "sgd", "adamw", "lion"])),
    ("pruning.ratio", floats), ("pruning.group_ratios", st.dictionaries(text, floats, max_size=3)),
    ("pruning.importance", st.sampled_from(["", "l1", "taylor", "x"])), ("pruning.depth", st.sampled_from(
        ["", "auto", "only", "x"])), ("pruning.round_to", u32), ("pruning.min_channels", u32),
]


@st.composite
def create_job_requests(draw: Callable[[st.SearchStrategy], Any]) -> pb.CreateJobRequest:
    """A request the server would accept (a fake job), with a few fields set to fuzzed values, so
    every check of the validator is reached, not just the first."""
    req = build_request(arch="module:service_fakes:FakeNet", arch_kwargs={"fake": "ok"}, input_shape=(1, 3, 32, 32),
                        ratio=0.5, protocol={"warmup_runs": 1, "window": 2, "min_samples": 2, "max_seconds": 1})
    for path, values in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4)):
        _set(path)(req, draw(values))
    return req


job_ids = st.one_of(text, st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))


@st.composite
def upload_streams(draw: Callable[[st.SearchStrategy], Any]) -> list[pb.UploadBlobRequest]:
    """A header (or none, or two), chunks, in any order; often a true digest, sometimes truncated."""
    data = draw(st.binary(max_size=4096))
    digest = hashlib.sha256(data).hexdigest() if draw(st.booleans()) else draw(sha)
    size = len(data) + draw(st.sampled_from([0, 0, 1, -1])) if data else draw(u64)
    header = pb.UploadBlobRequest(header=pb.BlobHeader(sha256=digest, size_bytes=max(0, size), filename=draw(text)))
    cut = draw(st.integers(0, len(data)))
    chunks = [pb.UploadBlobRequest(chunk=data[i:i + 512]) for i in range(0, cut, 512)]
    messages = [header, *chunks]
    order = draw(st.sampled_from(["ok", "no header", "header last", "two headers", "shuffled"]))
    if order == "no header":
        messages = chunks
    elif order == "header last":
        messages = [*chunks, header]
    elif order == "two headers":
        messages = [header, *chunks[:1], header, *chunks[1:]]
    elif order == "shuffled":
        messages = draw(st.permutations(messages))
    return messages


def probe_protocols(draw: Callable[[st.SearchStrategy], Any]) -> pb.ProbeProtocol:
    return pb.ProbeProtocol(warmup_runs=draw(u32), warmup_seconds=draw(floats), window=draw(u32),
                            min_samples=draw(u32), max_seconds=draw(floats), tolerance=draw(floats),
                            interleave=draw(st.sampled_from(["window", "run", "", "x"])))


@st.composite
def measure_streams(draw: Callable[[st.SearchStrategy], Any]) -> list[pb.MeasureRequest]:
    data = draw(st.binary(max_size=2048))
    models = [pb.ProbeModel(sha256=hashlib.sha256(data).hexdigest() if draw(st.booleans()) else draw(sha),
                            size_bytes=draw(st.sampled_from([0, len(data), len(data) + 1, UINT64])),
                            input_shape=draw(st.lists(u32, max_size=6)), fresh_session=draw(st.booleans()))
              for _ in range(draw(st.integers(0, 9)))]
    header = pb.MeasureRequest(header=pb.MeasureHeader(
        runtime=draw(st.sampled_from(["", "onnxruntime-cpu", "tensorrt", "torch-cpu", "x"])),
        precision=draw(st.sampled_from(["", "fp32", "fp16", "x"])), threads=draw(u32),
        protocol=probe_protocols(draw), models=models, seed=draw(u32)))
    chunks = [pb.MeasureRequest(chunk=data[i:i + 512]) for i in range(0, draw(st.integers(0, len(data))), 512)]
    return draw(st.sampled_from([[header, *chunks], chunks, [*chunks, header], [header, header, *chunks]]))


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    """Make the call; OK or the status it ended with, after checking that status (see the module doc)."""
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
        assert code not in BAD, f"{code}: {err.details()}"
        if code in FIELD_NAMED:
            assert field_violations(err), f"{code} without a field: {err.details()}"
        return code
