"""Requests that do not parse: refused with INVALID_ARGUMENT and one throttled log line, no traceback.

gRPC itself answers bytes its deserializer rejects with INTERNAL and logs a full traceback for
each, so a client sending junk could fill the server's log at will. :class:`MalformedRequestGuard`
parses every request itself first and refuses what does not parse before any handler runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from edgerec import grpc_status
from edgerec.errors import InvalidInputError
from edgerec.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_refusals = ThrottledLog(log)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class _Unparsable:
    """Stands in for a request whose bytes did not parse (gRPC would log a traceback for an exception)."""

    def __init__(self, size: int, error: Exception) -> None:
        self.size = size
        self.error = error


class MalformedRequestGuard(_ServerInterceptor):
    """Refuses, on every method, request messages that are not valid protobuf of the method's type."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _one(handler.unary_unary, method), parse, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _one(handler.unary_stream, method), parse, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _many(handler.stream_unary, method), parse, handler.response_serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _many(handler.stream_stream, method), parse, handler.response_serializer
            )
        return handler


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # whatever the message type's parser raises on junk
            return _Unparsable(len(data), exc)

    return parse


def _one(behavior: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Unparsable):
            _refuse(context, method, request)
        return behavior(request, context)

    return guarded


def _many(behavior: Callable[[Iterator[Any], grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def checked() -> Iterator[Any]:
            for request in requests:
                if isinstance(request, _Unparsable):
                    _refuse(context, method, request)
                yield request

        return behavior(checked(), context)

    return guarded


def _refuse(context: grpc.ServicerContext, method: str, request: _Unparsable) -> NoReturn:
    reason = grpc_status.bounded_details(str(request.error), 200)
    _refusals.info("refused a malformed %s (%d bytes) from %s: %s", method, request.size, context.peer(), reason)
    grpc_status.abort(context, InvalidInputError(f"the request is not a valid {method} message: {reason}"))
