"""The whole path on a real gRPC server on loopback: publish -> sync full -> sync delta -> predict."""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgerec.device import EdgeClient
from edgerec.device.transport import RetryPolicy, TransportConfig
from edgerec.errors import (
    IntegrityError,
    InvalidInputError,
    ModelNotFoundError,
    NoModelAvailableError,
    TransportError,
)
from edgerec.hashing import sha256_file
from edgerec.registry import PayloadRecord, Registry
from edgerec.tensors import to_proto
from edgerec.tools.links.cutting import LinkProxy
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch

MODEL = "ctr"


def _assert_matches_registry(client: EdgeClient, registry: Registry, version: int) -> None:
    """Every file of the device's active artifact is byte-identical to the published one."""
    current = client.store.current()
    assert current is not None and current.version == version
    for f in current.artifact.files:
        local = current.file(f.path)
        published = registry.file_path(MODEL, version, f.path)
        assert local.read_bytes() == published.read_bytes(), f.path
        assert sha256_file(local) == f.sha256


def test_sync_full_then_delta(served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = served
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        first = client.sync(target_version=1)
        assert (first.version, first.previous_version, first.codec) == (1, None, "full")
        _assert_matches_registry(client, registry, 1)

        second = client.sync()
        assert (second.version, second.previous_version) == (2, 1)
        assert second.codec != "full", "a device on v1 should get a delta, not the full files"
        assert 0 < second.payload_bytes < first.payload_bytes
        assert second.full_bytes == first.full_bytes
        _assert_matches_registry(client, registry, 2)
        assert client.store.previous() is not None

        again = client.sync()
        assert (again.updated, again.version, again.payload_bytes) == (False, 2, 0)


def test_resume_after_connection_dropped_at_random_offset(served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = served
    port = int(address.rsplit(":", 1)[1])
    proxy = LinkProxy("127.0.0.1", port)
    rng = random.Random(7)
    full_size = sum(f.size for f in registry.files(MODEL, 2) if f.recipe == "int8")
    cut = rng.randrange(full_size // 10, full_size // 2)
    proxy.cut_after(cut)
    config = TransportConfig(max_chunk_bytes=16 * 1024, retry=RetryPolicy(backoff_initial_s=0.05))
    try:
        with EdgeClient(
            server=f"127.0.0.1:{proxy.port}", model=MODEL, data_dir=tmp_path, transport=config, insecure=True
        ) as client:
            result = client.sync()
            assert proxy.cuts == 1, "the proxy did not cut the download"
            assert result.version == 2
            _assert_matches_registry(client, registry, 2)
            # Resumed, not restarted: at most one chunk plus framing is received twice.
            assert result.payload_bytes <= sum(p["size"] for p in result.payloads) + 64 * 1024  # type: ignore[misc]
    finally:
        proxy.close()


def test_predict_local_cache_and_server_fallback(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    _, address = served
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        before_sync = client.predict(request_inputs)
        assert before_sync.source == "server" and before_sync.fallback_reason

        client.sync()
        local = client.predict(request_inputs)
        assert (local.source, local.version) == ("local", 2)
        cached = client.predict(request_inputs)
        assert cached.source == "cache"
        np.testing.assert_array_equal(cached.scores, local.scores)

        current = client.store.current()
        assert current is not None
        with current.entrypoint.open("r+b") as f:  # damage the graph file
            f.seek(10)
            f.write(b"\xde\xad\xbe\xef")
        client.reload()
        client.cache.clear()
        fallback = client.predict(request_inputs)
        assert fallback.source == "server" and fallback.version == 2
        assert fallback.fallback_reason is not None and "sha256" in fallback.fallback_reason
        np.testing.assert_allclose(fallback.scores, local.scores, atol=1e-6)


def test_unknown_model_is_a_typed_error(served: tuple[Registry, str], tmp_path: Path) -> None:
    _, address = served
    with (
        EdgeClient(server=address, model="nope", data_dir=tmp_path, insecure=True) as client,
        pytest.raises(ModelNotFoundError),
    ):
        client.sync()


def test_wrong_base_version_is_refused_and_device_falls_back_to_full(
    served: tuple[Registry, str], tmp_path: Path
) -> None:
    registry, address = served
    with grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        for version, digest in ((1, "0" * 64), (99, "")):
            with pytest.raises(grpc.RpcError) as info:
                stub.CheckUpdate(
                    update_pb2.CheckUpdateRequest(
                        model=MODEL, current_version=version, current_sha256=digest, current_recipe="int8"
                    )
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        client.sync(target_version=1)
        current = client.store.current()
        assert current is not None
        # The device's v1 file is damaged: it must not ask for a delta against it.
        current.entrypoint.write_bytes(b"garbage")
        result = client.sync()
        assert result.version == 2 and result.codec == "full"
        _assert_matches_registry(client, registry, 2)


def test_a_damaged_file_is_repaired_by_a_delta_from_the_intact_previous_version(
    served: tuple[Registry, str], tmp_path: Path
) -> None:
    """The active version 2 is damaged, version 1 is intact: a 1 -> 2 delta repairs it, not the full files."""
    registry, address = served
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        client.sync(target_version=1)
        upgrade = client.sync()
        current = client.store.current()
        assert current is not None and current.version == 2
        largest = max(current.artifact.files, key=lambda f: f.size)
        with current.file(largest.path).open("r+b") as f:  # a bad flash sector in the middle of the weights
            f.seek(largest.size // 2)
            f.write(b"\xff" * 64)
        repair = client.sync()
        assert (repair.updated, repair.version, repair.fell_back_to_full) == (True, 2, False)
        assert repair.codec != "full" and repair.payload_bytes == upgrade.payload_bytes < repair.full_bytes
        assert client.store.previous() is not None and client.store.previous().version == 1  # type: ignore[union-attr]
        _assert_matches_registry(client, registry, 2)
        assert not client.sync().updated


def test_corrupt_payload_is_rejected_and_current_model_kept(served_copy: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = served_copy
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        client.sync(target_version=1)
        before = {p: p.read_bytes() for p in client.store.versions_dir.rglob("*") if p.is_file()}
        for payload in (registry.root / "payloads" / MODEL).iterdir():  # every delta and full file goes bad
            data = bytearray(payload.read_bytes())
            data[len(data) // 2] ^= 0xFF
            payload.write_bytes(bytes(data))
        with pytest.raises(IntegrityError):
            client.sync()
        assert client.active_version == 1
        after = {p: p.read_bytes() for p in client.store.versions_dir.rglob("*") if p.is_file()}
        assert after == before, "a failed sync changed the installed files"
        assert not any(client.store.staging_dir.iterdir()), "staging left behind"


def test_malformed_tensors_are_invalid_argument(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    _, address = served
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        bad_requests = [
            inference_pb2.PredictRequest(model=MODEL),  # no inputs
            inference_pb2.PredictRequest(
                model=MODEL,
                inputs={name: to_proto(a) for name, a in request_inputs.items()} | {"extra": to_proto(np.zeros(1))},
            ),
            inference_pb2.PredictRequest(
                model=MODEL,
                inputs={name: to_proto(a.astype(np.float64)) for name, a in request_inputs.items()},
            ),
        ]
        truncated = {name: to_proto(a) for name, a in request_inputs.items()}
        first = next(iter(truncated))
        truncated[first].data = truncated[first].data[:-3]
        bad_requests.append(inference_pb2.PredictRequest(model=MODEL, inputs=truncated))
        for request in bad_requests:
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(inference_pb2.PredictRequest(model="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        with pytest.raises(InvalidInputError):  # through the server (no local model yet)
            client.predict({name: a.astype(np.float64) for name, a in request_inputs.items()})
        client.sync()
        with pytest.raises(InvalidInputError):  # checked locally
            client.predict({"dense_features": request_inputs["dense_features"]})


def test_no_model_and_no_server_is_a_typed_error(tmp_path: Path, request_inputs: dict[str, np.ndarray]) -> None:
    with (
        EdgeClient(server=None, model=MODEL, data_dir=tmp_path) as client,
        pytest.raises(NoModelAvailableError),
    ):
        client.predict(request_inputs)


def test_a_delta_that_fails_falls_back_to_the_full_files_once(
    served_copy: tuple[Registry, str], tmp_path: Path
) -> None:
    registry, address = served_copy
    deltas = [
        registry.payload_path(MODEL, record.payload_id)
        for f in registry.files(MODEL, 2)
        for codec in ("tensor", "bsdiff4", "zstd-patch-from")
        if (record := _delta_record(registry, codec, f.sha256)) is not None
    ]
    assert deltas, "the registry should hold deltas from v1 to v2"
    for path in deltas:  # every delta goes bad; the full payloads stay intact
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, insecure=True) as client:
        client.sync(target_version=1)
        result = client.sync()
        assert result.fell_back_to_full and result.codec == "full" and result.version == 2
        _assert_matches_registry(client, registry, 2)


def _delta_record(registry: Registry, codec: str, target_sha256: str) -> PayloadRecord | None:
    base_files = {f.path: f.sha256 for f in registry.files(MODEL, 1)}
    for base_sha in base_files.values():
        record = registry.find_payload(MODEL, codec, base_sha, target_sha256)
        if record is not None:
            return record
    return None


def test_a_download_slower_than_its_deadline_fails_without_installing(
    served: tuple[Registry, str], tmp_path: Path
) -> None:
    _, address = served
    # The full int8 payloads are ~75 kB: at 2 kB/s after a 16 kB burst they take far longer than 0.5 s.
    slow = TransportConfig(rate_bytes_per_s=2_000, max_chunk_bytes=4096, download_deadline_s=0.5)
    with EdgeClient(server=address, model=MODEL, data_dir=tmp_path, transport=slow, insecure=True) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match="deadline"):
            client.sync()
        assert time.monotonic() - started < 5, "the deadline must bound the sync"
        assert client.active_version is None
