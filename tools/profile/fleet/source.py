"""Where a simulated device gets payload bytes: one small interface, one implementation per transport.

A :class:`PayloadSource` streams one payload from a byte offset and names itself (``grpc``,
``http``), so the fleet report can count bytes by source. The gRPC one is ``FetchPayload`` on the
device's current server (:class:`Servers`: a device with several fails over to the next); the HTTP
one is a Range GET of the plan's URLs, checked as the device SDK checks it
(:func:`edgerec.device.transport.http.check_answer`). A source checks what its transport can check
on the way (for gRPC: every chunk's offset, length and CRC-32; for HTTP: the answer's range) and
raises :class:`IntegrityError` on bytes that are not the ones asked for; the device hashes the
whole payload itself. Failed calls become :class:`CallError`, with the transport's code and whether
a retry may help.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
import urllib3
from urllib3.exceptions import HTTPError

from edgerec.device.transport.base import SourceUnavailableError
from edgerec.device.transport.http import check_answer
from edgerec.errors import IntegrityError, TransportError
from edgerec.grpc_status import ERROR_METADATA_KEY, RETRYABLE_CODES
from edgerec.v1 import update_pb2, update_pb2_grpc

GRPC = "grpc"
HTTP = "http"
# Every source the report counts bytes for, in the order its columns appear.
KNOWN_SOURCES: tuple[str, ...] = (GRPC, HTTP)


# The call's server is gone (connection refused or cut): a device with another server fails over to it.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE.name})
# A payload URL gave no bytes (any status but the range, a refused or cut connection, a stall).
HTTP_UNAVAILABLE = "HTTP_UNAVAILABLE"

T = TypeVar("T")


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


class Servers:
    """A device's servers in the order it tries them; a call that finds its server gone moves to the next."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        if not channels:
            raise ValueError("a device needs at least one server")
        self._stubs = [update_pb2_grpc.ModelUpdateStub(c) for c in channels]  # type: ignore[no-untyped-call]
        self._current = 0
        self.failovers = 0

    @property
    def stub(self) -> update_pb2_grpc.ModelUpdateStub:
        return self._stubs[self._current]

    def failed(self, code: str) -> None:
        """A call on the current server failed with ``code``: fail over when the server is gone."""
        if code in FAILOVER_CODES and len(self._stubs) > 1:
            self._current = (self._current + 1) % len(self._stubs)
            self.failovers += 1


class GrpcPayloadSource:
    """``FetchPayload`` on the device's current server, asking it to pace the stream at the device's rate."""

    name = GRPC

    def __init__(self, servers: Servers, device_id: str, chunk_bytes: int) -> None:
        self.servers = servers
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
        call = self.servers.stub.FetchPayload(request, timeout=timeout_s)
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
            error = call_error(exc, f"FetchPayload {payload.payload_id[:12]}")
            self.servers.failed(error.code)
            raise error from exc
        finally:
            call.cancel()


class HttpPayloadSource:
    """A Range GET of the plan's payload URLs with urllib3 (blocking calls on ``executor``, one connection).

    Every failure is final for the URL (:data:`HTTP_UNAVAILABLE`, not transient), as the SDK drops a
    URL that fails and tries the next, then the servers; the device then falls back to its next source.
    """

    name = HTTP

    def __init__(self, executor: Executor, chunk_bytes: int, *, connect_timeout_s: float = 10.0) -> None:
        self._executor = executor
        self.chunk_bytes = chunk_bytes
        self.connect_timeout_s = connect_timeout_s
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=1, retries=False, block=False)
        self._failed: set[str] = set()

    def close(self) -> None:
        self._pool.clear()

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def read(
        self, model: str, payload: update_pb2.Payload, offset: int, rate_bytes_per_s: float, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        url = next((u for u in payload.urls if u not in self._failed), None)
        if url is None:
            raise CallError(f"no working URL for payload {payload.payload_id[:12]}", HTTP_UNAVAILABLE, transient=False)
        headers = {"Range": f"bytes={offset}-{payload.size - 1}", "Accept-Encoding": "identity"}
        timeout = urllib3.Timeout(connect=min(self.connect_timeout_s, timeout_s), read=timeout_s)
        response: urllib3.BaseHTTPResponse | None = None
        try:
            response = await self._run(
                lambda: self._pool.request(
                    "GET",
                    url,
                    headers=headers,
                    preload_content=False,
                    decode_content=False,
                    redirect=False,
                    retries=False,
                    timeout=timeout,
                )
            )
            first, end = check_answer(response.status, response.headers, offset, payload.size)
            if first != offset:
                # Resuming from 0 would need the device to drop what it hashed: this URL is simply not used.
                raise SourceUnavailableError(f"the URL ignored the range: it sent the payload from byte {first}")
            answer = response
            while offset < end:
                data = await self._run(partial(answer.read1, min(self.chunk_bytes, end - offset)))
                if not data:
                    break
                offset += len(data)
                yield data
        except (HTTPError, OSError, SourceUnavailableError) as exc:
            self._failed.add(url)
            raise CallError(
                f"GET {payload.payload_id[:12]}: {type(exc).__name__}: {exc}"[:300], HTTP_UNAVAILABLE, transient=False
            ) from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()
