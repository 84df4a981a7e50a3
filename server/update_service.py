"""The ModelUpdate gRPC service: CheckUpdate plans, FetchPayload streams payload bytes."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator

import grpc

from edgerec import grpc_status
from edgerec.errors import EdgerecError, InvalidInputError, ManifestError
from edgerec.manifest import validate_model_name
from edgerec.registry import ModelRegistry
from edgerec.server.limits import device_rate, paced_burst_chunks, paced_chunk_bytes, stream_bucket
from edgerec.server.planner import UpdatePlanner
from edgerec.server.progress import DEFAULT_MIN_RATE
from edgerec.server.throttled_log import ThrottledLog
from edgerec.v1 import update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)
_refusals = ThrottledLog(log)

MAX_CHUNK_BYTES = 1024 * 1024


class ModelUpdateService(update_pb2_grpc.ModelUpdateServicer):
    """Serves update plans and resumable payload streams from a registry.

    ``min_stream_rate`` (bytes per second) is the slowest pace a device may ask for: a stream must
    move at least that much to keep its slot (edgerec.server.progress), so the server never paces below it.
    """

    def __init__(
        self, registry: ModelRegistry, planner: UpdatePlanner, *, min_stream_rate: float = DEFAULT_MIN_RATE
    ) -> None:
        self.registry = registry
        self.planner = planner
        self.min_stream_rate = min_stream_rate

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        try:
            _model_name(request.model)
            return self.planner.plan(request)
        except EdgerecError as exc:
            _refusals.info("CheckUpdate %r refused: %s", request.model[:80], grpc_status.bounded_details(str(exc), 200))
            grpc_status.abort(context, exc)

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        try:
            record = self.registry.payload(_model_name(request.model), _payload_id(request.payload_id))
            if request.offset > record.size:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"offset {request.offset} is past the payload's {record.size} bytes",
                )
            payload = self.registry.open_payload(request.model, record.payload_id)
        except EdgerecError as exc:
            _refusals.info(
                "FetchPayload %r refused: %s", request.model[:80], grpc_status.bounded_details(str(exc), 200)
            )
            grpc_status.abort(context, exc)
        chunk_size = request.max_chunk_bytes if 0 < request.max_chunk_bytes <= MAX_CHUNK_BYTES else MAX_CHUNK_BYTES
        # The device's own bandwidth cap: paced here, so the device reads as fast as bytes come and its
        # receive window holds little unread (what a cut loses). The server's caps pace on top of it.
        rate = device_rate(request.max_bytes_per_second, self.min_stream_rate)
        bucket = None
        burst = 1
        if rate is not None:
            chunk_size = paced_chunk_bytes(rate, chunk_size)
            burst = paced_burst_chunks(rate, chunk_size)
            bucket = stream_bucket(rate, chunk_size * burst)
        offset = request.offset
        with payload as f:
            f.seek(offset)
            while offset < record.size and context.is_active():
                if bucket is not None:
                    # Paced before reading, and nothing kept between blocks: a thousand sleeping
                    # streams hold no payload bytes.
                    bucket.consume(min(chunk_size * burst, record.size - offset))
                block = f.read(min(chunk_size * burst, record.size - offset))
                if not block:
                    break
                for start in range(0, len(block), chunk_size):
                    data = block[start : start + chunk_size]
                    yield update_pb2.PayloadChunk(
                        offset=offset, data=data, total_size=record.size, crc32=zlib.crc32(data)
                    )
                    offset += len(data)
                block = data = b""


def _model_name(value: str) -> str:
    """A request's model name; a malformed one is the caller's error (INVALID_ARGUMENT), not the registry's."""
    try:
        return validate_model_name(value)
    except ManifestError as exc:
        raise InvalidInputError(str(exc)) from None


def _payload_id(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidInputError(f"payload_id must be 64 lowercase hex digits, got {value[:80]!r}")
    return value
