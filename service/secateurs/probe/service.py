"""LatencyProbe: Describe the device, Measure ONNX models on it.

Protobuf in, the engine's latency protocol, protobuf out; errors are secateurs.errors,
mapped to status codes by rpc/errors.py. One measurement runs at a time (a lock), since
two on one device would disturb each other. Uploaded models stream to files in the
probe's own directory (one chunk in memory at a time; at most --max-model-bytes per
request) and are kept there by digest (bounded by bytes, least recently used first
out); so are a few opened backends, so a job's baseline is sent and loaded (for
TensorRT: built) once, not once per candidate. A model marked fresh_session is
measured in a session opened for that measurement, never one the probe kept.

Nothing here imports torch: a probe needs onnxruntime, and TensorRT for "tensorrt".
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import grpc

from secateurs import __version__
from secateurs.engine.latency.fingerprint import device_fingerprint
from secateurs.engine.latency.protocol import measure_interleaved
from secateurs.engine.latency.runtimes import (ONNX_RUNTIMES, TORCH_RUNTIMES, RuntimeSettings, check_settings,
                                               open_backend, provider_of, require, runtime_statuses)
from secateurs.probe.wire import protocol_from_pb, stats_to_pb, to_struct
from secateurs.engine.spec import validate_protocol
from secateurs.errors import BlobNotFound, Cancelled, InvalidRequest, ResourceExhausted, SecateursError
from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

MAX_MODELS = 8
CHUNK_BYTES = 1 << 20
MAX_INPUT_ELEMENTS = 1 << 26
KEPT_BACKENDS = 4
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TORCH_REASON = "torch runtimes measure in the service's process; a probe measures ONNX models"


class _ModelStore:
    """ONNX files by sha256 in `root`, at most `max_bytes` in all; the least recently used leave first."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.iterdir():  # left by an earlier run: not worth trusting
            stale.unlink(missing_ok=True)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> Path | None:
        with self._lock:
            if sha256 not in self._sizes:
                return None
            self._sizes.move_to_end(sha256)
            return self.root / sha256

    def receive(self, sha256: str, size: int, chunks: Iterator[bytes], where: str) -> Path:
        """Stream `size` bytes from `chunks` to a file, check the digest, keep it; returns its path."""
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        tmp = Path(tmp_name)
        digest, got = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                while got < size:
                    chunk = next(chunks, None)
                    if chunk is None:
                        raise InvalidRequest(f"{where}: the stream ended after {got} of {size} bytes",
                                             field=f"{where}.size_bytes")
                    got += len(chunk)
                    if got > size:
                        raise InvalidRequest(f"{where}: chunks do not end at the model's size_bytes "
                                             f"({got} > {size})", field=f"{where}.size_bytes")
                    digest.update(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != sha256:
                raise InvalidRequest(f"{where}: the bytes do not hash to the sha256 given", field=f"{where}.sha256")
            with self._lock:
                os.replace(tmp, self.root / sha256)
                self._sizes[sha256] = size
                self._sizes.move_to_end(sha256)
                self._evict()
            return self.root / sha256
        finally:
            tmp.unlink(missing_ok=True)

    def _evict(self) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            old, _ = self._sizes.popitem(last=False)
            (self.root / old).unlink(missing_ok=True)


class LatencyProbeServicer(pb_grpc.LatencyProbeServicer):
    def __init__(self, *, store_dir: Path, max_model_bytes: int = 2 << 30, max_store_bytes: int = 8 << 30) -> None:
        """store_dir: where uploaded models are kept. max_model_bytes: the most one request may send,
        all its models together. max_store_bytes: the most kept on disk."""
        self._store = _ModelStore(store_dir, max(max_store_bytes, max_model_bytes))
        self._backends: OrderedDict[tuple, Any] = OrderedDict()
        self._measuring = threading.Lock()
        self.max_model_bytes = max_model_bytes
        self.models_measured = 0

    def Describe(self, request: pb.DescribeProbeRequest, context: grpc.ServicerContext) -> pb.ProbeDescription:
        settings = _settings(request.runtime or "onnxruntime-cpu", request.precision, request.threads)
        statuses = [pb.RuntimeStatus(name=n, available=ok, reason=why) for n, ok, why in runtime_statuses(ONNX_RUNTIMES)]
        statuses += [pb.RuntimeStatus(name=n, available=False, reason=_TORCH_REASON) for n in TORCH_RUNTIMES]
        return pb.ProbeDescription(fingerprint=to_struct(_fingerprint(settings)), runtimes=statuses,
                                   version=__version__, models_measured=self.models_measured)

    def Measure(self, request_iterator: Iterator[pb.MeasureRequest],
                context: grpc.ServicerContext) -> pb.MeasureResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest("the first message must carry the header", field="header")
        header = first.header
        settings = _settings(header.runtime, header.precision, header.threads)
        protocol = _protocol(header.protocol)
        shapes = _check_models(header, self.max_model_bytes)
        models = self._receive(header, request_iterator)
        require(settings.runtime)  # FAILED_PRECONDITION with the reason, before anything runs

        def should_stop() -> None:
            if not context.is_active():
                raise Cancelled("the caller went away")

        with self._measuring:
            backends = [self._backend(settings, m.sha256, path, shape, header.seed, fresh=m.fresh_session)
                        for m, path, shape in zip(header.models, models, shapes)]
            stats = measure_interleaved(backends, protocol, should_stop)
            self.models_measured += len(backends)
        return pb.MeasureResponse(stats=[stats_to_pb(s) for s in stats], fingerprint=to_struct(_fingerprint(settings)))

    def BuildEngine(self, request_iterator: Iterator[pb.MeasureRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.EngineChunk]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest("the first message must carry the header", field="header")
        header = first.header
        settings = _settings(header.runtime, header.precision, header.threads)
        if settings.runtime != "tensorrt":
            raise InvalidRequest(f"runtime: engines are built for tensorrt, not {settings.runtime}", field="runtime")
        shapes = _check_models(header, self.max_model_bytes)
        data = self._receive(header, request_iterator)[0].read_bytes()  # at most --max-model-bytes
        require("tensorrt")
        from secateurs.engine.latency.tensorrt_backend import build_engine, check_engine

        with self._measuring:  # a build loads the GPU as much as a measurement does
            build = build_engine(data, shapes[0], precision=settings.precision)
            info = check_engine(build, data, shapes[0], seed=header.seed)
        yield pb.EngineChunk(info=to_struct({**info, "size_bytes": len(build.plan)}))
        for i in range(0, len(build.plan), CHUNK_BYTES):
            yield pb.EngineChunk(chunk=build.plan[i:i + CHUNK_BYTES])

    def _receive(self, header: pb.MeasureHeader, request_iterator: Iterator[pb.MeasureRequest]) -> list[Path]:
        """Every model's file: streamed to disk for those sent, from the store for the others."""
        chunks = _chunks(request_iterator)
        models = []
        for i, m in enumerate(header.models):
            if m.size_bytes == 0:
                path = self._store.get(m.sha256)
                if path is None:
                    raise BlobNotFound(f"model {m.sha256} is not held by this probe; send its bytes")
                models.append(path)
            else:
                models.append(self._store.receive(m.sha256, m.size_bytes, chunks, f"models[{i}]"))
        if next(chunks, None) is not None:
            raise InvalidRequest("more bytes were sent than the models' size_bytes add up to", field="models")
        return models

    def _backend(self, settings: RuntimeSettings, sha256: str, path: Path, shape: tuple[int, ...], seed: int, *,
                 fresh: bool = False) -> Any:
        key = (settings, sha256, shape, seed)
        backend = None if fresh else self._backends.get(key)
        if backend is None:
            try:
                backend = open_backend(settings, shape, onnx=path, seed=seed)
                backend.samples(1)  # a shape the model does not take fails here, not mid-measurement
            except SecateursError:
                raise
            except Exception as exc:  # noqa: BLE001 - the runtime's own words: a bad file, a wrong shape
                raise InvalidRequest(f"{settings.runtime} cannot load the model or run it at input_shape "
                                     f"{list(shape)}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:300] if str(exc) else ''}", field="models") from exc
            if fresh:  # measured once in its own session, and not kept
                return backend
            self._backends[key] = backend
            while len(self._backends) > KEPT_BACKENDS:
                self._backends.popitem(last=False)
        self._backends.move_to_end(key)
        return backend


def _chunks(request_iterator: Iterator[pb.MeasureRequest]) -> Iterator[bytes]:
    for msg in request_iterator:
        if msg.WhichOneof("part") != "chunk":
            raise InvalidRequest("only the first message may carry a header", field="header")
        yield msg.chunk


def _settings(runtime: str, precision: str, threads: int) -> RuntimeSettings:
    if runtime in TORCH_RUNTIMES:
        raise InvalidRequest(f"runtime {runtime}: {_TORCH_REASON}", field="runtime")
    settings = RuntimeSettings(runtime=runtime, precision=precision or "fp32", threads=threads or 2)
    check_settings(settings)
    return settings


def _fingerprint(settings: RuntimeSettings) -> dict[str, Any]:
    return device_fingerprint(runtime=settings.runtime, provider=provider_of(settings.runtime),
                              threads=settings.threads, precision=settings.precision)


def _protocol(p: pb.ProbeProtocol) -> Any:
    protocol = protocol_from_pb(p)
    validate_protocol(protocol)  # the engine's bounds, so no caller holds the measurement lock for long
    return protocol


def _check_models(header: pb.MeasureHeader, max_bytes: int) -> list[tuple[int, ...]]:
    if not 1 <= len(header.models) <= MAX_MODELS:
        raise InvalidRequest(f"models: give 1 to {MAX_MODELS} (got {len(header.models)})", field="models")
    shapes = []
    for i, m in enumerate(header.models):
        if not _SHA256.match(m.sha256):
            raise InvalidRequest(f"models[{i}].sha256: 64 lowercase hex digits", field=f"models[{i}].sha256")
        shape = tuple(m.input_shape)
        if not 2 <= len(shape) <= 5 or any(d < 1 for d in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise InvalidRequest(f"models[{i}].input_shape: 2 to 5 dimensions, each at least 1, at most "
                                 f"{MAX_INPUT_ELEMENTS} elements (got {list(shape)})", field=f"models[{i}].input_shape")
        shapes.append(shape)
    total = sum(m.size_bytes for m in header.models)
    if total > max_bytes:
        raise ResourceExhausted(f"models: {total} bytes in all is over this probe's --max-model-bytes ({max_bytes})",
                                field="models")
    return shapes
