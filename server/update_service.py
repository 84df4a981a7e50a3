"""The ModelUpdate gRPC service: CheckUpdate plans, FetchPayload streams payload bytes."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator

import grpc

from edgerec import grpc_status
from edgerec.errors import EdgerecError, InvalidInputError
from edgerec.registry import Registry
from edgerec.server.limits import device_rate, paced_chunk_bytes, stream_bucket
from edgerec.server.planner import UpdatePlanner
from edgerec.v1 import update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 1024 * 1024


class ModelUpdateService(update_pb2_grpc.ModelUpdateServicer):
    """Serves update plans and resumable payload streams from a registry."""

    def __init__(self, registry: Registry, planner: UpdatePlanner) -> None:
        self.registry = registry
        self.planner = planner

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        try:
            return self.planner.plan(request)
        except EdgerecError as exc:
            log.info("CheckUpdate %s refused: %s", request.model, exc)
            grpc_status.abort(context, exc)
            raise AssertionError("unreachable") from exc

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        try:
            record = self.registry.payload(request.model, _payload_id(request.payload_id))
            if request.offset > record.size:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"offset {request.offset} is past the payload's {record.size} bytes",
                )
            path = self.registry.payload_path(request.model, record.payload_id)
        except EdgerecError as exc:
            grpc_status.abort(context, exc)
            raise AssertionError("unreachable") from exc
        chunk_size = request.max_chunk_bytes if 0 < request.max_chunk_bytes <= MAX_CHUNK_BYTES else MAX_CHUNK_BYTES
        # The device's own bandwidth cap: paced here, so the device reads as fast as bytes come and its
        # receive window holds little unread (what a cut loses). The server's caps pace on top of it.
        rate = device_rate(request.max_bytes_per_second)
        bucket = None
        if rate is not None:
            chunk_size = paced_chunk_bytes(rate, chunk_size)
            bucket = stream_bucket(rate, chunk_size)
        offset = request.offset
        with path.open("rb") as f:
            f.seek(offset)
            while context.is_active():
                data = f.read(chunk_size)
                if not data:
                    break
                if bucket is not None:
                    bucket.consume(len(data))
                yield update_pb2.PayloadChunk(offset=offset, data=data, total_size=record.size, crc32=zlib.crc32(data))
                offset += len(data)


def _payload_id(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidInputError(f"payload_id must be 64 lowercase hex digits, got {value[:80]!r}")
    return value
