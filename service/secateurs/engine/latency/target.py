"""Where a job's latency is measured: this process here; a remote probe in secateurs.probe.client.

A job opens one `LatencyTarget` and every latency figure of the job goes through it:
the baseline, every layer and candidate of the search, the verification rounds and the
final benchmark. So the figures share one device, one runtime and one fingerprint, and
the measurement cache is keyed by that fingerprint.

    target = open_target(spec.target, seed=0)          # or secateurs.probe.client.open_target
    base, pruned = target.load((1, 3, 224, 224), onnx=path_a), target.load(..., onnx=path_b)
    before, after = target.measure([base, pruned], protocol)    # interleaved
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from secateurs.engine.latency.devicelock import measuring
from secateurs.engine.latency.protocol import LatencyStats, measure_interleaved
from secateurs.engine.latency.runtimes import RuntimeSettings, open_backend, provider_of, require
from secateurs.engine.spec import ProtocolSpec, TargetSpec
from secateurs.errors import InvalidRequest


class LatencyTarget(Protocol):
    settings: RuntimeSettings
    fingerprint: dict[str, Any]  # of the device and runtime settings that measure, as the device reports it
    cache_id: str  # what the measurement cache keys on: this host's fingerprint id, or a probe's configured identity
    where: dict[str, Any]  # {"kind": "local"} or {"kind": "probe", "address": ..., "name": ...}

    def load(self, input_shape: tuple[int, ...], *, onnx: Path | bytes | None = None, module: Any = None,
             fresh: bool = False) -> Any:
        """A handle on one model ready to measure (ONNX for ONNX runtimes, the module for torch ones);
        `fresh`: in a newly opened session (a local target always opens one)."""

    def measure(self, models: list[Any], protocol: ProtocolSpec,
                should_stop: Callable[[], None] | None = None) -> list[LatencyStats]:
        """Measure the loaded models interleaved; `should_stop` raises to cancel."""

    def close(self) -> None:
        """Release connections and sessions."""


class LocalTarget:
    """Measures in this process."""

    def __init__(self, settings: RuntimeSettings, *, seed: int = 0) -> None:
        from secateurs.engine.latency.fingerprint import device_fingerprint

        require(settings.runtime)  # before anything is measured: a clear reason, not a late crash
        self.settings, self.seed = settings, seed
        self.fingerprint = device_fingerprint(runtime=settings.runtime, provider=provider_of(settings.runtime),
                                              threads=settings.threads, precision=settings.precision)
        self.cache_id = self.fingerprint["id"]
        self.where: dict[str, Any] = {"kind": "local"}

    def load(self, input_shape: tuple[int, ...], *, onnx: Path | bytes | None = None, module: Any = None,
             fresh: bool = False) -> Any:
        return open_backend(self.settings, tuple(input_shape), onnx=onnx, module=module, seed=self.seed)

    def measure(self, models: list[Any], protocol: ProtocolSpec,
                should_stop: Callable[[], None] | None = None) -> list[LatencyStats]:
        with measuring():  # alone on the machine's cores (engine/latency/devicelock.py)
            return measure_interleaved(models, protocol, should_stop)

    def close(self) -> None:
        pass


def settings_of(target: TargetSpec) -> RuntimeSettings:
    return RuntimeSettings(runtime=target.runtime, precision=target.precision, threads=target.threads)


TargetOpener = Callable[..., LatencyTarget]  # (TargetSpec, *, seed) -> LatencyTarget


def open_target(target: TargetSpec, *, seed: int = 0) -> LatencyTarget:
    """This process as the job's target. The engine knows no probe: a caller that may measure on
    one (the worker, the CLI) passes `secateurs.probe.client.open_target` to `compress` instead."""
    if target.probe_address:
        raise InvalidRequest(f"target.probe_address {target.probe_address!r}: this caller measures in its own "
                             f"process only; a probe is reached through the server or the CLI",
                             field="target.probe_address")
    return LocalTarget(settings_of(target), seed=seed)
