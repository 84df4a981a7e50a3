"""Helpers for tests that serve a hand-made (often misbehaving) ModelUpdate service on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc

from edgerec.server.update_service import ModelUpdateService
from edgerec.v1 import update_pb2_grpc


@contextlib.contextmanager
def update_server(service: ModelUpdateService) -> Iterator[str]:
    """A gRPC server on loopback serving ``service`` (a real ModelUpdateService or a subclass); yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-update-rpc"))
    update_pb2_grpc.add_ModelUpdateServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0).wait()
