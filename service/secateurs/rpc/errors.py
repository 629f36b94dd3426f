"""Exceptions -> gRPC status, in one function, applied to every call by one interceptor.

Errors of the secateurs tree keep their message (it is written for the caller);
anything else is a bug, logged with its traceback and answered INTERNAL with a
generic message. An error that names a field carries a google.rpc.BadRequest naming it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from secateurs.errors import SecateursError, as_secateurs_error, code_for

log = logging.getLogger(__name__)


def status_for(exc: BaseException) -> grpc.Status:
    """The status a call answers with when it raised `exc`."""
    exc = as_secateurs_error(exc)  # a full disk during an upload is RESOURCE_EXHAUSTED, not a bug
    code_name = code_for(exc)
    if isinstance(exc, SecateursError):
        message = str(exc) or type(exc).__name__
    else:
        message = "internal error; the server log has the details"
    status = status_pb2.Status(code=getattr(code_pb2, code_name), message=message)
    field = getattr(exc, "field", None) if isinstance(exc, SecateursError) else None
    if field:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
        status.details.append(detail)
    return rpc_status.to_status(status)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps whatever a handler raises to a status (see `status_for`)."""

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        return wrap_handler(continuation(details), self._guard)

    @staticmethod
    def _guard(behavior: Callable[..., Any], streams: bool) -> Callable[..., Any]:
        def abort(context: grpc.ServicerContext, exc: Exception) -> None:
            if not isinstance(as_secateurs_error(exc), SecateursError):
                log.exception("unexpected error in a call")
            context.abort_with_status(status_for(exc))

        if streams:
            def call_stream(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    yield from behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    abort(context, exc)
            return call_stream

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                abort(context, exc)
        return call


def wrap_handler(handler: Any, guard: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> Any:
    """Rebuild an RpcMethodHandler with its behavior passed through `guard(behavior, streams)`."""
    if handler is None:
        return None
    kinds = (("unary_unary", False, grpc.unary_unary_rpc_method_handler),
             ("unary_stream", True, grpc.unary_stream_rpc_method_handler),
             ("stream_unary", False, grpc.stream_unary_rpc_method_handler),
             ("stream_stream", True, grpc.stream_stream_rpc_method_handler))
    for attr, streams, make in kinds:
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make(guard(behavior, streams), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
