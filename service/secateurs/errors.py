"""One exception tree for the whole server; `api` maps it to gRPC status codes.

Each class says when it is raised. Messages are written for the person who sent
the request: they name the field, tensor, layer or file at fault.
"""

from __future__ import annotations


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
    """Raised when a blob or artifact id does not exist."""


class ResourceExhausted(SecateursError):
    """Raised when a size limit or the job queue is full."""


class Cancelled(SecateursError):
    """Raised inside a stage when its job's cancel token was set."""


class Unauthenticated(SecateursError):
    """Raised when a call lacks a valid bearer token."""


class Unavailable(SecateursError):
    """Raised when the server is draining and takes no new work."""
