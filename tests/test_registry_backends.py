"""The registry interface, run against both backends: a local folder and a real S3 server (SeaweedFS).

S3-only tests cover what a bucket adds: presigned URLs, a tampered bucket, concurrent publishers
in threads and in separate processes, and a second replica seeing a publish.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3, race_two_hosts, seaweed_s3

from edgerec.errors import (
    IntegrityError,
    InvalidInputError,
    ManifestError,
    ModelNotFoundError,
    PayloadNotFoundError,
    RegistryConflictError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from edgerec.hashing import sha256_file
from edgerec.manifest import (
    FORMAT_VERSION,
    PARTIAL_BASE,
    PARTIAL_OF,
    ArtifactFile,
    Manifest,
    SignedManifest,
    make_artifact,
    now_rfc3339,
    sign_nothing,
)
from edgerec.registry import LocalRegistry, ManifestFactory, ModelRegistry, PayloadRecord, open_registry

if TYPE_CHECKING:
    from edgerec.registry.s3 import S3Registry

BUCKET = "edgerec-test"
MODEL = "ctr"
DEADLINE_S = 60.0


def _conforms(local: LocalRegistry, s3: S3Registry) -> list[ModelRegistry]:
    """Checked by mypy: both backends implement the whole interface."""
    return [local, s3]


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    pytest.importorskip("boto3")
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Credentials and endpoint the standard AWS ways, as a deployment would give them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweed


def _s3_url() -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return open_registry(tmp_path / "registry")
    request.getfixturevalue("s3_env")
    return open_registry(_s3_url(), cache_dir=tmp_path / "cache")


@pytest.fixture
def s3_registry(s3_env: SeaweedS3, tmp_path: Path) -> S3Registry:
    from edgerec.registry.s3 import S3Registry

    reg = open_registry(_s3_url(), cache_dir=tmp_path / "cache")
    assert isinstance(reg, S3Registry)
    return reg


# --- publishing helpers ------------------------------------------------------------------


def stage(root: Path, contents: dict[str, bytes]) -> Path:
    """A staged version folder holding ``contents`` (path -> bytes)."""
    root.mkdir(parents=True)
    for path, data in contents.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def factory(model: str, staged: Path, annotations: dict[str, str] | None = None) -> ManifestFactory:
    """Signs (well, wraps) a manifest listing every staged file as the fp32 artifact."""
    files = [
        ArtifactFile(path=p.relative_to(staged).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(staged.rglob("*"))
        if p.is_file()
    ]
    artifact = make_artifact("fp32", "onnxruntime", "fp32/model.onnx", files)

    def make(version: int) -> SignedManifest:
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model=model,
            version=version,
            created_at=now_rfc3339(),
            artifacts=[artifact],
            annotations=annotations or {},
        )
        return sign_nothing(manifest)

    return make


def publish(reg: ModelRegistry, tmp: Path, data: bytes, *, model: str = MODEL, **annotations: str) -> Manifest:
    staged = stage(tmp / f"staged-{uuid.uuid4().hex}", {"fp32/model.onnx": data, "fp32/weights.bin": data[::-1]})
    return reg.add_version(model, staged, factory(model, staged, annotations))


def staged_payload(
    tmp: Path, data: bytes, *, codec: str = "full", base: str = "", target: str = ""
) -> tuple[PayloadRecord, Path]:
    """A payload file of ``data`` ready to add, and its record."""
    path = tmp / f"payload-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return PayloadRecord(
        payload_id=hashlib.sha256(data).hexdigest(),
        model=MODEL,
        codec=codec,
        base_sha256=base,
        target_sha256=target or hashlib.sha256(b"target" + data).hexdigest(),
        size=len(data),
        make_seconds=0.5,
    ), path


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- both backends -------------------------------------------------------------------


def test_versions_are_numbered_listed_and_loaded(registry: ModelRegistry, tmp_path: Path) -> None:
    assert registry.versions(MODEL) == [] and registry.latest_version(MODEL) is None
    assert registry.next_version(MODEL) == 1
    first = publish(registry, tmp_path, b"one")
    second = publish(registry, tmp_path, b"two")
    partial = publish(registry, tmp_path, b"two-ish", **{PARTIAL_OF: "2", PARTIAL_BASE: "1"})
    publish(registry, tmp_path, b"other", model="other")

    assert (first.version, second.version, partial.version) == (1, 2, 3)
    assert registry.models() == ["ctr", "other"]
    assert registry.versions(MODEL) == [1, 2, 3]
    assert registry.versions(MODEL, include_partial=False) == [1, 2]
    assert registry.latest_version(MODEL) == 2
    assert registry.resolve_version(MODEL) == 2
    assert registry.resolve_version(MODEL, 3) == 3
    assert registry.next_version(MODEL) == 4
    assert registry.partial_versions(MODEL, 1, 2) == [3]
    assert registry.partial_versions(MODEL, 2, 1) == []

    signed, manifest = registry.load_manifest(MODEL, 2)
    assert manifest == second
    assert signed.manifest == second.SerializeToString(deterministic=True)
    files = registry.files(MODEL, 2)
    listed = [(f.recipe, f.path, f.size) for f in files]
    assert listed == [("fp32", "fp32/model.onnx", 3), ("fp32", "fp32/weights.bin", 3)]
    assert files[0].sha256 == hashlib.sha256(b"two").hexdigest()


def test_unknown_models_and_versions_are_typed_errors(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        registry.resolve_version("nope")
    with pytest.raises(ModelNotFoundError):
        registry.load_manifest("nope", 1)
    publish(registry, tmp_path, b"one")
    with pytest.raises(VersionNotFoundError):
        registry.resolve_version(MODEL, 7)
    with pytest.raises(VersionNotFoundError):
        registry.load_manifest(MODEL, 7)
    assert registry.files(MODEL, 7) == []


def test_local_file_is_the_published_file(registry: ModelRegistry, tmp_path: Path) -> None:
    publish(registry, tmp_path, b"first weights")
    publish(registry, tmp_path, b"second weights")
    for version, data in ((1, b"first weights"), (2, b"second weights")):
        assert registry.local_file(MODEL, version, "fp32/model.onnx").read_bytes() == data
        assert registry.local_file(MODEL, version, "fp32/weights.bin").read_bytes() == data[::-1]
    for path in ("fp32/missing.bin", "../index.sqlite", "manifest.pb"):
        with pytest.raises(VersionNotFoundError):
            registry.local_file(MODEL, 1, path)


def test_a_factory_making_another_version_commits_nothing(registry: ModelRegistry, tmp_path: Path) -> None:
    staged = stage(tmp_path / "staged", {"fp32/model.onnx": b"x"})
    make = factory(MODEL, staged)
    with pytest.raises(ManifestError, match="version 1"):
        registry.add_version(MODEL, staged, lambda version: make(version + 1))
    with pytest.raises(ManifestError):
        registry.add_version("other", staged, make)
    assert registry.versions(MODEL) == [] and registry.versions("other") == []


def test_staged_files_must_be_what_the_manifest_says(registry: ModelRegistry, tmp_path: Path) -> None:
    staged = stage(tmp_path / "staged", {"fp32/model.onnx": b"honest"})
    make = factory(MODEL, staged)
    (staged / "fp32/model.onnx").write_bytes(b"swapped!")
    with pytest.raises(IntegrityError):
        registry.add_version(MODEL, staged, make)
    assert registry.versions(MODEL) == []


def test_payloads_are_stored_found_and_read_in_ranges(registry: ModelRegistry, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    record, path = staged_payload(tmp_path, data)
    assert registry.find_payload(MODEL, "full", "", record.target_sha256) is None
    with pytest.raises(PayloadNotFoundError):
        registry.payload(MODEL, record.payload_id)
    registry.add_payload(record, path)
    assert registry.find_payload(MODEL, "full", "", record.target_sha256) == record
    assert registry.payload(MODEL, record.payload_id) == record
    assert registry.find_payload(MODEL, "bsdiff4", "", record.target_sha256) is None

    with registry.open_payload(MODEL, record.payload_id) as f:
        assert f.read(10) == data[:10]
        f.seek(250_000)
        assert f.read(1000) == data[250_000:251_000]
        f.seek(0)
        assert f.read() == data
        assert f.read(5) == b""

    again, again_path = staged_payload(tmp_path, data)  # the same payload made twice: harmless
    registry.add_payload(again, again_path)
    assert registry.payload(MODEL, record.payload_id).size == len(data)
    with pytest.raises(InvalidInputError):
        registry.payload(MODEL, "../../etc")


def test_payload_url_is_none_for_a_folder(tmp_path: Path) -> None:
    reg = open_registry(tmp_path / "registry")
    record, path = staged_payload(tmp_path, b"bytes")
    reg.add_payload(record, path)
    assert reg.payload_url(MODEL, record.payload_id, 60) is None


def test_a_folder_reader_sees_another_process_write_at_once(tmp_path: Path) -> None:
    """Pooled read connections keep no snapshot: a publish and a payload by another writer show at the next read."""
    reader = open_registry(tmp_path / "registry")
    writer = open_registry(tmp_path / "registry")
    assert reader.versions(MODEL) == []
    record, path = staged_payload(tmp_path, b"payload")
    assert reader.find_payload(MODEL, record.codec, record.base_sha256, record.target_sha256) is None
    for round_ in range(3):
        publish(writer, tmp_path, b"v%d" % round_)
        assert reader.versions(MODEL) == list(range(1, round_ + 2))
        assert reader.resolve_version(MODEL) == round_ + 1
    writer.add_payload(record, path)
    assert reader.payload(MODEL, record.payload_id) == record


def test_change_stamp_moves_with_every_write_and_only_then(registry: ModelRegistry, tmp_path: Path) -> None:
    seen = [registry.change_stamp()]

    def moved() -> None:
        stamp = registry.change_stamp()
        assert stamp not in seen
        seen.append(stamp)

    publish(registry, tmp_path, b"one")
    moved()
    registry.versions(MODEL)
    registry.local_file(MODEL, 1, "fp32/model.onnx")
    assert registry.change_stamp() == seen[-1]
    record, path = staged_payload(tmp_path, b"payload")
    registry.add_payload(record, path)
    moved()
    registry.put_document("policy/ctr.json", b"{}", if_match=None)
    moved()


def test_documents_change_by_compare_and_swap(registry: ModelRegistry) -> None:
    key = "policy/ctr/channels.json"
    assert registry.get_document(key) is None
    etag = registry.put_document(key, b'{"stable": 1}', if_match=None)
    assert registry.get_document(key) == (b'{"stable": 1}', etag)
    with pytest.raises(RegistryConflictError):
        registry.put_document(key, b'{"stable": 9}', if_match=None)  # create, but it exists
    newer = registry.put_document(key, b'{"stable": 2}', if_match=etag)
    assert newer != etag
    with pytest.raises(RegistryConflictError):
        registry.put_document(key, b'{"stable": 3}', if_match=etag)  # a stale etag loses
    assert registry.get_document(key) == (b'{"stable": 2}', newer)
    with pytest.raises(RegistryConflictError):
        registry.put_document("policy/absent.json", b"{}", if_match=newer)
    assert registry.get_document("policy/absent.json") is None
    for bad in ("", "/abs", "a//b", "up/../x", "Upper", "a/" * 200 + "b"):
        with pytest.raises(InvalidInputError):
            registry.get_document(bad)
    with pytest.raises(IntegrityError):
        registry.put_document("big", b"x" * (1024 * 1024 + 1), if_match=None)


def test_a_document_race_has_one_winner(registry: ModelRegistry) -> None:
    key = "reports/counter.json"
    registry.put_document(key, b"0", if_match=None)

    def increment(_: int) -> int:
        conflicts = 0
        while True:
            current = registry.get_document(key)
            assert current is not None
            try:
                registry.put_document(key, str(int(current.data) + 1).encode(), if_match=current.etag)
                return conflicts
            except RegistryConflictError:
                conflicts += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(increment, range(16)))
    document = registry.get_document(key)
    assert document is not None and document.data == b"16"


def test_concurrent_publishes_get_distinct_numbers(registry: ModelRegistry, tmp_path: Path) -> None:
    start = threading.Barrier(32)

    def one(i: int) -> int:
        staged = stage(tmp_path / f"staged-{i}", {"fp32/model.onnx": f"model {i}".encode()})
        make = factory(MODEL, staged)
        start.wait(timeout=DEADLINE_S)
        return registry.add_version(MODEL, staged, make).version

    with ThreadPoolExecutor(32) as pool:
        versions = list(pool.map(one, range(32)))
    assert sorted(versions) == list(range(1, 33))
    assert registry.versions(MODEL) == list(range(1, 33))
    for version in versions:  # each number carries the files of the publish that got it
        _, manifest = registry.load_manifest(MODEL, version)
        assert manifest.version == version


def test_open_registry_parses_its_spec(tmp_path: Path) -> None:
    assert isinstance(open_registry(tmp_path / "r"), LocalRegistry)
    assert isinstance(open_registry(str(tmp_path / "r")), LocalRegistry)
    for bad in ("gs://bucket/x", "s3://", "s3://UPPER/x", "s3://bucket/a/../b", "s3://bucket/a b"):
        with pytest.raises(ValueError):
            open_registry(bad)


def test_the_blob_cache_keeps_its_bound_and_spares_fresh_copies(tmp_path: Path) -> None:
    from edgerec.registry.cache import BlobCache

    blobs = [os.urandom(60) for _ in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    cache = BlobCache(tmp_path / "cache", max_bytes=100, grace_s=0)
    for i, (sha, data) in enumerate(zip(shas, blobs, strict=True)):
        path = cache.get(sha, len(data), partial(iter, [data]))
        os.utime(path, (1000 + i, 1000 + i))  # used in this order
    cache.evict()
    assert [cache.path_for(sha).exists() for sha in shas] == [False, False, True]

    fresh = BlobCache(tmp_path / "fresh", max_bytes=100, grace_s=3600)
    for sha, data in zip(shas, blobs, strict=True):
        fresh.get(sha, len(data), partial(iter, [data]))
    assert all(fresh.path_for(sha).exists() for sha in shas)  # all in use: over the bound rather than gone


def test_the_blob_cache_stops_a_fetch_that_runs_long(tmp_path: Path) -> None:
    from edgerec.registry.cache import BlobCache

    cache = BlobCache(tmp_path / "cache")
    sha = hashlib.sha256(b"abc").hexdigest()
    served = []

    def endless() -> Iterator[bytes]:
        while True:
            served.append(1)
            yield b"abc"

    with pytest.raises(IntegrityError):
        cache.get(sha, 3, endless)
    assert len(served) == 2 and not cache.path_for(sha).exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no temporary file left


def test_callers_asking_for_one_missing_blob_at_once_share_one_fetch(tmp_path: Path) -> None:
    from edgerec.registry.cache import BlobCache

    cache = BlobCache(tmp_path / "cache")
    data = os.urandom(1000)
    sha = hashlib.sha256(data).hexdigest()
    fetches: list[int] = []
    release = threading.Event()

    def slow_fetch() -> Iterator[bytes]:
        fetches.append(1)
        release.wait(60)
        yield data

    asking = threading.Semaphore(0)

    def ask() -> Path:
        asking.release()
        return cache.get(sha, len(data), slow_fetch)

    with ThreadPoolExecutor(8) as pool:
        results = [pool.submit(ask) for _ in range(8)]
        for _ in range(8):
            assert asking.acquire(timeout=60)
        time.sleep(0.2)  # lets the callers reach the fetch; the outcome does not depend on it
        release.set()
        paths = {future.result(timeout=60) for future in results}
    assert paths == {cache.path_for(sha)} and cache.path_for(sha).read_bytes() == data
    assert len(fetches) == 1


def test_s3_payloads_are_served_from_a_checked_local_copy(s3_registry: S3Registry, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    record, path = staged_payload(tmp_path, data)
    s3_registry.add_payload(record, path)
    with s3_registry.open_payload(MODEL, record.payload_id) as f:
        assert f.read() == data
    forged = bytes(b ^ 0xFF for b in data)  # the same size, other bytes
    s3_registry.client.put_object(Bucket=BUCKET, Key=s3_registry.blob_key(record.payload_id), Body=forged)
    with s3_registry.open_payload(MODEL, record.payload_id) as f:
        assert f.read() == data  # the checked copy, not the bucket's bytes
    from edgerec.registry.s3 import S3Registry

    another = S3Registry(s3_registry.bucket, s3_registry.prefix, client=s3_registry.client, cache_dir=tmp_path / "b")
    with pytest.raises(IntegrityError):
        another.open_payload(MODEL, record.payload_id)  # a replica without the copy checks the bucket's bytes


# --- records read from a bucket: parsed or refused with a typed error, never anything else ---

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12,
)


_MISSING = object()


def _mutated_records(valid: dict[str, Any], odd: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """Raw bytes, or ``valid`` as JSON with each field kept (3 in 4), made odd, or left out."""

    def field(name: str, value: Any) -> st.SearchStrategy[Any]:
        other = st.just(_MISSING) | odd.get(name, _json_values) | _json_values
        return st.integers(0, 3).flatmap(lambda i: st.just(value) if i else other)

    fields = st.fixed_dictionaries({name: field(name, value) for name, value in valid.items()})
    records = fields.map(lambda d: json.dumps({k: v for k, v in d.items() if v is not _MISSING}).encode())
    return st.binary(max_size=300) | records


def _valid_version_record() -> dict[str, Any]:
    pytest.importorskip("boto3")
    from edgerec.registry.s3 import version_record

    files = [ArtifactFile(path="fp32/model.onnx", size=1, sha256="0" * 64)]
    artifact = make_artifact("fp32", "onnxruntime", "fp32/model.onnx", files)
    manifest = Manifest(format_version=FORMAT_VERSION, model=MODEL, version=1, artifacts=[artifact])
    record: dict[str, Any] = json.loads(version_record(MODEL, 1, sign_nothing(manifest), "id", "host"))
    return record


_VALID_PAYLOAD = {
    "payload_id": "a" * 64,
    "model": MODEL,
    "codec": "bsdiff4",
    "base_sha256": "b" * 64,
    "target_sha256": "c" * 64,
    "size": 10,
    "make_seconds": 0.5,
}
_sha = st.sampled_from(["", "0" * 64, "F" * 64, "../x"])


@given(st.data())
def test_version_records_are_parsed_or_refused(data: st.DataObject) -> None:
    from edgerec.registry.s3 import parse_version_record

    odd = {
        "format": st.sampled_from([1.0, True, 2]),
        "model": st.sampled_from(["other", ""]),
        "version": st.sampled_from([1.0, True, 0, 2]),
        "signed_manifest": st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
    }
    raw = data.draw(_mutated_records(_valid_version_record(), odd))
    try:
        record = parse_version_record(raw, MODEL, 1, "k")
    except (IntegrityError, ManifestError):
        event("refused")
        return
    event("accepted")
    assert (record.manifest.model, record.manifest.version) == (MODEL, 1)


@given(
    _mutated_records(
        _VALID_PAYLOAD,
        {
            "payload_id": _sha,
            "target_sha256": _sha,
            "base_sha256": _sha,
            "model": st.sampled_from(["../up", ""]),
            "codec": st.sampled_from(["full", "a/b", ""]),
            "size": st.integers(min_value=-2, max_value=2**70) | st.booleans() | st.floats(),
        },
    )
)
def test_payload_records_are_parsed_or_refused(raw: bytes) -> None:
    pytest.importorskip("boto3")
    from edgerec.registry.s3 import parse_payload_record

    try:
        record = parse_payload_record(raw, "k")
    except IntegrityError:
        event("refused")
        return
    event("accepted")
    assert record.size >= 0 and len(record.payload_id) == 64 and "/" not in record.codec


def test_a_deeply_nested_record_is_refused() -> None:
    pytest.importorskip("boto3")
    from edgerec.registry.s3 import parse_payload_record, parse_version_record

    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(IntegrityError):
        parse_version_record(nested, MODEL, 1, "k")
    with pytest.raises(IntegrityError):
        parse_payload_record(nested, "k")


# --- S3 only ---------------------------------------------------------------------------


def test_s3_registry_from_url(s3_env: SeaweedS3, tmp_path: Path) -> None:
    from edgerec.registry.s3 import S3Registry

    reg = open_registry(f"s3://{BUCKET}/a/b/", cache_dir=tmp_path)
    assert isinstance(reg, S3Registry)
    assert (reg.bucket, reg.prefix, reg.location) == (BUCKET, "a/b", f"s3://{BUCKET}/a/b")


def test_a_missing_bucket_is_an_error_not_an_empty_registry(s3_env: SeaweedS3, tmp_path: Path) -> None:
    reg = open_registry("s3://no-such-bucket-here/x", cache_dir=tmp_path)
    with pytest.raises(RegistryUnavailableError):
        reg.versions(MODEL)
    with pytest.raises(RegistryUnavailableError):
        reg.get_document("policy.json")
    with pytest.raises(RegistryUnavailableError):
        reg.load_manifest(MODEL, 1)


def test_wrong_credentials_are_an_error(s3_env: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    reg = open_registry(_s3_url(), cache_dir=tmp_path)
    with pytest.raises(RegistryUnavailableError, match="SignatureDoesNotMatch"):
        reg.versions(MODEL)


def test_presigned_payload_urls_serve_ranges_and_expire(s3_registry: S3Registry, tmp_path: Path) -> None:
    import urllib3

    data = os.urandom(100_000)
    record, path = staged_payload(tmp_path, data)
    s3_registry.add_payload(record, path)
    url = s3_registry.payload_url(MODEL, record.payload_id, 60)
    assert url is not None
    assert urllib3.request("GET", url).data == data
    ranged = urllib3.request("GET", url, headers={"Range": "bytes=1000-1999"})
    assert ranged.status == 206 and ranged.data == data[1000:2000]

    short = s3_registry.payload_url(MODEL, record.payload_id, 1)
    assert short is not None
    time.sleep(2.5)  # past X-Amz-Expires; the server compares against its own clock
    refused = urllib3.request("GET", short)
    assert refused.status == 403 and b"expired" in refused.data.lower()
    with pytest.raises(InvalidInputError):
        s3_registry.payload_url(MODEL, record.payload_id, 0)


def test_a_tampered_blob_is_refused_and_never_cached(s3_registry: S3Registry, tmp_path: Path) -> None:
    publish(s3_registry, tmp_path, b"honest weights")
    sha = s3_registry.files(MODEL, 1)[0].sha256
    client = s3_registry.client
    key = s3_registry.blob_key(sha)
    for forged in (b"forged weights", b"forged", b"honest weights" + b"x" * 10_000):  # same size, shorter, longer
        client.put_object(Bucket=BUCKET, Key=key, Body=forged)
        with pytest.raises(IntegrityError):
            s3_registry.local_file(MODEL, 1, "fp32/model.onnx")
        assert not s3_registry.blobs.path_for(sha).exists()
    client.put_object(Bucket=BUCKET, Key=key, Body=b"honest weights")
    assert s3_registry.local_file(MODEL, 1, "fp32/model.onnx").read_bytes() == b"honest weights"


def test_a_tampered_payload_size_is_refused(s3_registry: S3Registry, tmp_path: Path) -> None:
    record, path = staged_payload(tmp_path, b"payload bytes")
    s3_registry.add_payload(record, path)
    s3_registry.client.put_object(Bucket=BUCKET, Key=s3_registry.blob_key(record.payload_id), Body=b"longer bytes!!")
    with pytest.raises(IntegrityError):
        s3_registry.open_payload(MODEL, record.payload_id)


def test_garbage_records_are_left_out_or_refused(s3_registry: S3Registry, tmp_path: Path) -> None:
    from edgerec.registry.s3 import MAX_VERSION_RECORD_BYTES

    publish(s3_registry, tmp_path, b"one")
    client = s3_registry.client
    client.put_object(Bucket=BUCKET, Key=s3_registry.version_key(MODEL, 2), Body=b"not json")
    client.put_object(Bucket=BUCKET, Key=s3_registry.versions_prefix(MODEL) + "notes.txt", Body=b"hi")
    # Version 1's record copied under version 3's key: it names another version.
    record = json.loads(client.get_object(Bucket=BUCKET, Key=s3_registry.version_key(MODEL, 1))["Body"].read())
    client.put_object(Bucket=BUCKET, Key=s3_registry.version_key(MODEL, 3), Body=json.dumps(record).encode())
    client.put_object(Bucket=BUCKET, Key=s3_registry.version_key(MODEL, 4), Body=b"x" * (MAX_VERSION_RECORD_BYTES + 1))

    assert s3_registry.versions(MODEL) == [1]
    assert s3_registry.next_version(MODEL) == 5  # the numbers stay taken
    for version in (2, 3, 4):
        with pytest.raises(IntegrityError):
            s3_registry.load_manifest(MODEL, version)
    other = open_registry(s3_registry.location, cache_dir=tmp_path / "other")
    assert publish(other, tmp_path, b"five").version == 5
    wait_for(lambda: s3_registry.versions(MODEL) == [1, 5], "version 5 to be listed past the stray key")


def test_another_replica_sees_a_publish(s3_env: SeaweedS3, tmp_path: Path) -> None:
    url = _s3_url()
    publisher = open_registry(url, cache_dir=tmp_path / "publisher")
    replica = open_registry(url, cache_dir=tmp_path / "replica")
    publish(publisher, tmp_path, b"one")
    assert replica.versions(MODEL) == [1]
    stamp = replica.change_stamp()
    publish(publisher, tmp_path, b"two")
    wait_for(lambda: replica.change_stamp() != stamp, "the change stamp to move")
    wait_for(lambda: replica.versions(MODEL) == [1, 2], "the replica to list version 2")
    assert replica.local_file(MODEL, 2, "fp32/model.onnx").read_bytes() == b"two"


def _publish_in_process(
    url: str, cache_dir: str, count: int, threads: int, tmp: str, ready: Any, go: Any, results: Any
) -> None:
    """One "host": ``count`` publishes from ``threads`` threads, started together with the other host."""
    reg = open_registry(url, cache_dir=Path(cache_dir))
    staged = [
        stage(Path(tmp) / f"staged-{uuid.uuid4().hex}", {"fp32/model.onnx": f"{os.getpid()} {i}".encode()})
        for i in range(count)
    ]
    ready.wait(timeout=DEADLINE_S)
    go.wait(timeout=DEADLINE_S)
    with ThreadPoolExecutor(threads) as pool:
        manifests = list(pool.map(lambda s: reg.add_version(MODEL, s, factory(MODEL, s)), staged))
    results.put([(m.version, m.artifacts[0].files[0].sha256) for m in manifests])


def _two_hosts_race(tmp_path: Path, *, per_host: int, threads: int) -> None:
    url = _s3_url()
    published = race_two_hosts(
        _publish_in_process,
        lambda h: (url, str(tmp_path / f"cache{h}"), per_host, threads, str(tmp_path / f"h{h}")),
        timeout_s=300,
    )
    total = 2 * per_host
    assert sorted(v for v, _ in published) == list(range(1, total + 1))  # each number once, none lost
    reg = open_registry(url, cache_dir=tmp_path / "check")
    assert reg.versions(MODEL) == list(range(1, total + 1))
    for version, sha in published:  # every number holds the files of the publish that was told it
        assert reg.files(MODEL, version)[0].sha256 == sha


def test_two_hosts_publishing_at_once_use_each_number_once(s3_env: SeaweedS3, tmp_path: Path) -> None:
    _two_hosts_race(tmp_path, per_host=10, threads=10)


@pytest.mark.slow
def test_two_hosts_with_fifty_concurrent_publishes_each(s3_env: SeaweedS3, tmp_path: Path) -> None:
    _two_hosts_race(tmp_path, per_host=50, threads=50)


def test_a_burst_of_requests_lists_a_stale_model_once(s3_env: SeaweedS3, tmp_path: Path) -> None:
    """While one thread lists a model's versions again, the others answer from what it listed before."""
    from edgerec.registry.s3 import S3Registry

    reg = open_registry(_s3_url(), cache_dir=tmp_path / "cache")
    assert isinstance(reg, S3Registry)
    publish(reg, tmp_path, b"one")
    reg.listing_ttl_s = 0.0  # every call finds the listing stale
    listings: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def hold_the_first(**_: object) -> None:
        listings.append(threading.current_thread().name)
        if len(listings) == 1:
            entered.set()
            release.wait(DEADLINE_S)

    reg.client.meta.events.register("before-call.s3.ListObjectsV2", hold_the_first)
    first = threading.Thread(target=reg.versions, args=(MODEL,), name="first")
    first.start()
    assert entered.wait(DEADLINE_S)
    assert [reg.versions(MODEL) for _ in range(5)] == [[1]] * 5  # answered while "first" lists
    release.set()
    first.join(DEADLINE_S)
    assert listings == ["first"]
    assert reg.versions(MODEL) == [1] and len(listings) == 2  # stale again, and nobody listing: it lists
