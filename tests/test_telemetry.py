"""Status reports: a device reports what it runs and did; the server keeps the latest per device, bounded.

A real gRPC server on loopback, real onnxruntime, the small hand-built models of test_policy.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from test_policy import NAN, ODD, RELAXED, SAFE, _model

from edgerec.device import EdgeClient
from edgerec.device.telemetry import StatusReporter, TelemetrySender
from edgerec.device.transport import RetryPolicy, TransportConfig
from edgerec.errors import InvalidInputError, ModelNotFoundError, NoModelAvailableError, TransportError
from edgerec.registry import Registry

if TYPE_CHECKING:
    from edgerec.server.app import RunningServer
from edgerec.v1 import telemetry_pb2

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with "safe" (one version) and "flaky" (v1 safe, v2 fragile: odd batches fail)."""
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("telemetry")
    registry = Registry(folder / "registry")
    publish(_model(folder / "safe.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "v1.onnx", fragile=False), "flaky", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "v2.onnx", fragile=True), "flaky", registry, PublishOptions(no_gate=True))
    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", max_telemetry_devices=3))
    try:
        yield server
    finally:
        server.stop(grace=0)


def _target(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


def _dead_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_a_report_carries_version_answers_fallbacks_latency_and_syncs(running: RunningServer, tmp_path: Path) -> None:
    assert running.telemetry is not None
    with EdgeClient(_target(running), "safe", tmp_path, device_id="kiosk-1", policy=RELAXED, insecure=True) as client:
        assert client.predict(SAFE).fallback == "no_local_model"  # answered by the server
        assert client.sync().updated and not client.sync().updated
        client.predict(SAFE)
        client.predict(SAFE)  # the cache
        ack = client.report_status()
    assert ack.received_unix_s > 0
    report = running.telemetry.latest("kiosk-1", "safe")
    assert report is not None
    assert (report.active_version, report.recipe) == (1, "int8")
    assert dict(report.predictions_by_source) == {"server": 1, "local": 1, "cache": 1}
    assert dict(report.fallbacks_by_reason) == {"no_local_model": 1}
    assert report.latency.count == 3 and 0 < report.latency.p50_s <= report.latency.p90_s <= report.latency.p99_s
    assert (report.sync.updated, report.sync.up_to_date, report.sync.failed, report.sync.last_error) == (1, 1, 0, "")
    assert report.sync.last_attempt_unix_s > 0 and report.created_unix_s > 0 and not report.rollbacks


def test_a_device_given_no_id_reports_under_its_stable_one(running: RunningServer, tmp_path: Path) -> None:
    """The README's client.report_status() once failed: a status report needs device_id and model."""
    assert running.telemetry is not None
    with EdgeClient(_target(running), "safe", tmp_path, policy=RELAXED, insecure=True) as client:
        client.sync()
        assert client.report_status().received_unix_s > 0
    with EdgeClient(_target(running), "safe", tmp_path, policy=RELAXED) as restarted:
        assert restarted.device_id == client.device_id and restarted.report_status().received_unix_s > 0
    report = running.telemetry.latest(client.device_id, "safe")
    assert report is not None and report.active_version == 1


def test_rollbacks_and_failed_syncs_are_reported(running: RunningServer, tmp_path: Path) -> None:
    assert running.telemetry is not None
    policy = dataclasses.replace(RELAXED, default_score=0.5, local_failure_threshold=2)
    with EdgeClient(_target(running), "flaky", tmp_path, device_id="tv-7", policy=policy, insecure=True) as c:
        c.sync(target_version=1)
        c.sync()  # version 2: fails on odd batches, so two of them roll it back to 1
        for _ in range(2):
            assert c.predict(ODD).fallback == "local_error"
        assert c.rollbacks == [(2, 1)] and c.active_version == 1
        assert c.sync().held_back_version == 2  # the server still offers 2: held back, not an error
        c.report_status()
    report = running.telemetry.latest("tv-7", "flaky")
    assert report is not None and report.active_version == 1 and report.held_back_version == 2
    assert [(r.from_version, r.to_version) for r in report.rollbacks] == [(2, 1)]
    assert report.fallbacks_by_reason["local_error"] == 2 and report.sync.updated == 2
    assert (report.sync.held_back, report.sync.up_to_date, report.sync.failed) == (1, 0, 0)

    quick = TransportConfig(check_timeout_s=0.5, retry=RetryPolicy(max_attempts=1, backoff_initial_s=0.01))
    with EdgeClient(_dead_port(), "flaky", tmp_path, device_id="tv-7", transport=quick, insecure=True) as offline:
        with pytest.raises(TransportError):
            offline.sync()
        status = offline.status_report()
    assert (status.sync.failed, status.active_version) == (1, 1) and "TransportError" in status.sync.last_error


def test_the_periodic_reporter_sends_in_the_background_and_stops(running: RunningServer, tmp_path: Path) -> None:
    assert running.telemetry is not None
    client = EdgeClient(_target(running), "safe", tmp_path, device_id="phone-3", policy=RELAXED)
    reporter = client.start_reporting(interval_s=0.02)
    assert client.start_reporting() is reporter
    client.predict(NAN)
    waited = time.monotonic()
    while reporter.sent < 2 and time.monotonic() - waited < 10:
        time.sleep(0.01)
    client.close()
    assert reporter.sent >= 2 and reporter.failed == 0
    sent = reporter.sent
    time.sleep(0.1)
    assert reporter.sent == sent, "close() stops the reporter"
    latest = running.telemetry.latest("phone-3", "safe")
    assert latest is not None and latest.predictions_by_source["server"] == 1


def test_a_reporter_facing_a_dead_server_counts_failures_and_never_raises(tmp_path: Path) -> None:
    sender = TelemetrySender(_dead_port())
    made: list[int] = []

    def make() -> telemetry_pb2.StatusReport:
        made.append(1)
        return telemetry_pb2.StatusReport(device_id="d", model="m")

    reporter = StatusReporter(make, sender.send, interval_s=0.01, timeout_s=0.2).start()
    waited = time.monotonic()
    while reporter.failed < 2 and time.monotonic() - waited < 10:
        time.sleep(0.01)
    reporter.stop()
    sender.close()
    assert reporter.failed >= 2 and reporter.sent == 0 and reporter.last_error is not None
    assert len(made) == reporter.failed, "one snapshot per tick: nothing queues up while the server is away"
    with (
        EdgeClient(server=None, model="safe", data_dir=tmp_path) as client,
        pytest.raises(NoModelAvailableError, match="no server"),
    ):
        client.report_status()


def test_the_server_refuses_malformed_reports_and_keeps_a_bounded_number(running: RunningServer) -> None:
    assert running.telemetry is not None
    telemetry = running.telemetry
    sender = TelemetrySender(_target(running))
    try:
        with pytest.raises(InvalidInputError, match="device_id"):
            sender.send(telemetry_pb2.StatusReport(model="safe"))
        with pytest.raises(ModelNotFoundError, match="nowhere"):
            sender.send(telemetry_pb2.StatusReport(device_id="d", model="nowhere"))
        too_many = telemetry_pb2.StatusReport(device_id="d", model="safe")
        too_many.fallbacks_by_reason.update({f"reason{i}": 1 for i in range(65)} | {"local_error": 2})
        too_many.predictions_by_source.update({"server": 3, "elsewhere": 4})
        too_many.rollbacks.extend(telemetry_pb2.Rollback(from_version=2, to_version=1) for _ in range(65))
        with pytest.raises(InvalidInputError, match="at most 64"):
            sender.send(too_many)
        del too_many.rollbacks[64:]
        sender.send(too_many)
        kept = telemetry.latest("d", "safe")
        assert kept is not None and len(kept.rollbacks) == 64
        assert dict(kept.fallbacks_by_reason) == {"other": 65, "local_error": 2}, "unknown reasons are folded"
        assert dict(kept.predictions_by_source) == {"other": 4, "server": 3}
        evicted = telemetry.evicted
        for i in range(5):
            sender.send(telemetry_pb2.StatusReport(device_id=f"bulk-{i}", model="safe", active_version=1))
    finally:
        sender.close()
    assert len(telemetry) == 3, "max_telemetry_devices=3"
    assert telemetry.evicted >= evicted + 2
    assert telemetry.latest("bulk-4", "safe") is not None and telemetry.latest("bulk-0", "safe") is None
    assert sum((r.model, r.active_version) == ("safe", 1) for r in telemetry.reports()) == 3


def test_report_latency_matches_the_counters(running: RunningServer, tmp_path: Path) -> None:
    with EdgeClient(_target(running), "safe", tmp_path, cache_entries=0, policy=RELAXED, insecure=True) as client:
        client.sync()
        for i in range(20):
            client.predict({"x": SAFE["x"] + i})
        report = client.status_report()
        expected = client.counters.latency_percentiles()
    assert report.latency.count == 20
    np.testing.assert_allclose(
        [report.latency.p50_s, report.latency.p90_s, report.latency.p99_s],
        [expected[0.5], expected[0.9], expected[0.99]],
    )


def test_with_tokens_a_report_is_kept_only_under_its_tokens_device(tmp_path: Path) -> None:
    """A device's token speaks for it alone: a report naming another device is PERMISSION_DENIED and not kept."""
    from test_security import _make_ca, _make_server_cert, _pem

    from edgerec.device.transport.channel import make_channel
    from edgerec.errors import PermissionDeniedError
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish
    from edgerec.server.security import add_device_token
    from edgerec.v1 import telemetry_pb2_grpc

    ca_key, ca_cert = _make_ca("telemetry test CA")
    key, cert = _make_server_cert(ca_key, ca_cert)
    ca, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.write_bytes(_pem(ca_cert))
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tokens_file = tmp_path / "tokens.json"
    token = {device: add_device_token(tokens_file, device) for device in ("kiosk-a", "kiosk-b")}
    registry = Registry(tmp_path / "registry")
    publish(_model(tmp_path / "safe.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    config = ServerConfig(
        registry=registry.root, listen="127.0.0.1:0", tls_cert=cert_file, tls_key=key_file, tokens_file=tokens_file
    )
    server = start_server(config)
    telemetry = server.telemetry
    assert telemetry is not None
    target = f"127.0.0.1:{server.port}"
    try:
        with EdgeClient(target, "safe", tmp_path / "a", tls_ca=ca, token=token["kiosk-a"]) as own:
            assert own.device_id == "kiosk-a" and own.report_status().received_unix_s > 0
        liar = EdgeClient(target, "safe", tmp_path / "b", tls_ca=ca, token=token["kiosk-a"], device_id="kiosk-b")
        with liar, pytest.raises(PermissionDeniedError, match="kiosk-a"):
            liar.report_status()
        assert telemetry.latest("kiosk-a", "safe") is not None and telemetry.latest("kiosk-b", "safe") is None

        def raw(report: telemetry_pb2.StatusReport, token: str | None) -> grpc.StatusCode:
            with make_channel(target, tls_ca=ca, token=token) as channel:
                stub = telemetry_pb2_grpc.TelemetryStub(channel)  # type: ignore[no-untyped-call]
                try:
                    stub.ReportStatus(report, timeout=5)
                except grpc.RpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        forged = telemetry_pb2.StatusReport(device_id="kiosk-a", model="safe", active_version=99)
        assert raw(forged, token["kiosk-b"]) == grpc.StatusCode.PERMISSION_DENIED
        assert raw(forged, None) == grpc.StatusCode.UNAUTHENTICATED
        assert raw(forged, "kiosk-a.not-the-secret") == grpc.StatusCode.UNAUTHENTICATED
        latest = telemetry.latest("kiosk-a", "safe")
        assert latest is not None and latest.active_version == 0, "no forged report replaced kiosk-a's"
        # Without a device_id the report is filed under the token's device.
        assert raw(telemetry_pb2.StatusReport(model="safe", active_version=7), token["kiosk-b"]) == grpc.StatusCode.OK
        filed = telemetry.latest("kiosk-b", "safe")
        assert filed is not None and filed.active_version == 7
    finally:
        server.stop(grace=0)
