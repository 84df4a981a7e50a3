"""Who may talk to the server: a bearer-token check on every call, and limits on payload streams.

Health and reflection stay open. Without a token file every caller is let in and, for the stream
limits, "device" means the caller's IP address with the ``device_id`` it claims (carrier NAT puts
many devices behind one address; the claim is unauthenticated, so it only spreads the limits, as
a caller could from many addresses); with one, it means the token's device:
a request whose ``device_id`` names another device is refused (PERMISSION_DENIED), a status
report without one is filed under the token's device, and a payload stream whose token is
revoked ends with UNAUTHENTICATED within ``recheck_s``.
A payload stream that breaks a progress rule (edgerec.server.progress: a client that reads too
slowly or not at all, or a stream far longer than its bytes need) ends with RESOURCE_EXHAUSTED,
which frees its slot; the device resumes from the bytes it has.
Issue tokens with :func:`add_device_token`; revoke with :func:`revoke_device_token`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc

from edgerec import grpc_status
from edgerec.errors import AuthenticationError, EdgerecError, PermissionDeniedError, StreamLimitError
from edgerec.server.auth import TokenTable, add_device_token, revoke_device_token
from edgerec.server.limits import StreamLimiter, StreamSlot
from edgerec.server.throttled_log import ThrottledLog
from edgerec.server.update_service import MAX_CHUNK_BYTES
from edgerec.v1 import telemetry_pb2, update_pb2

__all__ = ["SecurityInterceptor", "add_device_token", "revoke_device_token"]

log = logging.getLogger(__name__)
_refused = ThrottledLog(log)

FETCH_PAYLOAD = f"/{update_pb2.DESCRIPTOR.services_by_name['ModelUpdate'].full_name}/FetchPayload"
REPORT_STATUS = f"/{telemetry_pb2.DESCRIPTOR.services_by_name['Telemetry'].full_name}/ReportStatus"
BEARER = "bearer "

# grpc's classes are generic only in grpc-stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


# Trailing metadata of a refused FetchPayload: seconds (a decimal) after which a retry may find a slot.
RETRY_AFTER_KEY = "edgerec-retry-after-s"
# The part of an unauthenticated device_id that keys the stream limits.
MAX_CLAIMED_ID_CHARS = 64

# How often an open payload stream checks that its token is still valid (a revocation ends it).
DEFAULT_RECHECK_S = 0.25


class SecurityInterceptor(_ServerInterceptor):
    """Authenticates calls (when given tokens) and holds FetchPayload streams to ``limiter``."""

    def __init__(
        self,
        tokens: TokenTable | None,
        limiter: StreamLimiter,
        open_services: Collection[str],
        *,
        recheck_s: float = DEFAULT_RECHECK_S,
    ) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.recheck_s = recheck_s
        self._open_prefixes = tuple(f"/{name}/" for name in open_services)
        self._chunk_limit = limiter.limits.chunk_limit(MAX_CHUNK_BYTES)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(self._open_prefixes):
            return handler
        if details.method == FETCH_PAYLOAD and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._limited(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if self.tokens is None:
            return handler
        if details.method == REPORT_STATUS:
            return _guarded(handler, self.authorize_report)
        return _guarded(handler, self.authorize)

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The calling device's id (its peer address when there are no tokens); aborts UNAUTHENTICATED."""
        if self.tokens is None:
            return "peer " + context.peer().rsplit(":", 1)[0]
        device = self.tokens.device_for(self._token(context))
        if device is None:
            log.warning("refused an unknown or revoked token from %s", context.peer())
            _refuse(context, AuthenticationError("unknown or revoked device token"))
        return device

    def authorize(self, request: object, context: grpc.ServicerContext) -> str:
        """:meth:`authenticate`, then refuse (PERMISSION_DENIED) a request whose device_id is not the token's."""
        device = self.authenticate(context)
        claimed = getattr(request, "device_id", "")
        if self.tokens is not None and claimed and claimed != device:
            log.warning("device %s sent a request as device %r from %s", device, claimed[:80], context.peer())
            _refuse(context, PermissionDeniedError(f"this token is device {device!r}'s; the request names another"))
        return device

    def authorize_report(self, request: object, context: grpc.ServicerContext) -> str:
        """:meth:`authorize` for a status report; one without a device_id then carries the token's device.

        The server keeps reports per device_id, so a report may only ever land under its token's device.
        """
        device = self.authorize(request, context)
        if isinstance(request, telemetry_pb2.StatusReport) and not request.device_id:
            request.device_id = device
        return device

    def _stream_owner(self, device: str, request: update_pb2.FetchPayloadRequest) -> str:
        """Whom a payload stream counts against: the token's device, or the address with the claimed device id."""
        if self.tokens is not None or not request.device_id:
            return device
        return f"{device} device {request.device_id[:MAX_CLAIMED_ID_CHARS]!r}"

    def _token(self, context: grpc.ServicerContext) -> str:
        values = [str(v) for k, v in context.invocation_metadata() if k == "authorization"]
        if not values:
            _refuse(context, AuthenticationError("no bearer token: send 'authorization: Bearer <device token>'"))
        if len(values) > 1 or values[0][: len(BEARER)].lower() != BEARER:
            _refuse(
                context, AuthenticationError("malformed authorization metadata: expected one 'Bearer <device token>'")
            )
        return values[0][len(BEARER) :].strip()

    def _still_valid(self, context: grpc.ServicerContext, device: str) -> Callable[[], bool]:
        """A check, cheap to call often, that the call's token still belongs to ``device``."""
        tokens = self.tokens
        if tokens is None:
            return lambda: True
        token = self._token(context)
        next_check = time.monotonic() + self.recheck_s
        valid = True

        def check() -> bool:
            nonlocal next_check, valid
            if valid and time.monotonic() >= next_check:
                valid = tokens.device_for(token) == device
                next_check = time.monotonic() + self.recheck_s
            return valid

        return check

    def _limited(
        self, fetch: Callable[[update_pb2.FetchPayloadRequest, grpc.ServicerContext], Iterator[update_pb2.PayloadChunk]]
    ) -> Callable[[update_pb2.FetchPayloadRequest, grpc.ServicerContext], Iterator[update_pb2.PayloadChunk]]:
        def behavior(
            request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
        ) -> Iterator[update_pb2.PayloadChunk]:
            device = self.authorize(request, context)
            still_valid = self._still_valid(context, device)
            try:
                slot = self.limiter.open(self._stream_owner(device, request))
            except StreamLimitError as exc:
                _refused.info("FetchPayload refused: %s", exc)
                retry_after = self.limiter.retry_after_s()
                context.set_trailing_metadata(((RETRY_AFTER_KEY, f"{retry_after:.1f}"),))
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry in {retry_after:.1f} s or when one finishes"
                )
            if not context.add_callback(slot.close):  # the call ended already
                slot.close()
                return iter(())
            slot.on_end(lambda reason: _end_call(context, grpc.StatusCode.RESOURCE_EXHAUSTED, _ended(reason)))
            if not 0 < request.max_chunk_bytes <= self._chunk_limit:
                # Small chunks keep a capped stream's pauses short and let the progress rules see each one arrive.
                request.max_chunk_bytes = self._chunk_limit
            return _paced(fetch(request, context), slot, still_valid, context, device)

        return behavior


