"""Per-method bounds on request size, checked on the raw bytes before protobuf parses them.

gRPC's ``max_receive_message_length`` is one bound for the whole server (Predict carries tensors);
methods whose messages are always small get a tighter one here. A larger message is answered
RESOURCE_EXHAUSTED, as gRPC's own bound does, without ever being parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class _Oversized:
    """Stands for a request refused unparsed (a deserializer cannot end the call itself)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class MessageSizeLimits(_ServerInterceptor):
    """Refuses unary requests larger than ``limits[method]`` bytes (full method names, "/pkg.Service/Method")."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self.limits = dict(limits)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        limit = self.limits.get(details.method)
        if handler is None or limit is None or handler.unary_unary is None:
            return handler
        parse: Callable[[bytes], Any] = handler.request_deserializer or (lambda data: data)
        behavior = handler.unary_unary
        method = details.method

        def bounded(data: bytes) -> Any:
            return _Oversized(len(data)) if len(data) > limit else parse(data)

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Oversized):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"{method}: {request.size}-byte message, at most {limit}"
                )
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(checked, bounded, handler.response_serializer)
