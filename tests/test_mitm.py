"""The man-in-the-middle test tool itself: an honest pass-through changes nothing, and a rewrite reaches the device."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitm import MitmProxy
from servertools import registry_server

from edgerec.device import EdgeClient
from edgerec.device.transport import RetryPolicy, TransportConfig
from edgerec.errors import IntegrityError, PatchError
from edgerec.registry import Registry
from edgerec.signing import generate_keypair
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch

FAST = TransportConfig(check_timeout_s=5, retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.02, backoff_max_s=0.1))


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "server.pem", tmp_path / "server.pub")
    return tmp_path / "server.pem", tmp_path / "server.pub"


def test_a_pass_through_proxy_delivers_the_servers_update(published_registry: Registry, tmp_path: Path) -> None:
    pem, pub = _keys(tmp_path)
    with (
        registry_server(published_registry, signing_key=pem) as upstream,
        MitmProxy(upstream) as mitm,
        EdgeClient(mitm.address, "ctr", tmp_path / "device", trusted_keys=[pub], transport=FAST) as client,
    ):
        result = client.sync(target_version=1)
    assert result.version == 1 and result.updated
    kinds = {type(r).__name__ for r in mitm.requests}
    assert kinds == {"CheckUpdateRequest", "FetchPayloadRequest"}


def test_bytes_the_proxy_substitutes_reach_the_device_and_are_refused_before_install(
    published_registry: Registry, tmp_path: Path
) -> None:
    pem, pub = _keys(tmp_path)
    with registry_server(published_registry, signing_key=pem) as upstream, MitmProxy(upstream) as mitm:

        def same_length_other_bytes(
            request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
        ) -> update_pb2.CheckUpdateResponse:
            for payload in response.payloads:
                fake = mitm.serve_payload(b"\x00" * payload.size)
                payload.payload_id = payload.sha256 = fake
            return response

        mitm.on_check = same_length_other_bytes
        with EdgeClient(mitm.address, "ctr", tmp_path / "device", trusted_keys=[pub], transport=FAST) as client:
            with pytest.raises((IntegrityError, PatchError)):
                client.sync(target_version=1)
            assert client.active_version is None
