"""The device's gRPC connections: update checks, payload streams (FetchPayload) and fallback predictions.

:class:`ServerConnection` is one server: one channel shared by its calls, and a
:class:`~edgerec.device.transport.base.PayloadTransport` for its FetchPayload stream.
:class:`ServerPool` is the list of servers a device was given (or one DNS name, whose addresses
gRPC itself tries in turn): calls go to the one that answered last and fail over to the next.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np

from edgerec import tensors
from edgerec.device.transport.base import (
    FetchJob,
    PayloadTransport,
    ProgressCallback,
    SourceUnavailableError,
    StallWatch,
)
from edgerec.device.transport.channel import make_channel
from edgerec.device.transport.config import TransportConfig
from edgerec.device.transport.retry import RetryPolicy
from edgerec.errors import EdgerecError, IntegrityError, TransportError
from edgerec.grpc_status import ERROR_METADATA_KEY, RETRYABLE_CODES, error_from_rpc
from edgerec.tokens import device_id_of
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)


class ServerConnection(PayloadTransport):
    """One channel to one server, shared by update, payload and inference calls."""

    name = "grpc"

    def __init__(
        self,
        target: str,
        config: TransportConfig | None = None,
        *,
        tls_ca: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.target = target
        self.config = config or TransportConfig()
        # A token is "<device_id>.<secret>": requests name that device (the server refuses any other).
        self.device_id = device_id_of(token)
        self._channel = make_channel(target, tls_ca=tls_ca, token=token, options=self.config.channel_options())
        self._update = update_pb2_grpc.ModelUpdateStub(self._channel)  # type: ignore[no-untyped-call]
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self.bytes_received = 0

    def close(self) -> None:
        self._channel.close()

    def describe(self) -> str:
        return f"grpc {self.target}"

    def payload_transports(self) -> Sequence[PayloadTransport]:
        return [self]

    # --- update checks ----------------------------------------------------------------------

    def check_update(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        """The server's plan for ``request``; a transient failure (a cut link) is retried by ``config.retry``.

        A deliberate refusal by the server is raised at once as its typed error. With
        ``download_deadline_s`` set, the check and its retries end by then.
        """
        return ServerPool.of(self).check_update(request)

    def check_update_once(
        self, request: update_pb2.CheckUpdateRequest, timeout_s: float
    ) -> update_pb2.CheckUpdateResponse:
        """One CheckUpdate call: SourceUnavailableError when it may pass on a retry, else the server's typed error."""
        if not request.device_id and self.device_id:
            named = update_pb2.CheckUpdateRequest()
            named.CopyFrom(request)
            named.device_id = self.device_id
            request = named
        try:
            response: update_pb2.CheckUpdateResponse = self._update.CheckUpdate(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            what = f"CheckUpdate {request.model} at {self.target}"
            if not _transient(exc):
                raise error_from_rpc(exc, what) from exc
            raise SourceUnavailableError(f"{what}: {_code(exc)}") from exc
        return response

    # --- predictions ------------------------------------------------------------------------

    def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], version: int = 0, timeout_s: float | None = None
    ) -> inference_pb2.PredictResponse:
        request = inference_pb2.PredictRequest(
            model=model,
            version=version,
            inputs={name: tensors.to_proto(a) for name, a in inputs.items()},
            device_id=self.device_id,
        )
        timeout = timeout_s or self.config.predict_timeout_s
        call = self._inference.Predict.future(request, timeout=timeout)
        try:
            # Waiting on the future wakes on time; gRPC's own deadline fires late on a busy CPU.
            response: inference_pb2.PredictResponse = call.result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            call.cancel()
            raise TransportError(f"Predict {model}: no answer within {timeout:.3g} s") from exc
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"Predict {model}") from exc
        return response

    # --- payloads ---------------------------------------------------------------------------

    def download(
        self,
        model: str,
        payload: update_pb2.Payload,
        part_file: Path,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Fetch a payload from this server alone into ``part_file``; return the finished file.

        See :meth:`edgerec.device.transport.fetcher.PayloadFetcher.download` (a fetcher whose
        only source is this server).
        """
        from edgerec.device.transport.fetcher import PayloadFetcher

        fetcher = PayloadFetcher(self.config, servers=self.payload_transports)
        report = None if progress is None else (lambda done, total, source: progress(done, total))
        return fetcher.download(model, payload, part_file, on_write=report).path

    def fetch(self, job: FetchJob) -> None:
        """One FetchPayload stream from ``job.offset``: each chunk's offset, length and CRC-32 checked, then written."""
        config = self.config
        rate = min((r for r in (config.rate_bytes_per_s, config.read_pace_bytes_per_s) if r), default=0)
        payload = job.payload
        request = update_pb2.FetchPayloadRequest(
            model=job.model,
            payload_id=payload.payload_id,
            offset=job.offset,
            max_chunk_bytes=config.chunk_limit(),
            device_id=self.device_id,
            max_bytes_per_second=max(1, round(rate)) if rate else 0,
        )
        stream = self._update.FetchPayload(request, timeout=max(job.remaining_s(), 0.001))
        watch = StallWatch(stream.cancel, job.idle_timeout_s)  # the stream's own timeout is the deadline
        try:
            for chunk in stream:
                watch.touch()
                offset = job.offset
                # Another payload, or more bytes than the plan's length: refused before a byte is written.
                if chunk.offset != offset or chunk.total_size != payload.size:
                    raise IntegrityError(
                        f"server sent bytes at {chunk.offset} of {chunk.total_size}, "
                        f"expected {offset} of {payload.size}"
                    )
                if len(chunk.data) > payload.size - offset:
                    raise IntegrityError(
                        f"server sent more bytes than the payload's {payload.size} (at offset {offset})"
                    )
                if zlib.crc32(chunk.data) != chunk.crc32:
                    raise IntegrityError(f"chunk at {offset} failed its CRC-32 check")
                job.write(chunk.data)
                self.bytes_received += len(chunk.data)
        except grpc.RpcError as exc:
            if watch.fired:
                raise SourceUnavailableError(watch.fired) from None
            if not _transient(exc):
                raise error_from_rpc(exc, f"FetchPayload {payload.payload_id[:12]}") from exc
            raise SourceUnavailableError(_code(exc)) from exc
        finally:
            watch.stop()
            stream.cancel()
        if job.offset < payload.size:
            raise SourceUnavailableError("stream ended early")


class ServerPool:
    """The device's servers in order of preference; calls fail over to the next when one is unreachable.

    ``preferred`` is the server that answered last: Predict, status reports and downloads go
    there first. A DNS name that resolves to several addresses needs no pool: gRPC's channel
    tries them in turn.
    """

    def __init__(self, connections: Sequence[ServerConnection]) -> None:
        if not connections:
            raise ValueError("a server pool needs at least one server")
        self.connections = list(connections)
        self.config = self.connections[0].config
        self.device_id = self.connections[0].device_id
        self._preferred = 0

    @classmethod
    def connect(
        cls,
        targets: Sequence[str],
        config: TransportConfig,
        *,
        tls_ca: Path | None = None,
        token: str | None = None,
    ) -> ServerPool:
        return cls([ServerConnection(target, config, tls_ca=tls_ca, token=token) for target in targets])

    @classmethod
    def of(cls, connection: ServerConnection) -> ServerPool:
        return cls([connection])

    @property
    def preferred(self) -> ServerConnection:
        return self.connections[self._preferred]

    def failed(self, connection: ServerConnection) -> None:
        """``connection`` could not be reached: the next server becomes the preferred one."""
        if connection is self.preferred and len(self.connections) > 1:
            self._preferred = (self._preferred + 1) % len(self.connections)
            log.warning("%s is unreachable; preferring %s", connection.target, self.preferred.target)

    def answered(self, connection: ServerConnection) -> None:
        """``connection`` answered: it stays (or becomes) the preferred one."""
        self._preferred = self.connections.index(connection)

    def in_order(self) -> list[ServerConnection]:
        """Every server, the preferred one first."""
        first = self._preferred
        return self.connections[first:] + self.connections[:first]

    def payload_transports(self) -> Sequence[PayloadTransport]:
        return self.in_order()

    @property
    def bytes_received(self) -> int:
        return sum(c.bytes_received for c in self.connections)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    def check_update(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        """The plan from the first server that answers; each failure moves on to the next, by ``config.retry``.

        A deliberate refusal is raised at once as its typed error. With ``download_deadline_s``
        set, the check and its retries end by then. Waits come after a whole round of servers failed.
        """
        retry: RetryPolicy = self.config.retry.start(self.config.download_deadline_s)
        what = f"CheckUpdate {request.model}"
        servers = self.in_order()
        attempt = 0
        while True:
            connection = servers[attempt % len(servers)]
            attempt += 1
            try:
                response = connection.check_update_once(request, retry.timeout(self.config.check_timeout_s))
            except SourceUnavailableError as exc:
                self.failed(connection)
                retry = retry.next(str(exc), what)
                if attempt % len(servers) == 0:
                    log.warning("%s failed (%s); retrying in %.2fs", what, exc, retry.delay_s)
                    retry.sleep()
                continue
            except EdgerecError:
                raise
            self.answered(connection)
            return response


def _code(exc: grpc.RpcError) -> str:
    return exc.code().name if isinstance(exc, grpc.Call) else "unknown"


def _transient(exc: grpc.RpcError) -> bool:
    """Whether a failed call may succeed when tried again: a retryable status that is no deliberate refusal.

    A status the server chose (it names an edgerec error in the trailing metadata) stays the same on a retry.
    """
    if not isinstance(exc, grpc.Call):
        return True
    if exc.code() not in RETRYABLE_CODES:
        return False
    return not any(key == ERROR_METADATA_KEY for key, _ in exc.trailing_metadata() or ())
