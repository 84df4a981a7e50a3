"""Helpers for tests that serve on loopback: the real server over a registry, or a hand-made (often
misbehaving) ModelUpdate service."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from edgerec.registry import Registry
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


@contextlib.contextmanager
def registry_server(registry: Registry, **settings: Any) -> Iterator[str]:
    """The real server (``edgerec serve``) over ``registry`` on a free loopback port, with ServerConfig
    ``settings``; yields its address."""
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", **settings))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)
