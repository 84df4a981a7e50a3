"""Attacks on the update channel end to end, in the spirit of TUF's repository simulator.

A real gRPC server on loopback, built from the server's own classes: a misbehaving one is a
subclass of the real ModelUpdateService, a server signing with another key, or a real server
over a registry tampered with on disk. A real device: EdgeClient over real files, trusting the
honest server's public key, with a model already active. Every attack must be refused with its
precise error class from ``edgerec.errors`` and leave the active model as it was: the same
version, byte-identical files and state, no staging left, and local predictions still served.
"""

from __future__ import annotations

import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servertools import registry_server, update_server

from edgerec.codecs import make_patch
from edgerec.device import EdgeClient
from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.errors import (
    EdgerecError,
    ExpiredError,
    FreshnessError,
    IntegrityError,
    ManifestError,
    SignatureError,
    TransportError,
    UnknownKeyError,
    WrongBaseError,
    WrongModelError,
)
from edgerec.hashing import sha256_file
from edgerec.manifest import Manifest, SignedManifest, parse_manifest
from edgerec.registry import PayloadRecord, Registry, copy_registry
from edgerec.server.freshness import FreshnessSigner
from edgerec.server.payloads import PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.server.signer import ManifestSigner
from edgerec.server.update_service import ModelUpdateService
from edgerec.signing import generate_keypair, load_private_key, sign_manifest
from edgerec.tools import faults
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch

MODEL = "ctr"
# Retries quick enough for a test, and a deadline no honest loopback sync of the tiny model comes near.
FAST = TransportConfig(check_timeout_s=5, retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.02, backoff_max_s=0.1))


# --- keys, servers and devices ---------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    server: Ed25519PrivateKey  # the honest server's key, which devices trust
    server_pem: Path
    server_pub: Path
    other_pem: Path  # a key nobody trusts


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("attack-keys")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    generate_keypair(folder / "other.pem", folder / "other.pub")
    return Keys(
        load_private_key(folder / "server.pem"), folder / "server.pem", folder / "server.pub", folder / "other.pem"
    )


def _planner(registry: Registry, signer: ManifestSigner) -> UpdatePlanner:
    return UpdatePlanner(registry, PayloadStore(registry), signer, FreshnessSigner(signer.private_key))


@dataclass(frozen=True)
class Devices:
    """Data dirs of devices that synced from the honest server, copied for each attack."""

    at_v1: Path
    at_v2: Path
    v1_answer: update_pb2.CheckUpdateResponse  # the honest, signed answer that installs version 1


