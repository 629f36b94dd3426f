"""Reading the rich details of a failed call (google.rpc.BadRequest field violations)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """[(field, description)] carried by an INVALID_ARGUMENT answer; [] when none."""
    status = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    out: list[tuple[str, str]] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def describe(err: grpc.RpcError) -> str:
    """One line for a person: CODE: message [field: x]."""
    code = err.code().name if isinstance(err, grpc.Call) else "UNKNOWN"
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    fields = ", ".join(f for f, _ in field_violations(err))
    return f"{code}: {details}" + (f" [field: {fields}]" if fields else "")
