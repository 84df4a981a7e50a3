"""`edgerec serve` installs and serves with only the `serve` extra: no torch, no export tooling."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.device import EdgeClient
from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.registry import Registry, copy_registry
from edgerec.signing import generate_keypair

pytestmark = pytest.mark.torch  # the registry is published with torch, in the test's own environment

STARTUP_DEADLINE_S = 60.0


def _serve_python() -> Path:
    python = os.environ.get("EDGEREC_SERVE_PYTHON", "")
    if not python or not Path(python).exists():
        pytest.skip("set EDGEREC_SERVE_PYTHON to a venv with only edgerec[serve] (`make test` does)")
    return Path(python)


@pytest.fixture
def serve_only_server(published_registry: Registry, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`edgerec serve` from the serve-only environment over a copy of the registry; yields (address, public key)."""
    python = _serve_python()
    registry = tmp_path / "registry"
    copy_registry(published_registry.root, registry)
    generate_keypair(tmp_path / "server.pem", tmp_path / "server.pub")
    edgerec, key = python.parent / "edgerec", tmp_path / "server.pem"
    process = subprocess.Popen(
        [str(edgerec), "serve", "--registry", str(registry), "--listen", "127.0.0.1:0", "--signing-key", str(key)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = _wait_for_address(process)
        yield address, tmp_path / "server.pub"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_address(process: subprocess.Popen[str]) -> str:
    """The address from the server's 'serving ... on HOST:PORT' line."""
    assert process.stderr is not None
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"serving .* on (\S+:\d+)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"server did not start (exit {process.poll()}): {''.join(seen)[-2000:]}")


def test_the_serve_environment_has_no_torch() -> None:
    python = _serve_python()
    probe = "import importlib.util as u; print(all(u.find_spec(m) is None for m in ('torch', 'onnx', 'onnxscript')))"
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "True", run.stderr


def test_serve_without_torch_answers_health_updates_deltas_and_predict(
    serve_only_server: tuple[str, Path], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    address, public_key = serve_only_server
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[no-untyped-call]
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    transport = TransportConfig(check_timeout_s=30, retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.05))
    with EdgeClient(address, "ctr", tmp_path / "device", trusted_keys=[public_key], transport=transport) as client:
        first = client.sync(target_version=1)
        second = client.sync()  # the server makes the 1 -> 2 delta itself, without torch
        assert (first.version, second.version) == (1, 2)
        assert second.codec != "full" and second.payload_bytes < second.full_bytes
    connection = ServerConnection(address, transport)
    try:
        answer = connection.predict("ctr", request_inputs, timeout_s=30)
    finally:
        connection.close()
    assert answer.version == 2
    assert len(answer.scores) == len(request_inputs["sparse_ids"])