@pytest.fixture(scope="module")
def devices(published_registry: Registry, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Devices:
    root = tmp_path_factory.mktemp("attack-devices")
    with registry_server(published_registry, signing_key=keys.server_pem) as address:
        with _client(address, root / "v1", keys) as client:
            assert client.sync(target_version=1).version == 1
        with _client(address, root / "v2", keys) as client:
            client.sync(target_version=1)
            assert client.sync().version == 2
        recorder = ServerConnection(address, FAST)
        try:
            request = update_pb2.CheckUpdateRequest(
                model=MODEL, target_version=1, recipes=["int8", "fp32"], codecs=["full"], runtimes=["onnxruntime"]
            )
            v1_answer = recorder.check_update(request)
        finally:
            recorder.close()
    return Devices(root / "v1", root / "v2", v1_answer)


def _client(address: str, data_dir: Path, keys: Keys, transport: TransportConfig = FAST) -> EdgeClient:
    return EdgeClient(
        server=address, model=MODEL, data_dir=data_dir, trusted_keys=[keys.server_pub], transport=transport
    )


def _device(template: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "device"
    shutil.copytree(template, data_dir)
    return data_dir


def _snapshot(data_dir: Path) -> dict[str, bytes]:
    """Every byte of the installed versions and the state file."""
    root = data_dir / MODEL
    files = [root / "state.json", *(p for p in (root / "versions").rglob("*") if p.is_file())]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def attack(
    address: str,
    data_dir: Path,
    keys: Keys,
    registry: Registry,
    expected: type[EdgerecError],
    *,
    transport: TransportConfig = FAST,
) -> EdgerecError:
    """Sync ``data_dir`` from ``address``: it must raise exactly ``expected`` and change nothing active."""
    before = _snapshot(data_dir)
    with _client(address, data_dir, keys, transport) as client:
        active = client.active_version
        assert active is not None
        with pytest.raises(EdgerecError) as info:
            client.sync()
        assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
        assert client.active_version == active
        assert not list(client.store.staging_dir.iterdir()), "staging left behind"
    assert _snapshot(data_dir) == before, "the active model's files or state changed"
    assert not faults.local_prediction_problems(data_dir, faults.input_specs(registry, active), active)
    return info.value


@pytest.fixture
def registry_copy(published_registry: Registry, tmp_path: Path) -> Registry:
    """A private copy of the published registry, to tamper with."""
    copy = tmp_path / "registry-copy"
    copy_registry(published_registry.root, copy)
    return Registry(copy)


# --- the manifest: signatures, keys, versions, expiry, model -------------------------------


class ForgingService(ModelUpdateService):
    """Serves real plans, but with the manifest's signature or signed bytes forged."""

    def __init__(self, registry: Registry, planner: UpdatePlanner, forge: str, forger: Ed25519PrivateKey) -> None:
        super().__init__(registry, planner)
        self.forge = forge
        self.forger = forger

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        response = super().CheckUpdate(request, context)
        signature = response.manifest.signatures[0]
        if self.forge == "signature":  # signed by another key, claiming the trusted key's id
            signature.signature = self.forger.sign(response.manifest.manifest)
        else:  # the signed bytes changed afterwards: the manifest now promises other file hashes
            manifest = parse_manifest(response.manifest)
            for artifact in manifest.artifacts:
                for f in artifact.files:
                    f.sha256 = "0" * 64
            response.manifest.manifest = manifest.SerializeToString(deterministic=True)
        return response


@pytest.mark.parametrize("forge", ["signature", "signed-bytes"])
def test_a_forged_signature_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path, forge: str
) -> None:
    signer = ManifestSigner(keys.server)
    service = ForgingService(
        published_registry, _planner(published_registry, signer), forge, Ed25519PrivateKey.generate()
    )
    with update_server(service) as address:
        error = attack(address, _device(devices.at_v1, tmp_path), keys, published_registry, SignatureError)
    assert "invalid signature by trusted key" in str(error)


def test_a_manifest_signed_by_an_unknown_key_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    with registry_server(published_registry, signing_key=keys.other_pem) as address:
        attack(address, _device(devices.at_v1, tmp_path), keys, published_registry, UnknownKeyError)


class ReplayService(ModelUpdateService):
    """Answers every update check with a recorded answer: validly signed, unexpired, and old."""

    def __init__(self, registry: Registry, planner: UpdatePlanner, recorded: update_pb2.CheckUpdateResponse) -> None:
        super().__init__(registry, planner)
        self.recorded = recorded

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        return self.recorded


def test_a_replayed_older_version_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    assert parse_manifest(devices.v1_answer.manifest).version == 1 and devices.v1_answer.update_available
    service = ReplayService(
        published_registry, _planner(published_registry, ManifestSigner(keys.server)), devices.v1_answer
    )
    with update_server(service) as address:
        attack(address, _device(devices.at_v2, tmp_path), keys, published_registry, FreshnessError)


class BackdatedSigner(ManifestSigner):
    """Signs with the trusted key, but as if two ttls ago: every manifest is already expired."""

    def sign(self, manifest: Manifest) -> SignedManifest:
        return sign_manifest(manifest, self.private_key, expires_in=self.ttl, now=datetime.now(UTC) - 2 * self.ttl)


def test_an_expired_manifest_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    signer = BackdatedSigner(keys.server, timedelta(hours=1))
    with update_server(ModelUpdateService(published_registry, _planner(published_registry, signer))) as address:
        attack(address, _device(devices.at_v1, tmp_path), keys, published_registry, ExpiredError)


class OtherModelService(ModelUpdateService):
    """Answers with a manifest correctly signed by the trusted key, but of another model."""

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        response = super().CheckUpdate(request, context)
        manifest = parse_manifest(response.manifest)
        manifest.model = "another-model"
        assert self.planner.signer is not None
        response.manifest.CopyFrom(self.planner.signer.sign(manifest))
        return response


def test_a_manifest_of_another_model_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    signer = ManifestSigner(keys.server)
    with update_server(OtherModelService(published_registry, _planner(published_registry, signer))) as address:
        attack(address, _device(devices.at_v1, tmp_path), keys, published_registry, WrongModelError)


class MixAndMatchService(ModelUpdateService):
    """A valid manifest of the latest version with the payload plan of another one."""

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        response = super().CheckUpdate(request, context)
        older = update_pb2.CheckUpdateRequest()
        older.CopyFrom(request)
        older.current_version, older.current_sha256, older.current_recipe, older.target_version = 0, "", "", 1
        plan = self.planner.plan(older)
        del response.payloads[:]
        response.payloads.extend(plan.payloads)
        return response


def test_a_valid_manifest_with_another_versions_plan_is_refused(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    signer = ManifestSigner(keys.server)
    with update_server(MixAndMatchService(published_registry, _planner(published_registry, signer))) as address:
        attack(address, _device(devices.at_v1, tmp_path), keys, published_registry, ManifestError)


# --- the bytes: swapped artifacts, endless data, slow retrieval, wrong base -------------------


@pytest.mark.parametrize("swapped", ["artifact-files", "payload-files"])
def test_bytes_swapped_behind_a_valid_manifest_are_refused(
    registry_copy: Registry, keys: Keys, devices: Devices, tmp_path: Path, swapped: str
) -> None:
    """The registry on disk is tampered with; the signed manifest still names the true hashes.

    artifact-files: version 2's files are replaced by version 1's (a real, loadable model) and the
    stored payloads dropped, so the server itself makes its payloads from the swapped files.
    payload-files: every stored payload has a byte flipped (same length).
    """
    registry = registry_copy
    if swapped == "artifact-files":
        for f in registry.files(MODEL, 2):
            old = registry.file_path(MODEL, 1, f.path)
            target = registry.file_path(MODEL, 2, f.path)
            if old.exists():
                shutil.copyfile(old, target)
            else:
                data = bytearray(target.read_bytes())
                data[len(data) // 2] ^= 0xFF
                target.write_bytes(bytes(data))
        shutil.rmtree(registry.root / "payloads", ignore_errors=True)
    with registry_server(registry, signing_key=keys.server_pem) as address:
        if swapped == "payload-files":
            with _client(address, tmp_path / "warm-up", keys) as warm:  # the server makes and stores its payloads
                warm.sync(target_version=1)
                warm.sync()
            for payload in (registry.root / "payloads").rglob("*.erpatch"):
                data = bytearray(payload.read_bytes())
                data[len(data) // 2] ^= 0x01
                payload.write_bytes(bytes(data))
        attack(address, _device(devices.at_v1, tmp_path), keys, registry, IntegrityError)


class EndlessService(ModelUpdateService):
    """Streams the real payload, then keeps streaming well-formed chunks past its end (or claims a longer one)."""

    def __init__(self, registry: Registry, planner: UpdatePlanner, mode: str) -> None:
        super().__init__(registry, planner)
        self.mode = mode
        self.extra_chunks = 0

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        size = self.registry.payload(request.model, request.payload_id).size
        offset = request.offset
        for chunk in super().FetchPayload(request, context):
            if self.mode == "longer":
                chunk.total_size = size * 4
            offset = chunk.offset + len(chunk.data)
            yield chunk
        junk = bytes(4096)
        while context.is_active() and self.extra_chunks < 10_000:
            self.extra_chunks += 1
            total = size * 4 if self.mode == "longer" else size
            yield update_pb2.PayloadChunk(offset=offset, data=junk, total_size=total, crc32=zlib.crc32(junk))
            offset += len(junk)


@pytest.mark.parametrize("mode", ["past-the-end", "longer"])
def test_endless_data_is_cut_off_at_the_planned_length(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path, mode: str
) -> None:
    service = EndlessService(published_registry, _planner(published_registry, ManifestSigner(keys.server)), mode)
    data_dir = _device(devices.at_v1, tmp_path)
    with update_server(service) as address:
        attack(address, data_dir, keys, published_registry, IntegrityError)
    # The device stopped at the first chunk past the plan and wrote none of it (the delta and then the full
    # file); the server got out at most what gRPC's receive window had room for before the cancel landed,
    # far below the 10,000 junk chunks (40 MB) it would send to a device that kept reading.
    extra_bytes = service.extra_chunks * 4096
    assert extra_bytes <= 4 << 20, f"the server got to send {extra_bytes} bytes past the plan"
    for part in (data_dir / MODEL / "downloads").iterdir():
        record = published_registry.payload(MODEL, part.name.split(".")[0])
        assert part.stat().st_size <= record.size


class SlowService(ModelUpdateService):
    """Sends the real bytes, but never fast enough: 16 bytes every 50 ms, or one chunk and then silence."""

    def __init__(self, registry: Registry, planner: UpdatePlanner, mode: str) -> None:
        super().__init__(registry, planner)
        self.mode = mode

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        request.max_chunk_bytes = 16
        for chunk in super().FetchPayload(request, context):
            yield chunk
            if self.mode == "stall":
                while context.is_active():
                    time.sleep(0.02)
                return
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_slow_retrieval_stops_at_the_download_deadline(
    published_registry: Registry, keys: Keys, devices: Devices, tmp_path: Path, mode: str
) -> None:
    service = SlowService(published_registry, _planner(published_registry, ManifestSigner(keys.server)), mode)
    deadline = TransportConfig(
        check_timeout_s=5, download_deadline_s=1.0, retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.02)
    )
    started = time.monotonic()
    with update_server(service) as address:
        error = attack(
            address, _device(devices.at_v1, tmp_path), keys, published_registry, TransportError, transport=deadline
        )
    assert "deadline" in str(error)
    assert time.monotonic() - started < 10


class WrongBaseService(ModelUpdateService):
    """Plans deltas made from another base than the file the device runs, while claiming its file as the base.

    every-answer: the full files the device then asks for are planned as the same deltas.
    delta-only: the full files are honest, so the device's single fallback installs the new version.
    """

    def __init__(self, registry: Registry, planner: UpdatePlanner, mode: str, scratch: Path) -> None:
        super().__init__(registry, planner)
        self.mode = mode
        self.scratch = scratch
        self.forged: dict[str, update_pb2.Payload] = {}  # target path -> forged delta plan

    def CheckUpdate(
        self, request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext
    ) -> update_pb2.CheckUpdateResponse:
        response = super().CheckUpdate(request, context)
        if request.current_version:
            for payload in response.payloads:
                if payload.codec in ("full", "copy"):
                    continue
                target = parse_manifest(response.manifest).version
                self.forged[payload.path] = self._forge(request.model, request.current_version, target, payload)
                payload.CopyFrom(self.forged[payload.path])
            assert self.forged, "the plan held no delta to forge"
        elif self.mode == "every-answer":
            for payload in response.payloads:
                if payload.path in self.forged:
                    payload.CopyFrom(self.forged[payload.path])
        return response

    def _forge(self, model: str, base_version: int, target: int, honest: update_pb2.Payload) -> update_pb2.Payload:
        """A ``honest.codec`` delta to the true target from the device's file with one byte changed."""
        other_base = self.scratch / f"other-base-{honest.path.replace('/', '_')}"
        data = bytearray(self.registry.local_file(model, base_version, honest.base_path).read_bytes())
        data[len(data) // 3] ^= 0x10
        other_base.write_bytes(bytes(data))
        delta = self.scratch / "delta"
        make_patch(honest.codec, other_base, self.registry.local_file(model, target, honest.path), delta)
        payload_id = sha256_file(delta)
        record = PayloadRecord(
            payload_id, model, honest.codec, sha256_file(other_base), honest.target_sha256, delta.stat().st_size, 0.0
        )
        self.registry.add_payload(record, delta)
        forged = update_pb2.Payload()
        forged.CopyFrom(honest)  # still claims the device's own file (base_path, base_sha256) as its base
        forged.payload_id, forged.sha256, forged.size = payload_id, payload_id, record.size
        return forged


def test_a_delta_for_another_base_is_refused_on_every_answer(
    registry_copy: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    planner = _planner(registry_copy, ManifestSigner(keys.server))
    service = WrongBaseService(registry_copy, planner, "every-answer", tmp_path)
    with update_server(service) as address:
        error = attack(address, _device(devices.at_v1, tmp_path), keys, registry_copy, ManifestError)
    # The delta failed its base check; the full files asked for once then came as a delta needing a base.
    assert isinstance(error.__context__, WrongBaseError), repr(error.__context__)
    assert "needs a base file" in str(error)


def test_a_delta_for_another_base_falls_back_once_to_verified_full_files(
    registry_copy: Registry, keys: Keys, devices: Devices, tmp_path: Path
) -> None:
    planner = _planner(registry_copy, ManifestSigner(keys.server))
    service = WrongBaseService(registry_copy, planner, "delta-only", tmp_path)
    data_dir = _device(devices.at_v1, tmp_path)
    with update_server(service) as address, _client(address, data_dir, keys) as client:
        result = client.sync()
        store = client.store
    assert result.fell_back_to_full and (result.fallback_reason or "").startswith("WrongBaseError:")
    assert not faults.installed_problems(store, registry_copy, 2)
