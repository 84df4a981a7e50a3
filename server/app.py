"""Builds and runs the model-push gRPC server: updates, fallback inference, health, reflection."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgerec.registry import Registry
from edgerec.server.inference_service import InferenceService
from edgerec.server.payloads import DEFAULT_GENERIC_DIFF_MAX_BYTES, PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.server.signer import DEFAULT_TTL, ManifestSigner
from edgerec.server.update_service import ModelUpdateService
from edgerec.signing import load_private_key
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    update_pb2.DESCRIPTOR.services_by_name["ModelUpdate"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
)


@dataclass(frozen=True)
class ServerConfig:
    """Server settings, with their defaults."""

    registry: Path
    listen: str = "127.0.0.1:50051"
    workers: int = 16
    # Predict requests carry tensors; a 1 MiB chunk plus framing fits in the default 4 MiB.
    max_receive_bytes: int = 16 * 1024 * 1024
    generic_diff_max_bytes: int = DEFAULT_GENERIC_DIFF_MAX_BYTES
    # Ed25519 private key (PEM) to sign manifests with; None serves them unsigned.
    signing_key: Path | None = None
    manifest_ttl: timedelta = DEFAULT_TTL


class RunningServer:
    """A started server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(config: ServerConfig) -> RunningServer:
    """Start serving ``config.registry`` on ``config.listen`` and return at once."""
    registry = Registry(config.registry)
    payloads = PayloadStore(registry, generic_diff_max_bytes=config.generic_diff_max_bytes)
    signer = ManifestSigner(load_private_key(config.signing_key), config.manifest_ttl) if config.signing_key else None
    if signer is None:
        log.warning("no signing key: manifests are served unsigned; devices that trust keys will refuse them")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="edgerec-rpc"),
        options=[("grpc.max_receive_message_length", config.max_receive_bytes)],
    )
    update_pb2_grpc.add_ModelUpdateServicer_to_server(  # type: ignore[no-untyped-call]
        ModelUpdateService(registry, UpdatePlanner(registry, payloads, signer)), server
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(registry), server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    server.start()
    log.info("serving registry %s on port %d", config.registry, port)
    return RunningServer(server, port, health_servicer)
