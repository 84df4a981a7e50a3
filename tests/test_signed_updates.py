"""Signed manifests end to end: a server holding a key, devices trusting (or not) its public key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerec.device import EdgeClient
from edgerec.errors import RollbackError, SignatureError, UnknownKeyError
from edgerec.registry import Registry
from edgerec.signing import generate_keypair

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
        with pytest.raises(SignatureError):
            client.sync()
        assert client.active_version is None


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
