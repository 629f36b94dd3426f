"""A LatencyTarget on a remote probe (`secateurs probe` on the device, proto LatencyProbe).

Models travel as ONNX bytes, ~1 MiB a chunk, named by sha256; the probe keeps recent
ones, so the baseline crosses the network once per job, not once per candidate. When the
probe has forgotten a model (it restarted, or evicted it), it answers NOT_FOUND and the
bytes are sent again. A probe that cannot be reached is retried a few times with a
short backoff; then the job fails with ProbeUnavailable, naming the address and the
gRPC status. Cancelling a job cancels the call in flight.

Credentials (the probe's --token, TLS) come from the environment of the process that
measures, so they are never stored with a job: SECATEURS_PROBE_TOKEN,
SECATEURS_PROBE_TLS_CA, SECATEURS_PROBE_TLS_CERT, SECATEURS_PROBE_TLS_KEY. A probe off
this machine is reached over TLS only, unless SECATEURS_PROBE_PLAINTEXT=1 says the
operator accepts sending the token in clear text.

The measurement cache keys on who the probe is configured to be (its name and address
in the server's list, and the runtime settings), never on the fingerprint it reports:
a probe cannot write figures under another device's key by describing itself falsely.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import grpc

from secateurs.addresses import is_loopback, split_host_port
from secateurs.engine.latency.fingerprint import cache_identity
from secateurs.engine.latency.protocol import LatencyStats, count_measured
from secateurs.engine.latency.runtimes import TORCH_RUNTIMES, RuntimeSettings
from secateurs.engine.latency.target import LatencyTarget, settings_of
from secateurs.engine.latency.target import open_target as open_local_target
from secateurs.engine.spec import ProtocolSpec, TargetSpec
from secateurs.errors import BackendUnavailable, InvalidRequest, PermissionDenied, ProbeUnavailable
from secateurs.probe.wire import from_struct, protocol_to_pb, stats_from_pb
from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

CHUNK_BYTES = 1 << 20
ATTEMPTS = 3  # per measurement, on UNAVAILABLE or a deadline
BACKOFF_SECONDS = (1.0, 3.0)
_ENV = {"token": "SECATEURS_PROBE_TOKEN", "tls_ca": "SECATEURS_PROBE_TLS_CA",
        "tls_cert": "SECATEURS_PROBE_TLS_CERT", "tls_key": "SECATEURS_PROBE_TLS_KEY"}
PLAINTEXT_ENV = "SECATEURS_PROBE_PLAINTEXT"


@dataclass(frozen=True, kw_only=True)
class ProbeCredentials:
    """How to reach a probe started with --token and/or --tls-cert (and --tls-client-ca)."""

    token: str | None = None
    tls_ca: Path | None = None  # CA that signed the probe's certificate; set: TLS
    tls_cert: Path | None = None  # client certificate, for a probe requiring mutual TLS
    tls_key: Path | None = None
    plaintext: bool = False  # reach a probe off this machine without TLS (the operator's explicit choice)

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> ProbeCredentials:
        env = os.environ if env is None else env
        paths = {k: Path(env[v]) if env.get(v) else None for k, v in _ENV.items() if k != "token"}
        return cls(token=env.get(_ENV["token"]) or None, plaintext=env.get(PLAINTEXT_ENV) == "1", **paths)

    def to_environ(self) -> dict[str, str]:
        """The variables `from_environ` reads (for a worker process)."""
        out = {_ENV[k]: str(v) for k, v in vars(self).items() if k in _ENV and v is not None}
        if self.plaintext:
            out[PLAINTEXT_ENV] = "1"
        return out

    def channel(self, address: str) -> grpc.Channel:
        """A channel to the probe; plain text only to this machine or when `plaintext` allows it."""
        if not (self.tls_ca or self.tls_cert) and not self.plaintext:
            try:
                host, _ = split_host_port(address)
            except ValueError:
                raise InvalidRequest(f"probe address must be host:port, got {address!r}", field="target.probe") from None
            if not is_loopback(host):
                raise PermissionDenied(
                    f"the probe at {address} is off this machine and no probe TLS is configured: its token would "
                    f"travel in clear text (give the probe CA, SECATEURS_PROBE_TLS_CA / --probe-tls-ca, or allow "
                    f"plain text with SECATEURS_PROBE_PLAINTEXT=1 / --probe-plaintext)", field="target.probe")
        if self.tls_ca or self.tls_cert:
            key = self.tls_key.read_bytes() if self.tls_key else None
            chain = self.tls_cert.read_bytes() if self.tls_cert else None
            creds = grpc.ssl_channel_credentials(self.tls_ca.read_bytes() if self.tls_ca else None, key, chain)
            return grpc.secure_channel(address, creds)
        return grpc.insecure_channel(address)


@dataclass(frozen=True)
class RemoteModel:
    """A model to measure on the probe: its ONNX bytes, named by their digest. `fresh`: measure it
    in a session the probe opens for this measurement, not one it kept."""

    sha256: str
    data: bytes
    input_shape: tuple[int, ...]
    fresh: bool = False


class ProbeTarget:
    """Every measurement on the probe at `address`; see the module docstring."""

    def __init__(self, address: str, settings: RuntimeSettings, *, seed: int = 0,
                 credentials: ProbeCredentials | None = None, connect_timeout: float = 10.0,
                 name: str | None = None) -> None:
        """name: what the server's probe list calls it (None from the command line)."""
        if settings.runtime in TORCH_RUNTIMES:
            raise InvalidRequest(f"{settings.runtime} measures in the service's process; a probe measures "
                                 f"ONNX models (onnxruntime-cpu, onnxruntime-cuda, tensorrt)", field="target.runtime")
        self.address, self.settings, self.seed = address, settings, seed
        self._credentials = credentials or ProbeCredentials()
        self._metadata = (("authorization", f"Bearer {self._credentials.token}"),) if self._credentials.token else ()
        self._channel = self._credentials.channel(address)
        self._stub = pb_grpc.LatencyProbeStub(self._channel)
        self._held: set[str] = set()  # digests the probe acknowledged holding
        description = self._retrying(lambda: self._stub.Describe(
            pb.DescribeProbeRequest(runtime=settings.runtime, precision=settings.precision, threads=settings.threads),
            timeout=connect_timeout, metadata=self._metadata), "describe")
        status = {r.name: r for r in description.runtimes}.get(settings.runtime)
        if status is None or not status.available:
            reason = status.reason if status is not None else "the probe does not know it"
            raise BackendUnavailable(f"runtime {settings.runtime} is unavailable on the probe at {address}: {reason}")
        self.fingerprint: dict[str, Any] = from_struct(description.fingerprint)  # as reported: for the report
        self.cache_id = cache_identity("probe", name, address, settings.runtime, settings.threads, settings.precision)
        self.where: dict[str, Any] = {"kind": "probe", "address": address, "name": name,
                                      "probe_version": description.version}

    def load(self, input_shape: tuple[int, ...], *, onnx: Path | bytes | None = None, module: Any = None,
             fresh: bool = False) -> RemoteModel:
        if onnx is None:
            raise BackendUnavailable(f"{self.settings.runtime} on a probe measures an ONNX model; none was given")
        data = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
        return RemoteModel(hashlib.sha256(data).hexdigest(), data, tuple(input_shape), fresh)

    def measure(self, models: list[RemoteModel], protocol: ProtocolSpec,
                should_stop: Callable[[], None] | None = None) -> list[LatencyStats]:
        response = self._retrying(lambda: self._measure_once(models, protocol, should_stop), "measure")
        self._held.update(m.sha256 for m in models)
        count_measured(len(models))
        return [stats_from_pb(s) for s in response.stats]

    def build_engine(self, onnx: Path | bytes, input_shape: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
        """A TensorRT engine built on the probe's GPU from `onnx`, and what the probe says of it
        (TensorRT version, GPU, build log, parity against ONNX Runtime there)."""
        model = self.load(input_shape, onnx=onnx)
        header = pb.MeasureHeader(runtime="tensorrt", precision=self.settings.precision, threads=self.settings.threads,
                                  protocol=protocol_to_pb(ProtocolSpec()), seed=self.seed,
                                  models=[pb.ProbeModel(sha256=model.sha256, size_bytes=len(model.data),
                                                        input_shape=model.input_shape)])

        def requests() -> Iterator[pb.MeasureRequest]:
            yield pb.MeasureRequest(header=header)
            for i in range(0, len(model.data), CHUNK_BYTES):
                yield pb.MeasureRequest(chunk=model.data[i:i + CHUNK_BYTES])

        def attempt() -> tuple[bytes, dict[str, Any]]:
            info: dict[str, Any] | None = None
            plan = bytearray()
            for msg in self._stub.BuildEngine(requests(), timeout=1800, metadata=self._metadata):
                if msg.WhichOneof("part") == "info":
                    info = from_struct(msg.info)
                else:
                    plan += msg.chunk
            if info is None or len(plan) != info.get("size_bytes"):
                raise ProbeUnavailable(f"the engine from the probe at {self.address} arrived incomplete")
            return bytes(plan), info

        return self._retrying(attempt, "build the TensorRT engine")

    def close(self) -> None:
        self._channel.close()

    def _measure_once(self, models: list[RemoteModel], protocol: ProtocolSpec,
                      should_stop: Callable[[], None] | None) -> pb.MeasureResponse:
        try:
            return self._call_measure(models, protocol, should_stop)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self._held.clear()  # the probe forgot them: send every model's bytes once more
            return self._call_measure(models, protocol, should_stop)

    def _call_measure(self, models: list[RemoteModel], protocol: ProtocolSpec,
                      should_stop: Callable[[], None] | None) -> pb.MeasureResponse:
        send = [m.sha256 not in self._held for m in models]
        header = pb.MeasureHeader(
            runtime=self.settings.runtime, precision=self.settings.precision, threads=self.settings.threads,
            protocol=protocol_to_pb(protocol), seed=self.seed,
            models=[pb.ProbeModel(sha256=m.sha256, size_bytes=len(m.data) if s else 0, input_shape=m.input_shape,
                                  fresh_session=m.fresh) for m, s in zip(models, send)])

        def requests() -> Iterator[pb.MeasureRequest]:
            yield pb.MeasureRequest(header=header)
            for model, s in zip(models, send):
                if s:
                    for i in range(0, len(model.data), CHUNK_BYTES):
                        yield pb.MeasureRequest(chunk=model.data[i:i + CHUNK_BYTES])

        # Generous: a probe measures up to max_seconds after warm-up, and TensorRT builds engines first.
        deadline = 60 + 2 * (protocol.max_seconds + protocol.warmup_seconds) * len(models) \
            + (900 if self.settings.runtime == "tensorrt" else 0)
        call = self._stub.Measure.future(requests(), timeout=deadline, metadata=self._metadata)
        try:
            while not call.done():
                time.sleep(0.1)
                if should_stop is not None:
                    should_stop()
        except BaseException:
            call.cancel()
            raise
        return call.result()

    def _retrying(self, attempt: Callable[[], Any], what: str) -> Any:
        """Retry what a restarted or briefly unreachable probe fails; map the rest to job errors."""
        for i in range(ATTEMPTS):
            try:
                return attempt()
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                transient = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if transient and i + 1 < ATTEMPTS:
                    time.sleep(BACKOFF_SECONDS[min(i, len(BACKOFF_SECONDS) - 1)])
                    continue
                if transient or code == grpc.StatusCode.CANCELLED:
                    raise ProbeUnavailable(f"latency probe at {self.address} failed to {what} after {i + 1} "
                                           f"attempt(s): {code.name}: {details}") from None
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise ProbeUnavailable(f"latency probe at {self.address} refused the credentials: {details} "
                                           f"(set SECATEURS_PROBE_TOKEN / the server's --probe-token)") from None
                raise BackendUnavailable(f"latency probe at {self.address} could not {what}: "
                                         f"{code.name}: {details}") from None
        raise AssertionError("unreachable")


def open_target(target: TargetSpec, *, seed: int = 0) -> LatencyTarget:
    """The job's target: the probe `target.probe_address` names (credentials from the environment,
    see ProbeCredentials), else this process. What the worker and the CLI pass to `compress`."""
    if target.probe_address:
        return ProbeTarget(target.probe_address, settings_of(target), seed=seed,
                           credentials=ProbeCredentials.from_environ(), name=target.probe_name)
    return open_local_target(target, seed=seed)
