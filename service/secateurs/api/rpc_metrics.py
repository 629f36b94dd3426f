"""gRPC server metrics (grpc_server_started_total, _handled_total, _handling_seconds, _msg_*),
for unary and streaming calls alike, named and labelled as go-grpc-prometheus does.

The interceptor must be the outermost one (first in the server's list): the code it
records is the status the client receives, including one set by the error interceptor
(`context.abort_with_status`) or by the token check behind it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import grpc

from secateurs.rpc.errors import wrap_handler
from secateurs.metrics import ServiceMetrics

# The grpc_code values of go-grpc-prometheus (Go's codes.Code.String()), so dashboards and
# alerts written for that convention work unchanged.
GO_CODE_NAMES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable", "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}
# (request streams, response streams) -> the grpc_type label of the convention
_RPC_TYPES = {(False, False): "unary", (True, False): "client_stream",
              (False, True): "server_stream", (True, True): "bidi_stream"}


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED; not one of our series
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        labels = (_RPC_TYPES[(bool(handler.request_streaming), bool(handler.response_streaming))], service, method)
        return wrap_handler(handler, lambda behavior, streams: self._observe(
            behavior, labels, requests_stream=bool(handler.request_streaming), responses_stream=streams))

    def preregister(self, service: Any) -> None:
        """Every method of a service descriptor at 0 started and 0 handled OK, so rates exist before traffic."""
        m = self._metrics
        for method in service.methods:
            labels = (_RPC_TYPES[(method.client_streaming, method.server_streaming)], service.full_name, method.name)
            m.rpc_started.labels(*labels)
            m.rpc_handled.labels(*labels, "OK")

    def _observe(self, behavior: Callable[..., Any], labels: tuple[str, str, str], *,
                 requests_stream: bool, responses_stream: bool) -> Callable[..., Any]:
        m = self._metrics

        def received(request: Any) -> Any:
            if requests_stream:
                return _counted(request, m.rpc_received.labels(*labels))
            m.rpc_received.labels(*labels).inc()
            return request

        def done(start: float, code: str) -> None:
            m.rpc_handled.labels(*labels, code).inc()
            m.rpc_seconds.labels(*labels).observe(time.perf_counter() - start)

        if responses_stream:
            def call_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = time.perf_counter()
                m.rpc_started.labels(*labels).inc()
                sent = m.rpc_sent.labels(*labels)
                try:
                    for response in behavior(received(request), context):
                        sent.inc()
                        yield response
                except GeneratorExit:  # grpc dropped the stream: the client cancelled or timed out
                    done(start, _final_code(context, gone=True))
                    raise
                except BaseException:
                    done(start, _final_code(context, default="Unknown"))
                    raise
                done(start, _final_code(context))
            return call_stream

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            m.rpc_started.labels(*labels).inc()
            try:
                response = behavior(received(request), context)
            except BaseException:
                done(start, _final_code(context, default="Unknown"))
                raise
            m.rpc_sent.labels(*labels).inc()
            done(start, _final_code(context))
            return response
        return call


def _counted(requests: Iterator[Any], counter: Any) -> Iterator[Any]:
    for request in requests:
        counter.inc()
        yield request


def _final_code(context: grpc.ServicerContext, *, default: str = "OK", gone: bool = False) -> str:
    """The status the call ends with, as go-grpc-prometheus names it: the one set on the context
    (abort, set_code), else Canceled or DeadlineExceeded when the client is gone, else `default`
    (an exception that reached grpc unmapped ends Unknown)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return GO_CODE_NAMES.get(code.name, code.name)
    if gone or not context.is_active():
        remaining = context.time_remaining()
        return "DeadlineExceeded" if remaining is not None and remaining <= 0 else "Canceled"
    return default
