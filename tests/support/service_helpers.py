"""Helpers for service tests: requests, waiting, a server in a subprocess.

(Not named conftest/helpers: test directories share one module namespace.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from secateurs_client import Client, build_request, pb

HERE = Path(__file__).parent
FAKE_RUNNER = "service_fakes:fake_compress"
# Fake jobs name a `module:` architecture the fake runner never builds; servers that run them allow it.
FAKE_ARCH = "module:service_fakes:FakeNet"
FAKE_MODULES = ("service_fakes",)
# Short sessions: no test outside the `measures` mark asserts on the latency it measures, and on two busy
# cores a session that never settles runs to its cap. (Over the API a zero is "the default": warmup 0.01 s.)
QUICK_PROTOCOL = dict(warmup_runs=3, warmup_seconds=0.01, window=10, min_samples=20, max_seconds=0.5)
QUICK_PROTOCOL_FLAGS = [a for k, v in QUICK_PROTOCOL.items() for a in ("--protocol", f"{k}={v}")]  # the client command's


def load_benchmark(name: str) -> Any:
    """Import benchmarks/<name>.py (not a package) so a test can call the measurement it defines."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet20_request(**kw: Any) -> pb.CreateJobRequest:
    """A small real job: ResNet-20 on 1x3x32x32, half the channels, quick latency protocol."""
    args: dict[str, Any] = dict(arch="zoo:resnet20", input_shape=(1, 3, 32, 32), ratio=0.5, protocol=QUICK_PROTOCOL)
    args.update(kw)
    depth = args.pop("depth", "")  # pruning.depth: the client's builder has no argument for it
    request = build_request(**args)
    request.pruning.depth = depth
    return request


def fake_request(mode: str = "ok", **kw: Any) -> pb.CreateJobRequest:
    """A job for the fake runner (service_fakes.py), whose behaviour `mode` picks."""
    kwargs = {"fake": mode, **kw.pop("arch_kwargs", {})}
    return resnet20_request(arch=FAKE_ARCH, arch_kwargs=kwargs, **kw)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_stage(client: Client, job_id: str, stage: str, timeout: float = 60.0) -> int:
    """Follow a job until `stage` starts; return the worker's pid."""
    pid = 0
    deadline = time.monotonic() + timeout
    for event in client.watch_job(job_id, timeout=timeout):
        pid = int(event.data["pid"]) if "pid" in event.data else pid
        if event.stage == stage and event.kind == "started":
            return pid
        if event.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED) or time.monotonic() > deadline:
            break
    raise AssertionError(f"job {job_id} ended before stage {stage!r} started")


def listening_address(proc: subprocess.Popen, timeout: float) -> str:
    """The address a starting `secateurs serve` or `secateurs probe` prints ("... listening on ADDR")."""
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            m = re.search(rb"listening on (\S+)", line)
            if m:
                found.append(m.group(1).decode())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        proc.kill()
        raise AssertionError("the process did not start listening")
    return found[0]


class ServerProcess:
    """`secateurs serve` in a subprocess (for kill -9 and SIGTERM tests)."""

    def __init__(self, data_dir: Path, *args: str, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "secateurs.cli", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
             *args], stdout=subprocess.PIPE, stderr=self._log, env=env,
        )
        self.address = self._read_address(timeout=60)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def _read_address(self, timeout: float) -> str:
        return listening_address(self.proc, timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# Runs `secateurs probe` with torch made unimportable: the probe must start and measure without it.
_PROBE_WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from secateurs.cli import main; "
                        "sys.exit(main(['probe', *sys.argv[1:]]))")


class ProbeProcess:
    """`secateurs probe` in a subprocess (optionally inside a network namespace), torch blocked."""

    def __init__(self, *args: str, log: Path, listen: str = "127.0.0.1:0", netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([*prefix, sys.executable, "-c", _PROBE_WITHOUT_TORCH, "--listen", listen, *args],
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.address = listening_address(self.proc, timeout=60)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        self._log.close()


def image_folder_zip(path: Path, *, classes: int = 2, per_class: int = 20, size: int = 32) -> Path:
    """A tiny ImageFolder zip, train/<class>/*.jpg and test/<class>/*.jpg, of seeded random JPEGs."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for c in range(classes):
                for i in range(per_class):
                    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    pixels[..., c % 3] //= 4  # a little class signal: one channel darker
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="JPEG")
                    zf.writestr(f"{split}/class{c}/{i:03d}.jpg", buf.getvalue())
    return path


def parse_serve_args(argv: list[str]) -> Any:
    """`secateurs serve` arguments as the server parses them (argv without "serve"); fails the
    test, naming the arguments, when the server would refuse them."""
    import argparse

    from secateurs.api.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="secateurs serve", exit_on_error=False)
    add_serve_arguments(parser)
    try:
        args = parser.parse_args(argv)
        config_from_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise AssertionError(f"secateurs serve refuses {argv}: {exc}") from None
    return args


def cache_dir_for_tests() -> Path:
    """Where tests keep what is slow to make and safe to reuse: $SECATEURS_TEST_CACHE, else
    $XDG_CACHE_HOME/secateurs (~/.cache/secateurs)."""
    explicit = os.environ.get("SECATEURS_TEST_CACHE")
    root = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "secateurs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached_venv(name: str, *packages: Path, timeout: float = 900) -> Path:
    """The python of a virtual environment with the local `packages` installed (not editable), built
    once and kept under cache_dir_for_tests() (for tools whose dependencies clash with the server's,
    e.g. kfp's protobuf pin). Keyed on the Python version and the packages' file contents, not on
    where the checkout lies, so another clone with the same code reuses it; any edit rebuilds it."""
    import fcntl
    import hashlib
    import shutil
    import venv

    digest = hashlib.sha256(sys.version.encode())
    for package in packages:
        for path in sorted(_package_files(package)):
            digest.update(f"{package.name}/{path.relative_to(package)}".encode() + b"\0" + path.read_bytes())
    root = cache_dir_for_tests() / "venvs" / f"{name}-{digest.hexdigest()[:12]}"
    python, done = root / "bin" / "python", root / ".complete"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse it
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            venv.create(root, with_pip=True)
            args = ["install", "--quiet", "--disable-pip-version-check", *map(str, packages)]
            install = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                                     timeout=timeout)
            if install.returncode != 0:
                raise AssertionError(f"pip {' '.join(args)} failed:\n{install.stdout[-3000:]}\n"
                                     f"{install.stderr[-3000:]}")
            done.touch()
    return python


def _package_files(package: Path) -> Iterator[Path]:
    """A local package's own files: what a build leaves behind (bytecode, build/, *.egg-info) skipped."""
    for path in package.rglob("*"):
        parts = path.relative_to(package).parts
        if path.is_file() and not any(p in ("__pycache__", "build", "dist") or p.endswith(".egg-info") for p in parts):
            yield path


def save_zoo_weights(path: Path, name: str = "resnet20", **kwargs: Any) -> Path:
    """Seeded weights of a zoo network (e.g. width=8: a job on it takes seconds) as safetensors."""
    import torch
    from safetensors.torch import save_file

    from secateurs.engine.intake.zoo import ZOO

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in ZOO[name](**kwargs).state_dict().items()}, str(path))
    return path
