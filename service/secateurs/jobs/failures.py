"""The one table from secateurs.errors to status codes (by gRPC code name).

It lives here rather than in `api` because a job's failure is recorded by the
job layer and shown later through the API; both read the same table.
"""

from __future__ import annotations

import re

from secateurs import errors
from secateurs.jobs.records import RequestConflict

# Most specific first: the first isinstance match wins.
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (errors.InvalidRequest, "INVALID_ARGUMENT"),  # also InvalidModel, UnsafeModel
    (errors.UnsupportedModel, "FAILED_PRECONDITION"),
    (errors.BudgetInfeasible, "FAILED_PRECONDITION"),
    (errors.ParityError, "FAILED_PRECONDITION"),
    (errors.ProbeUnavailable, "UNAVAILABLE"),  # a probe may come back: worth trying again later
    (errors.BackendUnavailable, "FAILED_PRECONDITION"),
    (errors.JobNotFound, "NOT_FOUND"),
    (errors.BlobNotFound, "NOT_FOUND"),
    (errors.ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (errors.Cancelled, "CANCELLED"),
    (errors.Unauthenticated, "UNAUTHENTICATED"),
    (errors.Unavailable, "UNAVAILABLE"),
    (RequestConflict, "ALREADY_EXISTS"),
)


def code_for(exc: BaseException) -> str:
    """gRPC status code name for an exception; anything unknown is INTERNAL."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return "INTERNAL"


def reason_for(exc: BaseException) -> str:
    """A short snake_case reason for a job error: InvalidModel -> "invalid_model"."""
    if not isinstance(exc, errors.SecateursError):
        return "internal"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
