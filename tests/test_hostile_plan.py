"""Attacks on what nobody signed: the payload plan, the payload bytes, and the device's disk and downloads.

A real server on loopback signs its manifests with the key the device trusts; a man-in-the-middle
(``tests/mitm.py``) that holds no key rewrites the unsigned parts of its real answers: payload ids,
sizes, codecs and base paths of the plan, and the payload bytes. Every attack must be refused with
its precise error from ``edgerec.errors``, touch nothing outside the device's data dir, and leave the
active model as it was (same version, byte-identical files and state, no staging, local predictions).
The device's own disk is attacked too: symbolic links in its data dir, a full disk, a ``.part``
longer than its payload, two syncs at once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitm import CheckHook, MitmProxy, chunks_of
from servertools import registry_server

from edgerec.codecs import CODEC_NAMES, max_payload_size
from edgerec.codecs.container import write_container
from edgerec.device import EdgeClient
from edgerec.device.plan import MAX_URL_BYTES, MAX_URLS, MIN_PAYLOAD_SIZE, check_plan
from edgerec.device.storage import ModelStore
from edgerec.device.transport import (
    DEFAULT_DEADLINE_ALLOWANCE_S,
    DEFAULT_MIN_RATE_BYTES_PER_S,
    RetryPolicy,
    ServerConnection,
    TransportConfig,
)
from edgerec.errors import (
    DataDirError,
    DiskFullError,
    EdgerecError,
    IntegrityError,
    ManifestError,
    SyncBusyError,
    TransportError,
)
from edgerec.manifest import ArtifactFile, make_artifact
from edgerec.registry import Registry
from edgerec.signing import generate_keypair
from edgerec.tools import faults
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch

MODEL = "ctr"
FAST = TransportConfig(check_timeout_s=5, retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.02, backoff_max_s=0.1))
GiB = 1 << 30


# --- the honest server, a device at version 1, and what an attack may not change ----------------


@dataclass(frozen=True)
class Honest:
    address: str  # the real server, signing with the trusted key
    public_key: Path
    registry: Registry
    template: Path  # a data dir with version 1 active, copied for each attack


@pytest.fixture(scope="module")
def honest(published_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Honest]:
    folder = tmp_path_factory.mktemp("hostile-plan")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    with registry_server(published_registry, signing_key=folder / "server.pem") as address:
        template = folder / "at-v1"
        with _client(address, template, folder / "server.pub") as client:
            assert client.sync(target_version=1).version == 1
        yield Honest(address, folder / "server.pub", published_registry, template)


def _client(address: str, data_dir: Path, public_key: Path, transport: TransportConfig = FAST) -> EdgeClient:
    return EdgeClient(address, MODEL, data_dir, trusted_keys=[public_key], transport=transport)


@dataclass(frozen=True)
class Scene:
    """A device's data dir at version 1, beside an ``outside`` folder an attack aims at."""

    data_dir: Path
    outside: Path

    @property
    def store_root(self) -> Path:
        return self.data_dir / MODEL


@pytest.fixture
def scene(honest: Honest, tmp_path: Path) -> Scene:
    data_dir = tmp_path / "device"
    shutil.copytree(honest.template, data_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"root:$6$not-for-the-model:19000:0:99999:7:::\n")
    (outside / "secret").chmod(0o600)
    (outside / "victim.part").write_bytes(b"a file of another program, not to be truncated\n" * 100)
    (outside / "victim.payload").write_bytes(b"another file of another program\n")
    return Scene(data_dir, outside)


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``root`` (links not followed): its mode and its bytes or link target."""
    entries: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        else:
            content = b""
        entries[str(path.relative_to(root))] = (st.st_mode, content)
    return entries


def _active_state(data_dir: Path) -> dict[str, bytes]:
    """Every byte of the installed versions and the state file."""
    root = data_dir / MODEL
    files = [root / "state.json", *(p for p in (root / "versions").rglob("*") if p.is_file())]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def attack(
    address: str,
    scene: Scene,
    honest: Honest,
    expected: type[EdgerecError],
    *,
    transport: TransportConfig = FAST,
) -> EdgerecError:
    """Sync the scene's device from ``address``: exactly ``expected``, nothing outside touched or active changed."""
    before, around = _active_state(scene.data_dir), _tree(scene.outside)
    with _client(address, scene.data_dir, honest.public_key, transport) as client:
        active = client.active_version
        assert active is not None
        with pytest.raises(EdgerecError) as info:
            client.sync()
        assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
        assert client.active_version == active
        assert not list(client.store.staging_dir.iterdir()), "staging left behind"
    assert _tree(scene.outside) == around, "a file outside the data dir was touched"
    assert _active_state(scene.data_dir) == before, "the active model's files or state changed"
    assert not faults.local_prediction_problems(scene.data_dir, faults.input_specs(honest.registry, active), active)
    return info.value


