"""The server's Prometheus endpoint, scraped over real HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_policy import ODD, RELAXED, SAFE, _model

from edgerec.device import EdgeClient
from edgerec.registry import Registry

if TYPE_CHECKING:
    from edgerec.server.app import RunningServer

pytest.importorskip("onnx")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("prometheus")
    registry = Registry(folder / "registry")
    publish(_model(folder / "safe.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "fragile.onnx", fragile=True), "fragile", registry, PublishOptions(no_gate=True))
    return registry


@pytest.fixture
def servers(registry: Registry) -> Iterator[list[RunningServer]]:
    """Two servers in one process, each with its own metrics registry and port."""
    from edgerec.server.app import ServerConfig, start_server

    started = [
        start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", metrics_port=0)) for _ in range(2)
    ]
    try:
        yield started
    finally:
        for server in started:
            server.stop(grace=0)


def test_metrics_count_transfers_predictions_batches_and_what_devices_report(
    servers: list[RunningServer], tmp_path: Path
) -> None:
    busy, idle = servers
    assert busy.metrics_port and idle.metrics_port and busy.metrics_port != idle.metrics_port
    target = f"127.0.0.1:{busy.port}"
    with EdgeClient(
        target, "safe", tmp_path / "a", device_id="a", cache_entries=0, policy=RELAXED, insecure=True
    ) as first:
        first.predict(SAFE)  # no local model yet: the server answers
        result = first.sync()
        first.sync()  # already current
        first.predict(SAFE)
        first.report_status()
    policy = dataclasses.replace(RELAXED, default_score=0.5)
    with EdgeClient(target, "fragile", tmp_path / "b", device_id="b", policy=policy, insecure=True) as second:
        second.sync()
        second.predict(ODD)  # fails locally and on the server: a default answer, reason local_error
        second.report_status()

    samples = scrape(busy.metrics_port)
    assert value(samples, "edgerec_update_checks_total", outcome="update") == 2
    assert value(samples, "edgerec_update_checks_total", outcome="current") == 1
    codecs = {labels[0][1] for name, labels in samples if name == "edgerec_payload_bytes_total"}
    assert codecs == {"full"}, codecs
    assert value(samples, "edgerec_payload_bytes_total", codec="full") >= result.payload_bytes > 0
    assert value(samples, "edgerec_payload_transfers_total", codec="full", outcome="complete") >= 2
    assert value(samples, "edgerec_predict_latency_seconds_count", model="safe", outcome="ok") == 1
    assert value(samples, "edgerec_predict_latency_seconds_count", model="fragile", outcome="ok") == 0
    assert (
        value(samples, "edgerec_predict_latency_seconds_count", model="fragile", outcome="InvalidInputError")
        + (value(samples, "edgerec_predict_latency_seconds_count", model="fragile", outcome="ModelRuntimeError"))
        == 1
    )
    assert value(samples, "edgerec_predict_batch_rows_count") >= 1
    assert value(samples, "edgerec_predict_batch_requests_sum") >= 1
    assert value(samples, "edgerec_devices", model="safe", version="1") == 1
    assert value(samples, "edgerec_devices", model="fragile", version="1") == 1
    assert value(samples, "edgerec_device_fallbacks", model="safe", reason="no_local_model") == 1
    assert value(samples, "edgerec_device_fallbacks", model="fragile", reason="local_error") == 1
    assert value(samples, "edgerec_device_predictions", model="fragile", source="default") == 1
    assert value(samples, "edgerec_device_syncs", model="safe", outcome="up_to_date") == 1
    assert value(samples, "edgerec_status_reports_total") == 2

    quiet = scrape(idle.metrics_port)  # the other server's registry saw none of it
    assert value(quiet, "edgerec_update_checks_total", outcome="update") == 0
    assert value(quiet, "edgerec_status_reports_total") == 0
    assert not any(name == "edgerec_devices" for name, _ in quiet)


def test_the_metrics_endpoint_goes_away_with_the_server(registry: Registry) -> None:
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", metrics_port=0))
    port = server.metrics_port
    assert port is not None and value(scrape(port), "edgerec_status_reports_total") == 0
    server.stop(grace=0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    plain = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0"))
    try:
        assert plain.metrics_port is None
    finally:
        plain.stop(grace=0)
