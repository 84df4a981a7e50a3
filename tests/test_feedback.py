"""Outcome feedback: the app's clicks become per-version sums on the device, saved, and reported to
the server's fleet records (a real server on loopback, real onnxruntime)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy import RELAXED, SAFE, _model

from edgerec.device import EdgeClient
from edgerec.device.feedback import FILE_NAME, MAX_FILE_BYTES, CounterSnapshot, OutcomeLedger
from edgerec.device.local_model import Prediction
from edgerec.device.policy import Source
from edgerec.errors import InvalidInputError
from edgerec.registry import Registry
from edgerec.server.app import RunningServer, ServerConfig, start_server

pytest.importorskip("onnx")

MODEL = "clicks"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("feedback")
    registry = Registry(folder / "registry")
    publish(_model(folder / "v1.onnx", fragile=False), MODEL, registry, PublishOptions(no_gate=True))
    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", fleet_replica_id="fb"))
    try:
        yield server
    finally:
        server.stop(grace=0)


def test_feedback_is_summed_saved_and_reported(running: RunningServer, tmp_path: Path) -> None:
    assert running.telemetry is not None and running.fleet is not None
    target = f"127.0.0.1:{running.port}"
    with EdgeClient(target, MODEL, tmp_path, device_id="phone-1", policy=RELAXED, insecure=True) as client:
        client.sync()
        prediction = client.predict(SAFE)
        assert prediction.source == "local" and prediction.version == 1
        assert client.record_feedback(prediction, clicked=[1])
        assert client.record_feedback(client.predict(SAFE), clicked=[], shown=[0])  # from the cache
        client.report_status()
    expected_scores = float(prediction.scores.reshape(2, -1)[:, 0].sum() + prediction.scores.reshape(2, -1)[0, 0])
    report = running.telemetry.latest("phone-1", MODEL)
    assert report is not None
    (outcome,) = report.outcomes
    assert (outcome.version, outcome.impressions, outcome.clicks) == (1, 3, 1)
    assert outcome.score_sum == pytest.approx(expected_scores)
    assert outcome.predictions == 2 and outcome.fallbacks == 0 and outcome.local_errors == 0
    assert outcome.latency.p99_s > 0 and outcome.active_since_unix_s > 0
    record = next(d for d in running.fleet.devices(MODEL) if d.device_id == "phone-1").version(1)
    assert record is not None and (record.impressions, record.clicks) == (1 * 3, 1)
    # Saved in the data folder: a new client (a restarted app) goes on from the same sums.
    saved = json.loads((tmp_path / MODEL / FILE_NAME).read_text())
    assert saved["versions"][0]["impressions"] == 3
    with EdgeClient(target, MODEL, tmp_path, device_id="phone-1", policy=RELAXED, insecure=True) as again:
        kept = again.outcomes.get(1)
        assert kept is not None and (kept.impressions, kept.clicks, kept.predictions) == (3, 1, 2)


def test_feedback_is_checked_and_only_counts_the_devices_own_model(tmp_path: Path) -> None:
    with EdgeClient(None, MODEL, tmp_path, device_id="phone-2", insecure=True) as client:
        local = Prediction(np.array([[0.2], [0.9]], dtype=np.float32), Source.LOCAL, 4, 0.001)
        for clicked, shown in (([2], None), ([0, 0], None), ([1], [0]), ([], [0, 0]), ([], [-1])):
            with pytest.raises(InvalidInputError):
                client.record_feedback(local, clicked=clicked, shown=shown)
        server = Prediction(np.array([0.5], dtype=np.float32), Source.SERVER, 4, 0.001)
        assert not client.record_feedback(server, clicked=[0])
        nan = Prediction(np.array([np.nan, 7.0], dtype=np.float32), Source.LOCAL, 4, 0.001)
        assert client.record_feedback(nan, clicked=[1])
        outcome = client.outcomes.get(4)
        assert outcome is not None and (outcome.impressions, outcome.clicks, outcome.score_sum) == (2, 1, 1.0)


def test_counts_are_credited_to_the_version_active_at_each_report(tmp_path: Path) -> None:
    ledger = OutcomeLedger(tmp_path, save_every_s=3600)
    ledger.credit(1, CounterSnapshot(10, 1, 2, 0.004))
    ledger.credit(2, CounterSnapshot(25, 1, 3, 0.002))  # 15 more predictions, on version 2
    ledger.credit(2, CounterSnapshot(5, 0, 0, 0.001))  # the client restarted: its counters began again
    one, two = ledger.get(1), ledger.get(2)
    assert one is not None and two is not None
    assert (one.predictions, one.local_errors, one.fallbacks, one.p99_s) == (10, 1, 2, 0.004)
    assert (two.predictions, two.local_errors, two.fallbacks, two.p99_s) == (20, 0, 1, 0.001)
    assert not (tmp_path / FILE_NAME).exists()  # not yet due
    ledger.save()
    assert OutcomeLedger(tmp_path).get(2) == two


def test_the_ledger_keeps_the_most_recently_updated_versions(tmp_path: Path) -> None:
    ledger = OutcomeLedger(tmp_path, max_versions=3)
    for version in range(1, 6):
        ledger.record(version, impressions=2, clicks=1, score_sum=0.5)
    assert sorted(o.version for o in ledger.outcomes()) == [3, 4, 5]
    with pytest.raises(ValueError):
        ledger.record(1, impressions=1, clicks=2, score_sum=0.5)
    with pytest.raises(ValueError):
        ledger.record(1, impressions=1, clicks=1, score_sum=float("nan"))


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"[]",
        json.dumps({"format": 1, "versions": [{"version": 1}]}).encode(),
        json.dumps({"format": 1, "versions": [{"version": 1, "impressions": 1, "clicks": 5}]}).encode(),
        b" " * (MAX_FILE_BYTES + 1),
    ],
)
def test_a_malformed_ledger_file_is_ignored(tmp_path: Path, data: bytes) -> None:
    (tmp_path / FILE_NAME).write_bytes(data)
    ledger = OutcomeLedger(tmp_path)
    assert ledger.outcomes() == []
    ledger.record(1, impressions=1, clicks=0, score_sum=0.1)
    ledger.save()
    assert OutcomeLedger(tmp_path).get(1) is not None  # replaced by a good one


@given(st.binary(max_size=300))
def test_any_file_bytes_load_or_are_ignored(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / FILE_NAME).write_bytes(data)
        for outcome in OutcomeLedger(Path(folder)).outcomes():
            assert outcome.clicks <= outcome.impressions
