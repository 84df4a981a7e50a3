"""Server behaviour beyond a single sync: health, reflection, live publishing, shared payloads."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgerec.device import EdgeClient
from edgerec.registry import PayloadRecord, Registry
from edgerec.server.limits import StreamLimits, device_rate, paced_burst_chunks, paced_chunk_bytes
from edgerec.server.payloads import PayloadStore, version_file
from edgerec.server.progress import DEFAULT_MIN_RATE
from edgerec.v1 import update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch


def test_health_and_reflection(served: tuple[Registry, str]) -> None:
    _, address = served
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgerec.v1.ModelUpdate", "edgerec.v1.Inference"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"edgerec.v1.ModelUpdate", "edgerec.v1.Inference", "grpc.health.v1.Health"} <= names


def test_versions_published_while_serving_are_seen(
    served_copy: tuple[Registry, str], model_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgerec.server.publish import PublishOptions, publish

    registry, address = served_copy
    with EdgeClient(server=address, model="ctr", data_dir=tmp_path, insecure=True) as client:
        assert client.sync().version == 2
        publish(model_pair[1], "ctr", registry, PublishOptions(no_gate=True))  # the same weights again, as version 3
        result = client.sync()
    assert result.version == 3 and result.previous_version == 2
    # Export is deterministic, so every file is already on the device: nothing to download.
    assert result.codec == "copy" and result.payload_bytes == 0


def test_a_missing_delta_is_made_once_for_many_devices(
    served_copy: tuple[Registry, str], caplog: pytest.LogCaptureFixture
) -> None:
    registry, _ = served_copy
    store = PayloadStore(registry)
    base = next(f for f in registry.files("ctr", 2) if f.path == "int8/model.onnx.data")
    target = next(f for f in registry.files("ctr", 1) if f.path == "int8/model.onnx.data")
    results: list[PayloadRecord] = []

    def ask() -> None:  # a downgrade delta: never precomputed at publish time
        results.append(
            store.ensure(
                "ctr",
                "bsdiff4",
                version_file(registry, "ctr", 1, target.path),
                target.sha256,
                version_file(registry, "ctr", 2, base.path),
                base.sha256,
            )
        )

    with caplog.at_level(logging.INFO, logger="edgerec.server.payloads"):
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 8 and len({r.payload_id for r in results}) == 1
    made = [r for r in caplog.records if r.getMessage().startswith("made bsdiff4 payload")]
    assert len(made) == 1, f"the delta was computed {len(made)} times"


def test_device_rates_are_bounded_and_set_the_chunk_size() -> None:
    assert device_rate(0, DEFAULT_MIN_RATE) is None  # no cap asked: only the server's limits
    assert device_rate(1, DEFAULT_MIN_RATE) == DEFAULT_MIN_RATE  # never below what keeps a slot
    assert device_rate(250_000, DEFAULT_MIN_RATE) == 250_000.0
    assert paced_chunk_bytes(250_000, 1 << 20) == 31_250  # pauses near 1/8 s
    assert paced_chunk_bytes(DEFAULT_MIN_RATE, 1 << 20) == 16 * 1024  # at least 16 KiB
    assert paced_chunk_bytes(250_000, 16 * 1024) == 16 * 1024  # never above what the device asked
    assert paced_chunk_bytes(250_000, 16) == 16
    # Slow streams (a chunk pauses 1/8 s or more) send a few chunks per pause; fast ones one.
    assert paced_burst_chunks(16_000, 16 * 1024) == 4 and paced_burst_chunks(DEFAULT_MIN_RATE, 4096) == 16
    assert paced_burst_chunks(64_000, 16 * 1024) == 4 and paced_burst_chunks(250_000, 16 * 1024) == 1
    assert paced_burst_chunks(12 * 1024 * 1024, 16 * 1024) == 1


def test_a_device_rate_is_paced_by_the_server_in_chunks_it_sets(served: tuple[Registry, str]) -> None:
    _, address = served
    check = update_pb2.CheckUpdateRequest(model="ctr", recipes=["int8"], codecs=["full"], runtimes=["onnxruntime"])
    with grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        payload = max(stub.CheckUpdate(check, timeout=30).payloads, key=lambda p: p.size)
        assert payload.size > 32 * 1024

        def first_chunks(rate: int, count: int) -> list[int]:
            request = update_pb2.FetchPayloadRequest(
                model="ctr", payload_id=payload.payload_id, max_chunk_bytes=32 * 1024, max_bytes_per_second=rate
            )
            stream = stub.FetchPayload(request, timeout=30)
            try:
                return [len(chunk.data) for chunk, _ in zip(stream, range(count), strict=False)]
            finally:
                stream.cancel()

        assert first_chunks(200_000, 2) == [25_000] * 2  # pauses near 1/8 s
        assert first_chunks(64_000, 2) == [16 * 1024] * 2  # but chunks of at least 16 KiB
        assert first_chunks(1, 1) == [16 * 1024]  # 1 B/s counts as the minimum stream rate, 4 KiB/s
        # Unpaced: the chunk the device asked, within what the progress rules can watch arrive.
        assert first_chunks(0, 1) == [StreamLimits().chunk_limit(32 * 1024)]
