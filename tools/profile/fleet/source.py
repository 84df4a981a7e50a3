"""Where a simulated device gets payload bytes: one small interface, one implementation per transport.

A :class:`PayloadSource` streams one payload from a byte offset and names itself (``grpc``,
``http``), so the fleet report can count bytes by source. The gRPC one is ``FetchPayload``;
an HTTP mirror (Range requests) is the next. A source checks what its transport can check on
the way (for gRPC: every chunk's offset, length and CRC-32) and raises :class:`IntegrityError`
on bytes that are not the ones asked for; the device hashes the whole payload itself.
Failed calls become :class:`CallError`, with the transport's code and whether a retry may help.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import grpc
import grpc.aio

from edgerec.errors import IntegrityError, TransportError
from edgerec.grpc_status import ERROR_METADATA_KEY, RETRYABLE_CODES
from edgerec.v1 import update_pb2, update_pb2_grpc

GRPC = "grpc"
HTTP = "http"
# Every source the report counts bytes for, in the order its columns appear (HTTP mirrors: not yet).
KNOWN_SOURCES: tuple[str, ...] = (GRPC, HTTP)


class CallError(TransportError):
    """A failed call: ``code`` is the transport's status (a gRPC code name), ``transient`` whether to retry."""

    def __init__(self, message: str, code: str, *, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


def call_error(exc: grpc.aio.AioRpcError, what: str) -> CallError:
    """The CallError for a failed grpc.aio call.

    A status the server chose deliberately (it names an edgerec error in the trailing metadata)
    would be the same on a retry, so it is not transient.
    """
    code = exc.code()
    metadata: Any = exc.trailing_metadata() or ()
    named = next((str(value) for key, value in metadata if key == ERROR_METADATA_KEY), None)
    transient = code in RETRYABLE_CODES and named is None
    label = f"{code.name} ({named})" if named else code.name
    return CallError(f"{what}: {label}: {exc.details()}", label, transient=transient)


class PayloadSource(Protocol):
    """Streams payload bytes from a transport."""

    @property
    def name(self) -> str:
        """The key its bytes are counted under (one of :data:`KNOWN_SOURCES`)."""
        ...

    def read(
        self, model: str, payload: update_pb2.Payload, offset: int, rate_bytes_per_s: float, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """The payload's bytes from ``offset`` on, in order, never past ``payload.size``.

        ``rate_bytes_per_s`` is the device's link rate, for a source that can ask the far end to pace.
        Raises CallError when the transfer fails and IntegrityError when the bytes are not the ones asked for;
        it may also end early (a cut stream), which the caller resumes from the bytes it has.
        """
        ...


class GrpcPayloadSource:
    """``FetchPayload`` on a grpc.aio channel, asking the server to pace the stream at the device's rate."""

    name = GRPC

    def __init__(self, channel: grpc.aio.Channel, device_id: str, chunk_bytes: int) -> None:
        self._stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        self.device_id = device_id
        self.chunk_bytes = chunk_bytes

    async def read(
        self, model: str, payload: update_pb2.Payload, offset: int, rate_bytes_per_s: float, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        request = update_pb2.FetchPayloadRequest(
            model=model,
            payload_id=payload.payload_id,
            offset=offset,
            max_chunk_bytes=self.chunk_bytes,
            device_id=self.device_id,
            max_bytes_per_second=max(1, round(rate_bytes_per_s)),
        )
        call = self._stub.FetchPayload(request, timeout=timeout_s)
        try:
            async for chunk in call:
                if chunk.offset != offset or chunk.total_size != payload.size:
                    raise IntegrityError(
                        f"server sent bytes at {chunk.offset} of {chunk.total_size}, "
                        f"expected {offset} of {payload.size}"
                    )
                if len(chunk.data) > payload.size - offset:
                    raise IntegrityError(f"server sent more bytes than the payload's {payload.size} (at {offset})")
                if zlib.crc32(chunk.data) != chunk.crc32:
                    raise IntegrityError(f"chunk at {offset} failed its CRC-32 check")
                offset += len(chunk.data)
                yield chunk.data
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc, f"FetchPayload {payload.payload_id[:12]}") from exc
        finally:
            call.cancel()
