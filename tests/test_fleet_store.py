"""Fleet records: what real CheckUpdates and status reports leave in them, shared by replicas through
the registry, and every hostile document skipped.

Real servers on loopback over a real registry folder; flushes are called, never waited for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from test_policy import RELAXED, SAFE, _model

from edgerec.device import EdgeClient
from edgerec.registry import Registry, copy_registry
from edgerec.server.app import RunningServer, ServerConfig, start_server
from edgerec.server.release.fleet_doc import (
    decode_index,
    decode_replica_doc,
    encode_index,
    encode_replica_doc,
    index_key,
    record_from_json,
    record_to_json,
    replica_key,
)
from edgerec.server.release.fleet_store import RegistryFleet, merge_records
from edgerec.server.release.gates import GateReport, GateThresholds, evaluate_wave
from edgerec.server.release.records import DeviceRecord, VersionRecord
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc, update_pb2, update_pb2_grpc

pytest.importorskip("onnx")

MODEL = "flaky"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("fleet")
    registry = Registry(folder / "registry")
    publish(_model(folder / "v1.onnx", fragile=False), MODEL, registry, PublishOptions(no_gate=True))
    publish(_model(folder / "v2.onnx", fragile=False, scale=2.0), MODEL, registry, PublishOptions(no_gate=True))
    return registry


@pytest.fixture
def fresh_registry(registry: Registry, tmp_path: Path) -> Registry:
    """A copy of the published registry with no fleet documents yet."""

    copy_registry(registry.root, tmp_path / "registry")
    return Registry(tmp_path / "registry")


@pytest.fixture
def two_replicas(fresh_registry: Registry) -> Iterator[tuple[RunningServer, RunningServer]]:
    servers = [
        start_server(ServerConfig(registry=fresh_registry.root, listen="127.0.0.1:0", fleet_replica_id=name))
        for name in ("replica-a", "replica-b")
    ]
    try:
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop(grace=0)


def _check(server: RunningServer, device_id: str, *, channel: str = "", **labels: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel_:
        stub = update_pb2_grpc.ModelUpdateStub(channel_)  # type: ignore[no-untyped-call]
        stub.CheckUpdate(
            update_pb2.CheckUpdateRequest(
                model=MODEL,
                device_id=device_id,
                channel=channel,
                labels=labels,
                recipes=["int8", "fp32"],
                runtimes=["onnxruntime"],
                app_version="5.1",
            ),
            timeout=30,
        )


def _report(server: RunningServer, report: telemetry_pb2.StatusReport) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel_:
        stub = telemetry_pb2_grpc.TelemetryStub(channel_)  # type: ignore[no-untyped-call]
        stub.ReportStatus(report, timeout=30)


def test_a_real_sync_and_report_make_the_devices_record(fresh_registry: Registry, tmp_path: Path) -> None:
    server = start_server(ServerConfig(registry=fresh_registry.root, listen="127.0.0.1:0", fleet_replica_id="one"))
    try:
        assert server.fleet is not None
        with EdgeClient(
            f"127.0.0.1:{server.port}", MODEL, tmp_path / "dev", device_id="kiosk-1", policy=RELAXED, insecure=True
        ) as client:
            assert client.sync().updated
            client.predict(SAFE)
            client.report_status()
        (record,) = server.fleet.devices(MODEL)
        assert (record.device_id, record.model, record.channel) == ("kiosk-1", MODEL, "stable")
        assert (record.current_version, record.offered_version, record.active_version) == (0, 2, 2)
        assert 0 < record.first_seen_unix_s <= record.offered_since_unix_s <= record.last_check_unix_s
        assert record.last_report_unix_s >= record.last_check_unix_s
        assert "onnxruntime" in record.runtimes
    finally:
        server.stop(grace=0)
    # The stop flushed: a reader with no records of its own sees the device.
    reader = RegistryFleet(fresh_registry, replica_id="reader")
    assert [r.device_id for r in reader.devices(MODEL)] == ["kiosk-1"]


def test_two_replicas_agree_field_by_field(two_replicas: tuple[RunningServer, RunningServer]) -> None:
    a, b = two_replicas
    assert a.fleet is not None and b.fleet is not None
    _check(a, "d1", channel="canary", region="eu")
    _check(b, "d2", region="us")
    # d1 reports to the other replica: its report fields come from b, its check fields from a.
    _report(
        b,
        telemetry_pb2.StatusReport(
            device_id="d1",
            model=MODEL,
            active_version=2,
            outcomes=[telemetry_pb2.VersionOutcomes(version=2, predictions=10, impressions=8, clicks=3, score_sum=2.5)],
            install_failures=[telemetry_pb2.InstallFailure(version=1, error="GoldenCaseError", unix_s=1.0)],
        ),
    )
    assert a.fleet.flush() == 1 and b.fleet.flush() == 1
    seen_a, seen_b = a.fleet.devices(MODEL), b.fleet.devices(MODEL)
    assert seen_a == seen_b
    d1, d2 = seen_a
    assert (d1.device_id, d1.channel, dict(d1.labels), d1.app_version) == ("d1", "canary", {"region": "eu"}, "5.1")
    assert (d1.offered_version, d1.active_version, d1.install_failures) == (2, 2, ((1, "GoldenCaseError"),))
    assert d1.version(2) == VersionRecord(2, predictions=10, impressions=8, clicks=3, score_sum=2.5)
    assert (d2.device_id, d2.channel, dict(d2.labels), d2.last_report_unix_s) == ("d2", "stable", {"region": "us"}, 0.0)


def test_unflushed_records_of_this_replica_are_seen_at_once(two_replicas: tuple[RunningServer, RunningServer]) -> None:
    a, b = two_replicas
    assert a.fleet is not None and b.fleet is not None
    _check(a, "early")
    assert [r.device_id for r in a.fleet.devices(MODEL)] == ["early"]
    assert b.fleet.devices(MODEL) == []  # not flushed yet
    a.fleet.flush()
    assert [r.device_id for r in b.fleet.devices(MODEL)] == ["early"]


def test_an_offer_keeps_its_first_time_until_the_version_changes(fresh_registry: Registry) -> None:
    fleet = RegistryFleet(fresh_registry, replica_id="solo")
    request = update_pb2.CheckUpdateRequest(model=MODEL, device_id="d", current_version=1)
    fleet.checked(request, 2, 100.0)
    fleet.checked(request, 2, 200.0)
    (record,) = fleet.devices(MODEL)
    assert (record.offered_since_unix_s, record.last_check_unix_s, record.first_seen_unix_s) == (100.0, 200.0, 100.0)
    fleet.checked(request, 3, 300.0)
    assert fleet.devices(MODEL)[0].offered_since_unix_s == 300.0


def test_requests_without_a_usable_id_or_attributes_are_not_recorded(fresh_registry: Registry) -> None:
    fleet = RegistryFleet(fresh_registry, replica_id="solo")
    fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL), 1, 1.0)
    fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id="bad id"), 1, 1.0)
    fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id="d", channel="UPPER"), 1, 1.0)
    fleet.reported(telemetry_pb2.StatusReport(model=MODEL, device_id="d", labels={"k": "v" * 500}), 1.0)
    assert fleet.devices(MODEL) == []


def test_memory_is_bounded_least_recently_seen_first(fresh_registry: Registry) -> None:
    fleet = RegistryFleet(fresh_registry, replica_id="solo", max_devices=3)
    for i in range(5):
        fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id=f"d{i}"), 1, float(i + 1))
    assert [r.device_id for r in fleet.devices(MODEL)] == ["d2", "d3", "d4"]
    assert fleet.evicted == 2 and fleet.local_devices() == 3


def test_the_server_refuses_reports_beyond_the_protocols_bounds(
    two_replicas: tuple[RunningServer, RunningServer],
) -> None:
    a, _ = two_replicas
    for report in (
        telemetry_pb2.StatusReport(device_id="d", model=MODEL, channel="Not A Name"),
        telemetry_pb2.StatusReport(
            device_id="d", model=MODEL, outcomes=[telemetry_pb2.VersionOutcomes(version=i) for i in range(9)]
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _report(a, report)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data",
    [
        b"not zstd",
        zstandard.ZstdCompressor().compress(b"{not json"),
        zstandard.ZstdCompressor().compress(json.dumps({"format": 1, "model": MODEL}).encode()),
        zstandard.ZstdCompressor().compress(
            json.dumps(
                {"format": 1, "model": MODEL, "written_unix_s": 1, "devices": [{"device_id": "x", "labels": []}]}
            ).encode()
        ),
        zstandard.ZstdCompressor().compress(b" " * (17 * 1024 * 1024)),  # a bomb past the decoded bound
    ],
)
def test_malformed_replica_documents_are_skipped(fresh_registry: Registry, data: bytes) -> None:
    good = RegistryFleet(fresh_registry, replica_id="good")
    good.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id="ok"), 1, 1.0)
    good.flush()
    fresh_registry.put_document(replica_key(MODEL, "evil"), data, if_match=None)
    index = fresh_registry.get_document(index_key(MODEL))
    assert index is not None
    replicas = decode_index(index.data) | {"evil": 2e9}
    fresh_registry.put_document(index_key(MODEL), encode_index(replicas), if_match=index.etag)
    reader = RegistryFleet(fresh_registry, replica_id="reader")
    assert [r.device_id for r in reader.devices(MODEL)] == ["ok"]
    assert reader.skipped_documents == 1


def test_a_malformed_index_is_skipped_and_replaced_at_the_next_announce(fresh_registry: Registry) -> None:
    fresh_registry.put_document(index_key(MODEL), b"\xff garbage", if_match=None)
    fleet = RegistryFleet(fresh_registry, replica_id="solo")
    fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id="d"), 1, 1.0)
    assert fleet.flush() == 1
    assert [r.device_id for r in RegistryFleet(fresh_registry, replica_id="reader").devices(MODEL)] == ["d"]


def test_a_replica_document_too_big_keeps_the_most_recently_seen(fresh_registry: Registry) -> None:
    fleet = RegistryFleet(fresh_registry, replica_id="solo")
    for i in range(700):  # about 1.4 MB once compressed: random labels do not compress below 4 bits a character
        labels = {f"k{k}": os.urandom(64).hex() for k in range(32)}
        fleet.checked(update_pb2.CheckUpdateRequest(model=MODEL, device_id=f"d{i:04}", labels=labels), 1, 1.0 + i)
    assert fleet.flush() == 1
    stored = [r.device_id for r in RegistryFleet(fresh_registry, replica_id="reader").devices(MODEL)]
    assert 100 < len(stored) < 700 and stored[-1] == "d0699" and stored == sorted(stored)
    assert stored[0] == f"d{700 - len(stored):04}"  # the most recently seen ones, none missing between


# --- the document codec and the merge, alone -----------------------------------------

_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True)
_times = st.floats(min_value=0, max_value=2e9, allow_nan=False)
_counts = st.integers(min_value=0, max_value=2**40)
_records = st.builds(
    DeviceRecord,
    device_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,20}", fullmatch=True),
    model=st.just(MODEL),
    channel=_names,
    labels=st.dictionaries(_names, st.text(max_size=20), max_size=4),
    runtimes=st.lists(_names, max_size=3).map(tuple),
    app_version=st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=10),
    attributes_unix_s=_times,
    current_version=_counts,
    offered_version=_counts,
    offered_since_unix_s=_times,
    last_check_unix_s=_times,
    first_seen_unix_s=_times,
    last_report_unix_s=_times,
    active_version=_counts,
    held_back_version=_counts,
    install_failures=st.lists(st.tuples(_counts, _names), max_size=3).map(tuple),
    rollbacks_from=st.lists(_counts, max_size=3).map(tuple),
    versions=st.lists(
        st.builds(
            VersionRecord,
            version=_counts,
            predictions=_counts,
            local_errors=_counts,
            fallbacks=_counts,
            p99_s=_times,
            impressions=_counts,
            clicks=_counts,
            score_sum=_times,
            active_since_unix_s=_times,
        ),
        max_size=3,
    ).map(tuple),
)


@given(_records)
def test_records_survive_the_document_form(record: DeviceRecord) -> None:
    assert record_from_json(json.loads(json.dumps(record_to_json(record))), MODEL) == record
    data = encode_replica_doc(MODEL, "r", 5.0, [record])
    assert decode_replica_doc(data, MODEL, 10) == (5.0, [record])


@given(st.binary(max_size=512))
def test_any_bytes_are_a_document_or_a_value_error(data: bytes) -> None:
    for blob in (data, zstandard.ZstdCompressor().compress(data)):
        with contextlib.suppress(ValueError):
            decode_replica_doc(blob, MODEL, 10)
        with contextlib.suppress(ValueError):
            decode_index(blob)


@given(_records, _records)
def test_merging_is_order_free_in_what_matters(a: DeviceRecord, b: DeviceRecord) -> None:
    b = dataclasses.replace(b, device_id=a.device_id)
    ab, ba = merge_records(a, b), merge_records(b, a)
    newest_check = max(a.last_check_unix_s, b.last_check_unix_s)
    newest_report = max(a.last_report_unix_s, b.last_report_unix_s)
    for merged in (ab, ba):
        assert merged.last_check_unix_s == newest_check and merged.last_report_unix_s == newest_report
        assert merged.attributes_unix_s == max(a.attributes_unix_s, b.attributes_unix_s)
    distinct = (a.last_check_unix_s != b.last_check_unix_s, a.last_report_unix_s != b.last_report_unix_s)
    if all(distinct) and a.attributes_unix_s != b.attributes_unix_s:
        assert ab == ba


def test_a_device_offered_the_version_that_never_reports_fails_the_gate(
    two_replicas: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_replicas
    assert a.fleet is not None
    _check(a, "quiet")
    _check(b, "talker")
    _report(
        b,
        telemetry_pb2.StatusReport(
            device_id="talker",
            model=MODEL,
            active_version=2,
            outcomes=[telemetry_pb2.VersionOutcomes(version=2, predictions=500)],
        ),
    )
    b.fleet.flush()  # type: ignore[union-attr]
    treatment = [d for d in a.fleet.devices(MODEL) if d.offered_version == 2]
    assert [d.device_id for d in treatment] == ["quiet", "talker"]
    offered = max(d.offered_since_unix_s for d in treatment)
    thresholds = GateThresholds(min_devices=2, silent_after_s=60.0, require_control=False)

    def verdict(now: float) -> GateReport:
        return evaluate_wave(
            version=2,
            baseline_version=1,
            treatment=treatment,
            control=[],
            wave_started_unix_s=offered,
            now_unix_s=now,
            thresholds=thresholds,
        )

    waiting = verdict(offered + 1)
    assert waiting.verdict == "wait" and waiting.numbers["devices.pending"] == 1
    silent = verdict(offered + 61)
    assert silent.verdict == "fail" and silent.numbers["devices.silent"] == 1
    assert silent.numbers["devices.running"] == 1
