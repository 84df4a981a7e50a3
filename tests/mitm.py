"""A man-in-the-middle between a device and a real server: holds no key, rewrites what nobody signed.

``MitmProxy`` is a gRPC server on loopback that forwards every call to the real server and lets a
test rewrite the answers on the way back, the way an attacker on the network path could: the
CheckUpdate plan (payload ids, sizes, base paths, codecs, recipe, ``update_available``), the
payload bytes of FetchPayload (or payloads of its own that the server never had), and anything
else it may drop or replace. It cannot produce a signature by a trusted key; a test that wants
a manifest or a freshness statement signed by some other key brings that key itself.

    with registry_server(registry, signing_key=pem) as upstream, MitmProxy(upstream) as mitm:
        mitm.on_check = lambda request, response: ...   # return the response the device sees
        mitm.serve_payload(fake_bytes)                    # -> a payload id the proxy answers itself
        EdgeClient(server=mitm.address, ...).sync()
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from edgerec.v1 import update_pb2

_UPDATE = "/edgerec.v1.ModelUpdate/"

CheckHook = Callable[[update_pb2.CheckUpdateRequest, update_pb2.CheckUpdateResponse], update_pb2.CheckUpdateResponse]
# (request, the upstream's chunks) -> the chunks the device receives
FetchHook = Callable[
    [update_pb2.FetchPayloadRequest, Iterator[update_pb2.PayloadChunk]], Iterator[update_pb2.PayloadChunk]
]


def chunks_of(
    data: bytes, offset: int = 0, chunk_bytes: int = 16 * 1024, total: int | None = None
) -> Iterator[update_pb2.PayloadChunk]:
    """``data`` from ``offset`` as well-formed PayloadChunks (CRC-32 right), claiming ``total`` bytes overall."""
    size = len(data) if total is None else total
    while offset < len(data):
        piece = data[offset : offset + chunk_bytes]
        yield update_pb2.PayloadChunk(offset=offset, data=piece, total_size=size, crc32=zlib.crc32(piece))
        offset += len(piece)


class MitmProxy:
    """A rewriting proxy in front of ``upstream`` (host:port); ``address`` is where devices connect."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.on_check: CheckHook | None = None
        self.on_fetch: FetchHook | None = None
        self.requests: list[Any] = []  # every request seen, in order (typed for the update service)
        self._payloads: dict[str, bytes] = {}
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-mitm"))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> MitmProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=0).wait()
        self._channel.close()

    def serve_payload(self, data: bytes) -> str:
        """Make the proxy answer FetchPayload for ``data`` itself; returns its payload id (its sha256)."""
        payload_id = hashlib.sha256(data).hexdigest()
        self._payloads[payload_id] = data
        return payload_id

    # --- the two update calls ------------------------------------------------------------------

    def check_update(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        self.requests.append(request)
        call = self._channel.unary_unary(
            _UPDATE + "CheckUpdate",
            request_serializer=update_pb2.CheckUpdateRequest.SerializeToString,
            response_deserializer=update_pb2.CheckUpdateResponse.FromString,
        )
        try:
            response: update_pb2.CheckUpdateResponse = call(request, timeout=_remaining(context))
        except grpc.RpcError as exc:
            _relay(exc, context)
        hook = self.on_check
        return hook(request, response) if hook is not None else response

    def fetch_payload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        self.requests.append(request)
        own = self._payloads.get(request.payload_id)
        if own is not None:
            upstream: Iterator[update_pb2.PayloadChunk] = chunks_of(
                own, request.offset, request.max_chunk_bytes or 16 * 1024
            )
        else:
            call = self._channel.unary_stream(
                _UPDATE + "FetchPayload",
                request_serializer=update_pb2.FetchPayloadRequest.SerializeToString,
                response_deserializer=update_pb2.PayloadChunk.FromString,
            )
            upstream = iter(call(request, timeout=_remaining(context)))
        hook = self.on_fetch
        try:
            yield from (hook(request, upstream) if hook is not None else upstream)
        except grpc.RpcError as exc:
            _relay(exc, context)

    def forward_unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        """Any other unary call, passed through as bytes."""

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            call = self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                response: bytes = call(request, timeout=_remaining(context))
            except grpc.RpcError as exc:
                _relay(exc, context)
            return response

        return forward


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, proxy: MitmProxy) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        method: str = details.method  # type: ignore[attr-defined]
        if method == _UPDATE + "CheckUpdate":
            return grpc.unary_unary_rpc_method_handler(
                self.proxy.check_update,
                request_deserializer=update_pb2.CheckUpdateRequest.FromString,
                response_serializer=update_pb2.CheckUpdateResponse.SerializeToString,
            )
        if method == _UPDATE + "FetchPayload":
            return grpc.unary_stream_rpc_method_handler(
                self.proxy.fetch_payload,
                request_deserializer=update_pb2.FetchPayloadRequest.FromString,
                response_serializer=update_pb2.PayloadChunk.SerializeToString,
            )
        if method.endswith("/Watch"):  # the one streaming call besides FetchPayload (health); not proxied
            return None
        return grpc.unary_unary_rpc_method_handler(self.proxy.forward_unary(method))


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 3600 else max(remaining, 0.001)


def _relay(exc: grpc.RpcError, context: grpc.ServicerContext) -> Any:
    """Pass the upstream's status (and its error metadata) on to the device."""
    if isinstance(exc, grpc.Call):
        context.set_trailing_metadata(exc.trailing_metadata() or ())
        context.abort(exc.code(), exc.details() or "")
    context.abort(grpc.StatusCode.UNAVAILABLE, "upstream failed")
