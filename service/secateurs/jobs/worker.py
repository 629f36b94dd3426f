"""The body of one worker process: run one job, report through a pipe, exit.

Messages to the parent are ("event", dict), then one of ("result", dict) or
("error", dict). A worker never touches the job store, so a crash cannot corrupt
it; the parent turns a missing result plus the exit code into the job's cause.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from secateurs.errors import as_secateurs_error, code_for, reason_for
from secateurs.jobs.specs import spec_from_json

DEFAULT_RUNNER = "secateurs.jobs.worker:run_compress"
HEARTBEAT_SECONDS = 2.0  # the supervisor kills a worker silent for its heartbeat timeout


def run_compress(spec: Any, on_event: Callable[[Any], None], cancel: Any) -> Any:
    """The pipeline, measuring where the job's target says: this process or the probe it names."""
    from secateurs.engine.pipeline import compress
    from secateurs.probe.client import open_target

    return compress(spec, on_event, cancel, target_opener=open_target)


def resolve_runner(name: str) -> Callable[..., Any]:
    """"package.module:function" -> the function (a test may name a fake one)."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def worker_main(runner: str, job_id: str, spec_json: str, out_dir: str, conn: Connection, cancel: Any,
                environ: dict[str, str] | None = None, memory_bytes: int | None = None) -> None:
    """Entry point of the worker process. environ: the whole environment the job runs in (the
    server's when the job started, with the latency probe's credentials, passed here so they are
    never stored with the job), not the fork server's from when it started. memory_bytes: the
    address space the worker may use (RLIMIT_AS); past it allocations fail, and the job
    ends out_of_memory instead of the machine's OOM killer choosing a victim."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Ctrl-C in a terminal reaches the whole process group; the server decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())
    send = _sender(conn)
    _heartbeat(send)
    send("event", {"stage": "job", "kind": "log", "message": f"worker pid {os.getpid()} started",
                   "data": {"pid": os.getpid()}})
    try:
        fn = resolve_runner(runner)
        spec = spec_from_json(spec_json, Path(out_dir))
        result = fn(spec, lambda event: send("event", _event_dict(event)), cancel)
        report = json.dumps(result.report, default=str)
        send("result", {"report": report, "artifacts": {k: str(v) for k, v in result.artifacts.items()}})
    except BaseException as exc:  # noqa: BLE001 - everything becomes the job's cause
        seen = as_secateurs_error(exc)  # a full disk, memory past the limit: the tree's errors
        send("error", {"type": type(seen).__name__, "message": str(seen) or type(seen).__name__,
                       "field": getattr(seen, "field", None), "code": code_for(seen),
                       "reason": reason_for(seen), "traceback": traceback.format_exc(limit=8)[-4000:]})
    finally:
        conn.close()


def _sender(conn: Connection) -> Callable[[str, dict[str, Any]], None]:
    lock = threading.Lock()

    def send(kind: str, payload: dict[str, Any]) -> None:
        try:
            with lock:
                conn.send((kind, payload))
        except (BrokenPipeError, OSError):
            os._exit(3)  # the server is gone; nobody will read what we make

    return send


def _heartbeat(send: Callable[[str, dict[str, Any]], None]) -> None:
    """A thread that tells the supervisor every HEARTBEAT_SECONDS that the worker still runs."""

    def beat() -> None:
        while True:
            send("heartbeat", {})
            time.sleep(HEARTBEAT_SECONDS)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def _event_dict(event: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(getattr(event, "data", {}) or {}, default=str))
    if len(json.dumps(data)) > 32_768:  # events stay small; big data belongs in the report
        data = {"truncated": True}
    return {"stage": event.stage, "kind": event.kind, "message": event.message,
            "progress": event.progress, "data": data}


def _exit_with_parent(ppid: int) -> None:
    """A server killed with -9 cannot stop its workers; they notice and exit."""

    def watch() -> None:
        while True:
            if os.getppid() != ppid:
                os._exit(4)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
