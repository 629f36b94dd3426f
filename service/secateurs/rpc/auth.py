"""Bearer-token check (metadata `authorization: Bearer <token>`) for every call but health."""

from __future__ import annotations

import hmac
from typing import Any, Callable

import grpc

from secateurs.rpc.errors import wrap_handler
from secateurs.errors import Unauthenticated

# Load balancers and orchestrators probe health without credentials.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if details.method.startswith(EXEMPT_PREFIXES):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return handler
        return wrap_handler(handler, _refuse)


def _refuse(behavior: Callable[..., Any], streams: bool) -> Callable[..., Any]:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        raise Unauthenticated("missing or wrong bearer token (metadata 'authorization: Bearer <token>')")

    if streams:
        def refuse_stream(request: Any, context: grpc.ServicerContext) -> Any:
            refuse(request, context)
            yield  # pragma: no cover - makes this a generator
        return refuse_stream
    return refuse
