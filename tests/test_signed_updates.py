"""Signed manifests end to end: a server holding a key, devices trusting (or not) its public key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitm import MitmProxy
from servertools import registry_server

from edgerec.device import EdgeClient
from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.errors import FreshnessError, InvalidInputError, RollbackError, SignatureError, UnknownKeyError
from edgerec.registry import Registry
from edgerec.server.freshness import DEFAULT_FRESHNESS_TTL
from edgerec.signing import MAX_NONCE_BYTES, generate_keypair, load_public_key
from edgerec.trust import TrustedKeys, parse_rfc3339, verify_freshness
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    generate_keypair(folder / "other.pem", folder / "other.pub")
    return {name: folder / name for name in ("server.pem", "server.pub", "other.pub")}


@pytest.fixture(scope="module")
def signed_server(published_registry: Registry, keys: dict[str, Path]) -> Iterator[str]:
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(
        ServerConfig(registry=published_registry.root, listen="127.0.0.1:0", signing_key=keys["server.pem"])
    )
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=0)


def test_device_trusting_the_server_key_syncs(signed_server: str, keys: dict[str, Path], tmp_path: Path) -> None:
    with EdgeClient(server=signed_server, model="ctr", data_dir=tmp_path, trusted_keys=[keys["server.pub"]]) as client:
        assert client.sync().version == 2
        manifest = client.store.current()
        assert manifest is not None and manifest.manifest.expires_at, "served manifests carry an expiry"


def test_device_trusting_another_key_refuses_and_keeps_nothing(
    signed_server: str, keys: dict[str, Path], tmp_path: Path
) -> None:
    with EdgeClient(server=signed_server, model="ctr", data_dir=tmp_path, trusted_keys=[keys["other.pub"]]) as client:
        with pytest.raises(UnknownKeyError):
            client.sync()
        assert client.active_version is None and not any(client.store.downloads_dir.iterdir())


def test_device_with_keys_refuses_an_unsigned_server(
    served: tuple[Registry, str], keys: dict[str, Path], tmp_path: Path
) -> None:
    _, address = served
    with EdgeClient(server=address, model="ctr", data_dir=tmp_path, trusted_keys=[keys["server.pub"]]) as client:
        with pytest.raises(FreshnessError, match="no signed freshness statement"):
            client.sync()
        assert client.active_version is None


def test_an_unsigned_manifest_with_a_signed_statement_is_refused(
    published_registry: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    """A server (or anyone in between) that signs its statement but not the manifest: the manifest decides."""
    with (
        registry_server(published_registry, signing_key=keys["server.pem"]) as upstream,
        MitmProxy(upstream) as mitm,
    ):
        mitm.on_check = _strip_manifest_signatures
        with EdgeClient(mitm.address, "ctr", tmp_path, trusted_keys=[keys["server.pub"]]) as client:
            with pytest.raises(SignatureError, match="manifest is unsigned"):
                client.sync()
            assert client.active_version is None


def _strip_manifest_signatures(
    request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
) -> update_pb2.CheckUpdateResponse:
    del response.manifest.signatures[:]
    return response


def test_every_answer_carries_a_statement_for_this_check(
    signed_server: str, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The statement echoes the device's id and nonce and names the latest version and this device's target."""
    with EdgeClient(signed_server, "ctr", tmp_path, device_id="kiosk-9", trusted_keys=[keys["server.pub"]]) as client:
        installed = client.sync(target_version=1)
        latest = client.sync()
        current = client.sync()
        assert client.runtime_info()["verification"] == "ed25519"
    assert (installed.version, installed.latest_version, installed.verification) == (1, 2, "ed25519")
    assert (latest.version, latest.updated, latest.latest_version) == (2, True, 2)
    assert (current.version, current.updated, current.latest_version) == (2, False, 2)
    request = update_pb2.CheckUpdateRequest(
        model="ctr", device_id="kiosk-9", nonce=b"n" * 16, recipes=["int8"], runtimes=["onnxruntime"]
    )
    connection = ServerConnection(signed_server, TransportConfig())
    try:
        signed = connection.check_update(request).freshness
    finally:
        connection.close()
    statement = verify_freshness(
        signed,
        model="ctr",
        device_id="kiosk-9",
        nonce=b"n" * 16,
        trusted=TrustedKeys.from_public_keys([load_public_key(keys["server.pub"])]),
        now=datetime.now(UTC),
    )
    assert (statement.latest_version, statement.target_version) == (2, 2)
    lifetime = parse_rfc3339(statement.expires_at) - parse_rfc3339(statement.issued_at)
    assert lifetime == DEFAULT_FRESHNESS_TTL


def test_a_nonce_longer_than_the_bound_is_an_invalid_argument(signed_server: str) -> None:
    connection = ServerConnection(signed_server, TransportConfig(retry=RetryPolicy(max_attempts=1)))
    try:
        request = update_pb2.CheckUpdateRequest(model="ctr", nonce=b"\x01" * MAX_NONCE_BYTES)
        assert connection.check_update(request).freshness.signatures
        request.nonce = b"\x01" * (MAX_NONCE_BYTES + 1)
        with pytest.raises(InvalidInputError, match=r"INVALID_ARGUMENT.*nonce"):
            connection.check_update(request)
    finally:
        connection.close()


def test_an_older_version_is_never_installed_again(signed_server: str, keys: dict[str, Path], tmp_path: Path) -> None:
    trusted = [keys["server.pub"]]
    with EdgeClient(server=signed_server, model="ctr", data_dir=tmp_path, trusted_keys=trusted) as client:
        client.sync(target_version=1)
        client.sync()
        with pytest.raises(RollbackError):
            client.sync(target_version=1)
        assert client.active_version == 2
    # A restarted device that rolled back from 2 remembers it: the sync says 2 is held back and installs nothing.
    with EdgeClient(server=signed_server, model="ctr", data_dir=tmp_path, trusted_keys=trusted) as restarted:
        assert restarted.store.rollback().version == 1
        held = restarted.sync()
        assert (held.updated, held.version, held.held_back_version) == (False, 1, 2)
        assert restarted.active_version == 1


def test_a_freshness_lifetime_must_be_positive(tmp_path: Path) -> None:
    from edgerec.server.app import ServerConfig

    with pytest.raises(ValueError, match="freshness_ttl"):
        ServerConfig(registry=tmp_path, freshness_ttl=timedelta(0))