def _paced(
    chunks: Iterator[update_pb2.PayloadChunk],
    slot: StreamSlot,
    still_valid: Callable[[], bool],
    context: grpc.ServicerContext,
    device: str,
) -> Iterator[update_pb2.PayloadChunk]:
    """``chunks`` at the slot's pace, ended with UNAUTHENTICATED as soon as the token is revoked.

    Tells the slot's progress when each chunk goes to gRPC and when gRPC has taken it (the next
    chunk is asked for): the time between is spent waiting on the client.
    """
    progress = slot.progress
    first = True
    try:
        for chunk in chunks:
            if first:
                progress.expect(chunk.total_size - chunk.offset)
                first = False
            slot.pace(len(chunk.data))
            if not still_valid():
                log.warning("ending the payload stream of device %s: its token was revoked", device)
                _refuse(context, AuthenticationError("device token revoked during the stream"))
            progress.sending(len(chunk.data))
            yield chunk
            del chunk  # not kept while the stream sleeps until its next chunk
            progress.sent()
    finally:
        slot.close()


def _ended(reason: str) -> str:
    return f"payload stream ended: {reason}; ask again from the bytes received"


def _end_call(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End ``context``'s call from another thread, with ``code`` and ``details`` when gRPC allows.

    The stream's own thread may be blocked inside gRPC (a client that does not read), where no
    abort can reach it. The public API can only cancel the call (the client sees CANCELLED); the
    call object of gRPC's synchronous server can also cancel it with a status.
    """
    call: Any = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(code.value[0], details)
    except (AttributeError, TypeError):
        context.cancel()  # type: ignore[no-untyped-call]


def _refuse(context: grpc.ServicerContext, error: EdgerecError) -> NoReturn:
    grpc_status.abort(context, error)


def _guarded(handler: Handler, check: Callable[[Any, grpc.ServicerContext], object]) -> Handler:
    """``handler`` with ``check(request, context)`` run before its behaviour (which aborts the call to refuse it)."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for inner, make in kinds:
        if inner is not None:
            return make(_checked(inner, check), handler.request_deserializer, handler.response_serializer)
    return handler


def _checked(
    inner: Callable[[Any, grpc.ServicerContext], Any], check: Callable[[Any, grpc.ServicerContext], object]
) -> Any:
    def behavior(request: Any, context: grpc.ServicerContext) -> Any:
        check(request, context)
        return inner(request, context)

    return behavior
