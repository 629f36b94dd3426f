"""One exception tree for the whole server, and the one table that maps it to gRPC codes
and to the job failure reasons a client can see.

Each class says when it is raised. Messages are written for the person who sent
the request: they name the field, tensor, layer or file at fault. A job that fails
carries one reason from `FAILURE_REASONS`, a closed set: the reason of its error
class (`TABLE`), or one of the job-level reasons in `JOB_REASONS` for what no
exception says (a worker that died, stopped answering, or an interrupted server).
"""

from __future__ import annotations

import errno


class SecateursError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidRequest(SecateursError):
    """Raised when a request or option is malformed; `field` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidModel(InvalidRequest):
    """Raised when model weights cannot be read or do not fit the architecture."""


class UnsafeModel(InvalidRequest):
    """Raised when weights would need unpickling arbitrary objects and trust was not given."""


class InvalidData(InvalidRequest):
    """Raised when a dataset cannot be read: a missing split, an image that does not decode.

    Its constructor takes the message only (the field is always "data"), so when a
    DataLoader worker re-raises it in the main process (it rebuilds exceptions from
    their type and a message), type and field survive.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, field="data")


class PermissionDenied(SecateursError):
    """Raised when a request asks for what the operator has not allowed at start-up
    (code named by `module:`, a probe that is not listed); `field` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedModel(SecateursError):
    """Raised when the engine cannot handle an architecture (names the layer or op)."""


class BudgetInfeasible(SecateursError):
    """Raised when a budget cannot be met by any plan the search can build."""


class ParityError(SecateursError):
    """Raised when an exported model disagrees with PyTorch beyond the tolerance."""


class BackendUnavailable(SecateursError):
    """Raised when a runtime (execution provider, TensorRT, GPU) is not present."""


class ProbeUnavailable(BackendUnavailable):
    """Raised when a job's latency probe cannot be reached, or fails mid-measurement, after retries."""


class JobNotFound(SecateursError):
    """Raised when a job id does not exist."""


class BlobNotFound(SecateursError):
    """Raised when a blob or artifact id does not exist (or its retention time has passed)."""


class ResourceExhausted(SecateursError):
    """Raised when a request is over a limit: a size, a quota, the job queue, a dataset's bounds."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class OutOfMemory(ResourceExhausted):
    """Raised when a job needs more memory than its worker may use (the server's --worker-memory-limit)."""


class DiskFull(ResourceExhausted):
    """Raised when the server's disk has no room left for an upload, an export or a checkpoint."""


class Cancelled(SecateursError):
    """Raised when a stage finds its job's cancel token set."""


class Unauthenticated(SecateursError):
    """Raised when a call lacks a valid bearer token."""


class Unavailable(SecateursError):
    """Raised when the server is draining and takes no new work."""


class RequestConflict(SecateursError):
    """Raised when a request_id is reused with a different request."""


# The one table: error class -> (gRPC status code name, job failure reason). Most specific
# first: the first isinstance match wins.
TABLE: tuple[tuple[type[SecateursError], str, str], ...] = (
    (InvalidModel, "INVALID_ARGUMENT", "invalid_model"),
    (UnsafeModel, "INVALID_ARGUMENT", "unsafe_model"),
    (InvalidData, "INVALID_ARGUMENT", "invalid_data"),
    (InvalidRequest, "INVALID_ARGUMENT", "invalid_request"),
    (PermissionDenied, "PERMISSION_DENIED", "permission_denied"),
    (UnsupportedModel, "FAILED_PRECONDITION", "unsupported_model"),
    (BudgetInfeasible, "FAILED_PRECONDITION", "budget_infeasible"),
    (ParityError, "FAILED_PRECONDITION", "parity_error"),
    (ProbeUnavailable, "UNAVAILABLE", "probe_unavailable"),  # a probe may come back: worth trying again later
    (BackendUnavailable, "FAILED_PRECONDITION", "backend_unavailable"),
    (JobNotFound, "NOT_FOUND", "job_not_found"),
    (BlobNotFound, "NOT_FOUND", "blob_not_found"),
    (OutOfMemory, "RESOURCE_EXHAUSTED", "out_of_memory"),
    (DiskFull, "RESOURCE_EXHAUSTED", "disk_full"),
    (ResourceExhausted, "RESOURCE_EXHAUSTED", "resource_exhausted"),
    (Cancelled, "CANCELLED", "cancelled"),
    (Unauthenticated, "UNAUTHENTICATED", "unauthenticated"),
    (Unavailable, "UNAVAILABLE", "unavailable"),
    (RequestConflict, "ALREADY_EXISTS", "request_conflict"),
)

# Why a job can end without an exception of the tree saying so (the job layer decides these).
JOB_REASONS: dict[str, str] = {
    "interrupted": "its server stopped while it ran, more often than the attempts allow",
    "worker_crashed": "its worker process died (a signal, an exit code) without a result",
    "worker_unresponsive": "its worker stopped answering (no heartbeat within the timeout) and was killed",
    "stage_timeout": "one of its stages ran past the limit the operator set (--stage-timeout) and was stopped",
    "internal": "a bug; the server log has the traceback",
}

FAILURE_REASONS: frozenset[str] = frozenset({reason for _, _, reason in TABLE} | set(JOB_REASONS))


def as_secateurs_error(exc: BaseException) -> BaseException:
    """The error of the tree an exception stands for: itself when it is one; the memory and
    disk failures that libraries raise as plain exceptions mapped onto OutOfMemory and
    DiskFull; anything else unchanged (an internal error)."""
    if isinstance(exc, SecateursError):
        return exc
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _says_out_of_memory(str(exc))):
        return OutOfMemory(f"the job ran out of memory: {_first_line(exc) or type(exc).__name__}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left on the server's disk ({_first_line(exc) or 'ENOSPC'})")
    return exc


def machine_limit(exc: BaseException) -> bool:
    """Whether an exception is the machine running out (memory, disk), not the input's fault: a
    handler that turns library errors into "unsupported model" must let these through."""
    return isinstance(as_secateurs_error(exc), (OutOfMemory, DiskFull))


def code_for(exc: BaseException) -> str:
    """gRPC status code name for an exception; anything unknown is INTERNAL."""
    exc = as_secateurs_error(exc)
    for cls, code, _ in TABLE:
        if isinstance(exc, cls):
            return code
    return "INTERNAL"


def reason_for(exc: BaseException) -> str:
    """The failure reason of an exception, one of FAILURE_REASONS ("internal" for a bug)."""
    exc = as_secateurs_error(exc)
    for cls, _, reason in TABLE:
        if isinstance(exc, cls):
            return reason
    return "internal"


def _says_out_of_memory(text: str) -> bool:
    # torch's CPU allocator raises RuntimeError, not MemoryError, when an allocation fails
    return any(s in text for s in ("can't allocate memory", "not enough memory", "out of memory",
                                   "std::bad_alloc"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