def rewrite(change: Callable[[update_pb2.Payload], None]) -> CheckHook:
    """A CheckUpdate hook applying ``change`` to every payload of the plan (the signed manifest stays)."""

    def hook(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        for payload in response.payloads:
            change(payload)
        return response

    return hook


def _fetches(mitm: MitmProxy) -> list[update_pb2.FetchPayloadRequest]:
    return [r for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]


def _downloads(scene: Scene) -> dict[str, int]:
    folder = scene.store_root / "downloads"
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.fixture
def mitm(honest: Honest) -> Iterator[MitmProxy]:
    with MitmProxy(honest.address) as proxy:
        yield proxy


# --- 2. unsigned plan fields: payload ids, base paths, sizes, container headers -------------------


@pytest.mark.parametrize("where", ["relative", "absolute", "existing-file"])
def test_a_payload_id_that_is_a_path_is_refused_before_any_fetch(
    honest: Honest, scene: Scene, mitm: MitmProxy, where: str
) -> None:
    evil = {
        "relative": "../../../outside/planted",
        "absolute": str(scene.outside / "planted"),
        "existing-file": "../../../outside/victim",  # downloads/<id>.part would be outside/victim.part
    }[where]
    attacker_bytes = b"#!/bin/sh\necho owned\n" * 64

    def to_path(payload: update_pb2.Payload) -> None:
        if payload.codec != "copy":
            payload.payload_id = payload.sha256 = evil
            payload.size = len(attacker_bytes)

    mitm.on_check = rewrite(to_path)
    mitm.on_fetch = lambda request, upstream: chunks_of(attacker_bytes, request.offset)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "payload id" in str(error)
    assert not _fetches(mitm), "the device asked for a payload of a plan it should have refused"
    assert not (scene.outside / "planted.part").exists()


@pytest.mark.parametrize(
    ("codec", "base"),
    [
        ("copy", "/dev/zero"),
        ("copy", "outside-absolute"),
        ("copy", "outside-relative"),
        ("bsdiff4", "outside-absolute"),
        ("zstd-patch-from", "outside-relative"),
    ],
)
def test_a_base_path_outside_the_active_artifact_is_refused(
    honest: Honest, scene: Scene, mitm: MitmProxy, codec: str, base: str
) -> None:
    """A copy from /dev/zero read 792 MiB in 0.45 s; one from a secret put it in staging as 0644."""
    base_path = {
        "/dev/zero": "/dev/zero",
        "outside-absolute": str(scene.outside / "secret"),
        # versions/1/ + ../../../../ is the folder holding the data dir
        "outside-relative": "../../../../outside/secret",
    }[base]

    def from_elsewhere(payload: update_pb2.Payload) -> None:
        payload.codec, payload.base_path, payload.base_sha256 = codec, base_path, payload.target_sha256
        if codec == "copy":
            payload.payload_id = payload.sha256 = ""
            payload.size = 0

    mitm.on_check = rewrite(from_elsewhere)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "not a file of the active version" in str(error)
    assert not _fetches(mitm)


def test_a_copy_of_another_file_of_the_artifact_is_refused(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    """The base is a real file of the active version, but its signed bytes are not the target's."""
    with EdgeClient(None, MODEL, scene.data_dir) as offline:
        current = offline.store.current()
    assert current is not None
    files = sorted(current.artifact.files, key=lambda f: f.path)

    def copy_the_other(payload: update_pb2.Payload) -> None:
        other = next(f for f in files if f.path != payload.path)
        payload.codec, payload.base_path, payload.base_sha256 = "copy", other.path, other.sha256
        payload.payload_id = payload.sha256 = ""
        payload.size = 0

    mitm.on_check = rewrite(copy_the_other)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "whose signed bytes are not the target's" in str(error)


def test_a_delta_on_a_base_with_another_digest_is_refused(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    def lie_about_the_base(payload: update_pb2.Payload) -> None:
        if payload.base_path:
            payload.base_sha256 = "0" * 64

    mitm.on_check = rewrite(lie_about_the_base)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "plan says another" in str(error)


@pytest.mark.parametrize("codec", ["no-such-codec", ""])
def test_a_codec_the_device_did_not_offer_is_refused(honest: Honest, scene: Scene, mitm: MitmProxy, codec: str) -> None:
    def other_codec(payload: update_pb2.Payload) -> None:
        if payload.codec != "copy":
            payload.codec = codec

    mitm.on_check = rewrite(other_codec)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "was not offered" in str(error)
    assert not _fetches(mitm)


def _zeros_forever(request: update_pb2.FetchPayloadRequest, upstream: object) -> Iterator[update_pb2.PayloadChunk]:
    """Well-formed chunks of zeros, claiming a 2**40-byte payload, for as long as anyone reads."""
    block = bytes(16 * 1024)
    offset = request.offset
    while offset < 1 << 40:
        yield update_pb2.PayloadChunk(offset=offset, data=block, total_size=1 << 40, crc32=zlib.crc32(block))
        offset += len(block)


def test_a_terabyte_payload_size_is_refused_before_a_byte_is_written(
    honest: Honest, scene: Scene, mitm: MitmProxy
) -> None:
    """With size 2**40 and a stream of zeros the device wrote 491 MiB in 6 s and never stopped."""

    def terabyte(payload: update_pb2.Payload) -> None:
        payload.codec, payload.base_path, payload.base_sha256 = "full", "", ""
        payload.payload_id = payload.sha256 = hashlib.sha256(payload.path.encode()).hexdigest()
        payload.size = 1 << 40

    mitm.on_check = rewrite(terabyte)
    mitm.on_fetch = _zeros_forever
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "payload of a" in str(error) and str(1 << 40) in str(error)
    assert not _fetches(mitm)
    assert _downloads(scene) == {}


def test_a_payload_one_byte_over_its_codecs_bound_is_refused(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    def over(payload: update_pb2.Payload) -> None:
        payload.codec, payload.base_path, payload.base_sha256 = "full", "", ""
        payload.payload_id = payload.sha256 = hashlib.sha256(payload.path.encode()).hexdigest()
        payload.size = max_payload_size("full", payload.target_size) + 1

    mitm.on_check = rewrite(over)
    attack(mitm.address, scene, honest, ManifestError)
    assert not _fetches(mitm)


def test_a_payload_at_its_bound_is_fetched_no_further_and_then_removed(
    honest: Honest, scene: Scene, mitm: MitmProxy
) -> None:
    """The largest size the plan may claim: the device reads at most that much, then the hash fails."""
    sizes: dict[str, int] = {}

    def at_the_bound(payload: update_pb2.Payload) -> None:
        payload.codec, payload.base_path, payload.base_sha256 = "full", "", ""
        payload.size = max_payload_size("full", payload.target_size)
        payload.payload_id = payload.sha256 = hashlib.sha256(payload.path.encode()).hexdigest()
        sizes[payload.payload_id] = payload.size

    def zeros_then_more(request: update_pb2.FetchPayloadRequest, upstream: object) -> Iterator[update_pb2.PayloadChunk]:
        size = sizes[request.payload_id]
        yield from chunks_of(bytes(size), request.offset)
        yield from chunks_of(bytes(size + 4096), size, total=size)  # and past the end, as long as read

    mitm.on_check = rewrite(at_the_bound)
    mitm.on_fetch = zeros_then_more
    error = attack(mitm.address, scene, honest, IntegrityError)
    assert "sha256" in str(error) or "more bytes than" in str(error)
    assert _downloads(scene) == {}, "a payload that failed its checks was left in downloads"


@functools.cache
def _bomb(claimed: int) -> bytes:
    """A "full" container of a few KB whose body decodes to ``claimed`` zero bytes, as its header promises."""
    compressor = zstandard.ZstdCompressor(level=3)
    chunker = compressor.chunker(size=claimed, chunk_size=1 << 20)
    zeros = bytes(1 << 20)
    body: list[bytes] = []
    for start in range(0, claimed, len(zeros)):
        body += chunker.compress(zeros[: min(len(zeros), claimed - start)])
    body += chunker.finish()  # type: ignore[no-untyped-call]
    out = io.BytesIO()
    # The target's sha256 is not computed: the device must refuse the header long before it matters.
    write_container(out, codec="full", base_sha256=None, target_sha256="0" * 64, target_size=claimed, body=body)
    return out.getvalue()


def test_a_container_claiming_a_gigabyte_is_refused_before_it_is_expanded(
    honest: Honest, scene: Scene, mitm: MitmProxy
) -> None:
    """A 32 KB payload whose header claims 1 GiB was expanded to disk twice before the hash check."""

    bombed: list[str] = []

    def bomb(payload: update_pb2.Payload) -> None:
        data = _bomb(GiB)
        if len(data) > max_payload_size("full", payload.target_size):
            return  # too small a file to hide the bomb in; the plan stays honest there
        payload.codec, payload.base_path, payload.base_sha256 = "full", "", ""
        payload.payload_id = payload.sha256 = mitm.serve_payload(data)
        payload.size = len(data)
        bombed.append(payload.path)

    mitm.on_check = rewrite(bomb)
    error = attack(mitm.address, scene, honest, IntegrityError)
    assert bombed, "no file was large enough to carry the bomb"
    assert f"patch builds {GiB} bytes" in str(error)
    bomb_id = hashlib.sha256(_bomb(GiB)).hexdigest()
    assert not [name for name in _downloads(scene) if name.startswith(bomb_id)], "the refused payload was kept"


# --- 3. deadlines ------------------------------------------------------------------------------


def test_downloads_have_a_deadline_by_default() -> None:
    config = TransportConfig()
    size = 10 << 20
    assert config.download_deadline(size) == DEFAULT_DEADLINE_ALLOWANCE_S + size / DEFAULT_MIN_RATE_BYTES_PER_S
    capped = TransportConfig(rate_bytes_per_s=1000)  # a device capped below the minimum rate gets time for it
    assert capped.download_deadline(size) == DEFAULT_DEADLINE_ALLOWANCE_S + size / 500
    assert TransportConfig(download_deadline_s=7).download_deadline(size) == 7


def test_one_byte_per_connection_stops_at_the_derived_deadline(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    """Each connection brought one byte, so every retry was progress and the sync never ended."""

    def one_byte(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        for chunk in upstream:
            data = chunk.data[:1]
            yield update_pb2.PayloadChunk(
                offset=chunk.offset, data=data, total_size=chunk.total_size, crc32=zlib.crc32(data)
            )
            return

    mitm.on_fetch = one_byte
    # No fixed deadline: 1 s allowance plus the payload at 1 MB/s, far less than the payload at one byte a try.
    derived = TransportConfig(
        check_timeout_s=5,
        deadline_allowance_s=1.0,
        min_rate_bytes_per_s=1e6,
        retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02),
    )
    error = attack(mitm.address, scene, honest, TransportError, transport=derived)
    assert "deadline" in str(error)
    assert len(_fetches(mitm)) > 3  # it did retry with progress, more often than max_attempts


def test_a_stalled_stream_is_cancelled_by_the_idle_timeout(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    released = threading.Event()

    def stall(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        if request.offset == 0:
            yield next(upstream)
        released.wait(60)  # then silence, without closing the stream

    mitm.on_fetch = stall
    idle = TransportConfig(
        check_timeout_s=5,
        idle_timeout_s=0.3,
        max_chunk_bytes=1024,  # payloads of several chunks: the first one is not the whole payload
        retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02),
    )
    try:
        error = attack(mitm.address, scene, honest, TransportError, transport=idle)
    finally:
        released.set()
    assert "failed 2 times in a row" in str(error) and "no byte for 0.3 s" in str(error)


def _edgerec_sync(address: str, data_dir: Path, public_key: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgerec", "sync", "--server", address, "--model", MODEL]
    command += ["--data-dir", str(data_dir), "--trusted-key", str(public_key), "--json", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_sync_command_takes_a_deadline_and_retries(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    def one_byte(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        chunk = next(upstream)
        yield update_pb2.PayloadChunk(
            offset=chunk.offset, data=chunk.data[:1], total_size=chunk.total_size, crc32=zlib.crc32(chunk.data[:1])
        )

    mitm.on_fetch = one_byte
    result = _edgerec_sync(mitm.address, scene.data_dir, honest.public_key, "--deadline", "1.5")
    assert result.returncode == 1 and "TransportError" in result.stderr and "deadline" in result.stderr, result.stderr
    mitm.on_fetch = _first_chunk_only
    result = _edgerec_sync(mitm.address, scene.data_dir, honest.public_key, "--retries", "2", "--min-rate", "64kbit")
    assert result.returncode == 1 and "failed 2 times in a row" in result.stderr, result.stderr
    result = _edgerec_sync(mitm.address, scene.data_dir, honest.public_key, "--min-rate", "fast")
    assert result.returncode == 2 and "--min-rate" in result.stderr, result.stderr
    with EdgeClient(None, MODEL, scene.data_dir) as offline:
        assert offline.active_version == 1


# --- 4. downloads that cannot be resumed, and room on the disk ------------------------------------


def test_a_stale_download_is_removed_by_the_next_sync(honest: Honest, scene: Scene) -> None:
    downloads = scene.store_root / "downloads"
    (downloads / f"{'ab' * 32}.part").write_bytes(bytes(100_000))
    (downloads / f"{'cd' * 32}.payload").write_bytes(bytes(1000))
    (downloads / "not-a-download").write_bytes(b"x")
    with _client(honest.address, scene.data_dir, honest.public_key) as client:
        assert client.sync().version == 2
    assert _downloads(scene) == {}


def _honest_plan(honest: Honest, data_dir: Path) -> update_pb2.CheckUpdateResponse:
    """The honest server's plan from the version active in ``data_dir`` to the latest, as a device asks for it."""
    current = ModelStore(data_dir, MODEL).current()
    assert current is not None
    request = update_pb2.CheckUpdateRequest(
        model=MODEL,
        current_version=current.version,
        current_sha256=current.artifact.digest,
        current_recipe=current.recipe,
        runtimes=["onnxruntime"],
        codecs=list(CODEC_NAMES),
        recipes=["int8", "fp32"],
    )
    connection = ServerConnection(honest.address, FAST)
    try:
        return connection.check_update(request)
    finally:
        connection.close()


def _needs(plan: update_pb2.CheckUpdateResponse) -> int:
    """Bytes a sync of ``plan`` writes: its payloads and the files they build."""
    return sum(p.size + p.target_size for p in plan.payloads)


def _warm_up(scene: Scene, honest: Honest) -> None:
    """Predict once, so the optimized-model cache is made before the disk is measured."""
    assert not faults.local_prediction_problems(scene.data_dir, faults.input_specs(honest.registry, 1), 1)


def test_a_hostile_payload_cannot_fill_the_disk_and_a_legitimate_sync_follows(
    honest: Honest, scene: Scene, mitm: MitmProxy, tmp_path: Path
) -> None:
    """After a disk-full attack every later legitimate sync failed with DiskFullError (its .part stayed)."""
    legit = _honest_plan(honest, scene.data_dir)
    deltas = [p for p in legit.payloads if p.base_path and p.codec != "copy"]
    assert deltas, "the honest plan holds no delta to inflate"
    try:
        with faults.tmpfs(tmp_path / "disk", 64 << 20) as disk:
            device = Scene(disk / "device", scene.outside)
            shutil.copytree(scene.data_dir, device.data_dir)
            _warm_up(device, honest)
            # Room for the legitimate update and some more; the attacker claims the largest payloads
            # a plan may: bsdiff4's bound, about 25 times each file.
            faults.leave_free(disk, _needs(legit) + (256 << 10))

            def inflate(payload: update_pb2.Payload) -> None:
                if payload.base_path and payload.codec != "copy":
                    payload.codec = "bsdiff4"
                    payload.size = max_payload_size("bsdiff4", payload.target_size)
                    payload.payload_id = payload.sha256 = hashlib.sha256(payload.path.encode()).hexdigest()

            mitm.on_check = rewrite(inflate)
            mitm.on_fetch = _zeros_forever
            error = attack(mitm.address, device, honest, DiskFullError)
            assert "more bytes" in str(error)
            assert not _fetches(mitm), "the device fetched a plan it has no room for"
            assert _downloads(device) == {}
            mitm.on_check = mitm.on_fetch = None  # the attacker leaves
            with _client(mitm.address, device.data_dir, honest.public_key) as client:
                assert client.sync().version == 2
            assert not faults.installed_problems(ModelStore(device.data_dir, MODEL), honest.registry, 2)
            assert _downloads(device) == {}
    except faults.TmpfsUnavailable as exc:
        pytest.skip(str(exc))


def test_a_stale_partial_download_makes_room_for_a_legitimate_one(honest: Honest, scene: Scene, tmp_path: Path) -> None:
    """A hostile plan's .part (kept to resume) takes the room the next, legitimate plan needs: it goes first."""
    legit = _needs(_honest_plan(honest, scene.data_dir))
    try:
        with faults.tmpfs(tmp_path / "disk", 64 << 20) as disk:
            device = Scene(disk / "device", scene.outside)
            shutil.copytree(scene.data_dir, device.data_dir)
            _warm_up(device, honest)
            faults.leave_free(disk, legit + (256 << 10))
            stale = device.store_root / "downloads" / f"{'ef' * 32}.part"
            stale.write_bytes(os.urandom(shutil.disk_usage(disk).free - legit // 2))
            assert shutil.disk_usage(disk).free < legit
            with _client(honest.address, device.data_dir, honest.public_key) as client:
                assert client.sync().version == 2
            assert not stale.exists()
            assert not faults.installed_problems(ModelStore(device.data_dir, MODEL), honest.registry, 2)
    except faults.TmpfsUnavailable as exc:
        pytest.skip(str(exc))


# --- 6. symbolic links in the data dir --------------------------------------------------------------


@pytest.mark.parametrize("linked", ["downloads", "staging", "versions", "model-folder"])
def test_a_data_dir_whose_managed_folder_is_a_link_is_refused(honest: Honest, scene: Scene, linked: str) -> None:
    """With downloads/ and staging/ linked elsewhere one normal sync deleted every file in the targets."""
    elsewhere = scene.outside / "precious"
    elsewhere.mkdir()
    (elsewhere / "photo.jpg").write_bytes(b"\xff\xd8 not the SDK's")
    data_dir = scene.data_dir.parent / "linked-device"
    data_dir.mkdir()
    root = data_dir / MODEL
    if linked == "model-folder":
        os.symlink(elsewhere, root)
    else:
        root.mkdir()
        os.symlink(elsewhere, root / linked)
    around = _tree(scene.outside)
    with pytest.raises(DataDirError, match="symbolic link"):
        _client(honest.address, data_dir, honest.public_key)
    assert _tree(scene.outside) == around


def test_cleaning_removes_links_never_what_they_point_to(honest: Honest, scene: Scene) -> None:
    precious = scene.outside / "precious"
    precious.mkdir()
    (precious / "photo.jpg").write_bytes(b"\xff\xd8 not the SDK's")
    root = scene.store_root
    os.symlink(precious, root / "staging" / "9")
    os.symlink(precious / "photo.jpg", root / "staging" / "7.replaced")
    os.symlink(precious, root / "downloads" / f"{'12' * 32}.part")
    os.symlink(precious / "photo.jpg", root / "downloads" / f"{'34' * 32}.payload")
    around = _tree(scene.outside)
    with _client(honest.address, scene.data_dir, honest.public_key) as client:
        assert client.sync().version == 2
    assert _tree(scene.outside) == around
    assert not list((root / "staging").iterdir()) and _downloads(scene) == {}


# --- 7. permissions ----------------------------------------------------------------------------------


def test_every_file_and_folder_the_sdk_writes_is_private(honest: Honest, tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "device"
    seen_parts: list[int] = []

    def progress(path: str, done: int, total: int) -> None:
        for part in (data_dir / MODEL / "downloads").glob("*.part"):
            seen_parts.append(stat.S_IMODE(part.stat().st_mode))

    old_umask = os.umask(0o022)
    try:
        with EdgeClient(
            honest.address, MODEL, data_dir, trusted_keys=[honest.public_key], optimized_model_cache=False
        ) as client:
            client.sync(target_version=1, progress=progress)
            client.sync(progress=progress)
    finally:
        os.umask(old_umask)
    assert seen_parts and set(seen_parts) == {0o600}, seen_parts
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    loose = [
        (str(p.relative_to(data_dir)), oct(stat.S_IMODE(p.lstat().st_mode)))
        for p in [data_dir / MODEL, *(data_dir / MODEL).rglob("*")]
        if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)
    ]
    assert not loose, loose


# --- 9. resuming: a .part longer than its payload, two syncs at once ---------------------------------


def _first_chunk_only(
    request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
) -> Iterator[update_pb2.PayloadChunk]:
    """A fetch hook letting through the first chunk of each payload, then dropping every stream."""
    if request.offset == 0:
        yield next(upstream)
    raise OSError("the link drops")


def _leave_a_partial_download(honest: Honest, scene: Scene, mitm: MitmProxy) -> Path:
    mitm.on_fetch = _first_chunk_only
    one_try = TransportConfig(
        check_timeout_s=5, max_chunk_bytes=1024, retry=RetryPolicy(max_attempts=1, backoff_initial_s=0.01)
    )
    with _client(mitm.address, scene.data_dir, honest.public_key, one_try) as client, pytest.raises(TransportError):
        client.sync()
    parts = sorted((scene.store_root / "downloads").glob("*.part"))
    assert parts and all(p.stat().st_size > 0 for p in parts)
    mitm.on_fetch = None
    return max(parts, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["longer", "wrong-bytes"])
def test_an_inconsistent_part_is_started_over_not_an_error(
    honest: Honest, scene: Scene, mitm: MitmProxy, damage: str
) -> None:
    """A .part of 1,703,006 bytes for a 1,119,791-byte payload made the next sync fail with OUT_OF_RANGE."""
    part = _leave_a_partial_download(honest, scene, mitm)
    record = honest.registry.payload(MODEL, part.name.removesuffix(".part"))
    if damage == "longer":
        with part.open("ab") as f:
            f.write(os.urandom(record.size + 4096 - part.stat().st_size))
        assert part.stat().st_size > record.size
    else:
        part.write_bytes(os.urandom(part.stat().st_size))
    with _client(mitm.address, scene.data_dir, honest.public_key) as client:
        result = client.sync()
    assert result.version == 2
    assert not faults.installed_problems(client.store, honest.registry, 2)
    assert _downloads(scene) == {}


def test_a_partial_download_is_resumed_from_its_durable_length(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    part = _leave_a_partial_download(honest, scene, mitm)
    kept = part.stat().st_size
    offsets: list[int] = []

    def watch(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        offsets.append(request.offset)
        return upstream

    mitm.on_fetch = watch
    with _client(mitm.address, scene.data_dir, honest.public_key) as client:
        assert client.sync().version == 2
    assert kept in offsets


def test_two_syncs_on_one_data_dir_run_one_at_a_time(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    """Two syncs appending to one .part grew it past its payload; now the second waits, then gives up."""
    holding = threading.Event()
    release = threading.Event()

    def hold(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        for index, chunk in enumerate(upstream):
            yield chunk
            if index == 0:
                holding.set()
                release.wait(60)

    mitm.on_fetch = hold
    results: list[object] = []

    def first() -> None:
        with _client(mitm.address, scene.data_dir, honest.public_key) as client:
            try:
                results.append(client.sync())
            except EdgerecError as exc:  # reported to the main thread
                results.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(60), "the first sync never started downloading"
        with _client(mitm.address, scene.data_dir, honest.public_key) as second:
            second.store.lock_wait_s = 0.2
            with pytest.raises(SyncBusyError):
                second.sync()
        for part in (scene.store_root / "downloads").glob("*.part"):
            assert part.stat().st_size <= honest.registry.payload(MODEL, part.stem).size
    finally:
        release.set()
        thread.join(60)
    assert len(results) == 1 and not isinstance(results[0], Exception), results
    with _client(mitm.address, scene.data_dir, honest.public_key) as later:  # the lock was released
        assert later.sync().updated is False
    assert not faults.installed_problems(later.store, honest.registry, 2)


# --- the plan checker on its own ----------------------------------------------------------------------


def test_check_plan_returns_the_plan_in_the_manifests_file_order(honest: Honest, scene: Scene) -> None:
    with EdgeClient(None, MODEL, scene.data_dir) as offline:
        current = offline.store.current()
    assert current is not None
    artifact = current.artifact
    copies = [
        update_pb2.Payload(
            path=f.path,
            codec="copy",
            base_path=f.path,
            base_sha256=f.sha256,
            target_sha256=f.sha256,
            target_size=f.size,
        )
        for f in reversed(artifact.files)
    ]
    checked = check_plan(copies, artifact, current, ("full",))
    assert [p.path for p in checked] == [f.path for f in artifact.files]
    with pytest.raises(ManifestError, match="twice"):
        check_plan([*copies, copies[0]], artifact, current, ("full",))
    with pytest.raises(ManifestError, match="does not match the manifest"):
        check_plan(copies[:1], artifact, current, ("full",))
    with pytest.raises(ManifestError, match="needs a base file"):
        check_plan(copies, artifact, None, ("full",))


# --- payload URLs: unsigned too, bounded by the plan's checks --------------------------------------

_FILES = [ArtifactFile(path="int8/model.onnx", size=4096, sha256="a" * 64)]
_ARTIFACT = make_artifact("int8", "onnxruntime", "int8/model.onnx", _FILES)


def _full_plan(urls: list[str], codec: str = "full") -> list[update_pb2.Payload]:
    digest = "b" * 64
    payload = update_pb2.Payload(
        path=_FILES[0].path,
        codec=codec,
        payload_id=digest,
        sha256=digest,
        size=MIN_PAYLOAD_SIZE,
        target_sha256=_FILES[0].sha256,
        target_size=_FILES[0].size,
    )
    payload.urls.extend(urls)
    return [payload]


def test_plausible_payload_urls_pass_the_plan_checks() -> None:
    urls = [
        "https://bucket.s3.example.com/blobs/ab/cd?X-Amz-Signature=0f&X-Amz-Expires=300",
        "http://127.0.0.1:8333/edgerec/blobs/x",
        "HTTPS://cdn.example.com:8443/p",
        "http://[::1]:9000/p",
    ]
    assert list(check_plan(_full_plan(urls), _ARTIFACT, None, ("full",))[0].urls) == urls


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["https://h/p"] * (MAX_URLS + 1), "at most"),
        (["https://h/" + "a" * MAX_URL_BYTES], "bytes"),
        (["file:///etc/passwd"], "not an http"),
        (["ftp://h/p"], "not an http"),
        (["javascript:alert(1)"], "not an http"),
        (["//h/p"], "not an http"),
        (["http:///p"], "not an http"),
        (["http://user:secret@h/p"], "not an http"),
        (["http://h/a path"], "printable ASCII"),
        (["http://h\u00f6st/p"], "printable ASCII"),
        (["http://[::1/p"], "does not parse"),
        (["http://h:99999/p"], "does not parse"),
    ],
)
def test_hostile_payload_urls_are_refused_by_the_plan_checks(urls: list[str], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        check_plan(_full_plan(urls), _ARTIFACT, None, ("full",))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=2100), max_size=6))
def test_any_url_list_is_checked_or_refused_never_crashes(urls: list[str]) -> None:
    try:
        checked = check_plan(_full_plan(urls), _ARTIFACT, None, ("full",))
    except ManifestError:
        return
    kept = list(checked[0].urls)
    assert kept == urls and len(kept) <= MAX_URLS
    assert all(u.lower().startswith(("http://", "https://")) and len(u) <= MAX_URL_BYTES for u in kept)


def test_a_plan_with_a_file_url_is_refused_before_any_fetch(honest: Honest, scene: Scene, mitm: MitmProxy) -> None:
    def add_url(payload: update_pb2.Payload) -> None:
        if payload.codec != "copy":
            payload.urls.append(f"file://{scene.outside / 'secret'}")

    mitm.on_check = rewrite(add_url)
    error = attack(mitm.address, scene, honest, ManifestError)
    assert "not an http(s) URL" in str(error)
    assert not _fetches(mitm)
