"""Payload bytes over HTTP: presigned links from a real SeaweedFS, hostile URL servers, fallback to gRPC.

A real server on loopback plans the update; a MitmProxy puts URLs into its plans (as a server with
an object-store registry does) and records every FetchPayload; the device downloads from the URLs
with HTTP Range resume and falls back to FetchPayload when they fail. Bytes are counted by source.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from httptools import PayloadHttpServer
from mitm import MitmProxy
from seaweed import SeaweedS3, seaweed_s3

from edgerec.device import EdgeClient, Observer, SyncEvent, SyncPhase, SyncResult
from edgerec.device.transport import HttpClient, PayloadFetcher, RetryPolicy, TransportConfig
from edgerec.registry import Registry
from edgerec.tools import faults
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch  # the registry is the reference model, published with torch

MODEL = "ctr"
FAST = TransportConfig(
    check_timeout_s=10,
    idle_timeout_s=2.0,
    http_connect_timeout_s=5.0,
    retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.02, backoff_max_s=0.1),
)
BUCKET = "edgerec-device-http"


class Recorder(Observer):
    """Every sync event, in order (events come on the sync's thread)."""

    def __init__(self) -> None:
        self.events: list[SyncEvent] = []

    def on_sync(self, event: SyncEvent) -> None:
        self.events.append(event)

    def failures(self) -> list[SyncEvent]:
        return [e for e in self.events if e.phase is SyncPhase.SOURCE_FAILED]


def _payload_bytes(registry: Registry, payload_id: str) -> bytes:
    with registry.open_payload(MODEL, payload_id) as f:
        return f.read()


def _fetches(mitm: MitmProxy) -> list[update_pb2.FetchPayloadRequest]:
    return [r for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]


def _checks(mitm: MitmProxy) -> list[update_pb2.CheckUpdateRequest]:
    return [r for r in mitm.requests if isinstance(r, update_pb2.CheckUpdateRequest)]


def _with_urls(make_urls: Callable[[update_pb2.Payload], list[str]]) -> Callable[..., update_pb2.CheckUpdateResponse]:
    """A CheckUpdate hook giving every downloaded payload of the plan ``make_urls(payload)``."""

    def hook(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        for payload in response.payloads:
            if payload.codec != "copy":
                payload.urls[:] = make_urls(payload)
        return response

    return hook


def _sync(
    mitm: MitmProxy, data_dir: Path, recorder: Recorder | None = None, transport: TransportConfig = FAST
) -> SyncResult:
    with EdgeClient(mitm.address, MODEL, data_dir, insecure=True, transport=transport, observer=recorder) as client:
        return client.sync()


def _planned(result: SyncResult) -> int:
    return sum(int(str(p["size"])) for p in result.payloads)


def _assert_installed(registry: Registry, data_dir: Path, version: int) -> None:
    from edgerec.device.storage import ModelStore

    assert not faults.installed_problems(ModelStore(data_dir, MODEL), registry, version)


# --- fixtures: the plain server, SeaweedFS with the registry's payloads ----------------------------


@pytest.fixture
def mitm(served: tuple[Registry, str]) -> Iterator[MitmProxy]:
    with MitmProxy(served[1]) as proxy:
        yield proxy


class Bucket:
    """The registry's payloads mirrored into a real S3 bucket, with presigned links to them."""

    def __init__(self, seaweed: SeaweedS3, registry: Registry, work: Path) -> None:
        from edgerec.registry.s3 import S3Registry

        self.registry = registry
        self.work = work
        self.s3 = S3Registry(BUCKET, f"t-{uuid.uuid4().hex[:8]}", client=seaweed.client(), cache_dir=work / "cache")
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    def url(self, payload: update_pb2.Payload, expires_s: int = 300) -> str:
        with self._lock:
            if payload.payload_id not in self._uploaded:
                record = self.registry.payload(MODEL, payload.payload_id)
                staged = self.work / f"staged-{uuid.uuid4().hex}"
                staged.write_bytes(_payload_bytes(self.registry, payload.payload_id))
                self.s3.add_payload(record, staged)
                self._uploaded.add(payload.payload_id)
        url = self.s3.payload_url(MODEL, payload.payload_id, expires_s)
        assert url is not None
        return url


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    pytest.importorskip("boto3")
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def bucket(seaweed: SeaweedS3, served: tuple[Registry, str], tmp_path: Path) -> Bucket:
    return Bucket(seaweed, served[0], tmp_path)


# --- presigned links from SeaweedFS -------------------------------------------------------------


def test_a_presigned_link_installs_the_payloads_over_http(
    served: tuple[Registry, str], mitm: MitmProxy, bucket: Bucket, tmp_path: Path
) -> None:
    registry, _ = served
    mitm.on_check = _with_urls(lambda payload: [bucket.url(payload)])
    recorder = Recorder()
    result = _sync(mitm, tmp_path / "device", recorder)
    planned = _planned(result)
    assert result.updated and result.bytes_by_source == {"http": planned}
    assert result.payload_bytes == planned
    assert not _fetches(mitm), "no byte came over gRPC"
    _assert_installed(registry, tmp_path / "device", result.version)
    sources = {e.source for e in recorder.events if e.phase is SyncPhase.PROGRESS}
    assert sources == {"http"} and not recorder.failures()


def test_an_expired_link_makes_the_device_ask_again(
    served: tuple[Registry, str], mitm: MitmProxy, bucket: Bucket, tmp_path: Path
) -> None:
    """The first plan's links live one second (SeaweedFS checks expiry by its own clock); the second plan's do not."""
    registry, _ = served
    answers = 0

    def hook(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        nonlocal answers
        answers += 1
        first = answers == 1
        answered = _with_urls(lambda payload: [bucket.url(payload, expires_s=1 if first else 300)])(request, response)
        if first:  # the device gets them only once SeaweedFS refuses them
            links = [url for p in answered.payloads for url in p.urls]
            deadline = time.monotonic() + 30
            while any(urllib3.request("GET", url).status != 403 for url in links):
                assert time.monotonic() < deadline, "the short links never expired"
                time.sleep(0.25)
        return answered

    mitm.on_check = hook
    recorder = Recorder()
    result = _sync(mitm, tmp_path / "device", recorder)
    assert len(_checks(mitm)) == 2, "one more CheckUpdate for fresh links, once per sync"
    assert result.bytes_by_source == {"http": _planned(result)} and not _fetches(mitm)
    assert any("UrlExpiredError" in e.detail for e in recorder.failures())
    assert [e.phase for e in recorder.events].count(SyncPhase.CHECK) == 2
    _assert_installed(registry, tmp_path / "device", result.version)


def test_a_bucket_outage_falls_back_to_grpc(served: tuple[Registry, str], mitm: MitmProxy, tmp_path: Path) -> None:
    """SeaweedFS stopped after making the links: every URL is refused, FetchPayload brings every byte."""
    pytest.importorskip("boto3")
    registry, _ = served
    with seaweed_s3(tmp_path / "gone-seaweed") as gone:
        gone.make_bucket(BUCKET)
        outage = Bucket(gone, registry, tmp_path)
        plan = faults.planned_update(served[1], tmp_path / "probe")
        links = {p.payload_id: outage.url(p) for p in plan.payloads if p.codec != "copy"}
    mitm.on_check = _with_urls(lambda payload: [links[payload.payload_id]])
    recorder = Recorder()
    result = _sync(mitm, tmp_path / "device", recorder)
    planned = _planned(result)
    assert result.bytes_by_source == {"grpc": planned}
    assert {e.source for e in recorder.failures()} == {"http"} and len(recorder.failures()) == len(links)
    _assert_installed(registry, tmp_path / "device", result.version)


# --- hostile URL servers --------------------------------------------------------------------------


@pytest.fixture
def hostile(served: tuple[Registry, str], mitm: MitmProxy, tmp_path: Path) -> Iterator[PayloadHttpServer]:
    """A URL server with the registry's payloads for a fresh device's plan, its links in every plan."""
    registry, address = served
    plan = faults.planned_update(address, tmp_path / "probe")
    payloads = {p.payload_id: _payload_bytes(registry, p.payload_id) for p in plan.payloads if p.codec != "copy"}
    with PayloadHttpServer(payloads) as server:
        mitm.on_check = _with_urls(lambda payload: [server.url(payload.payload_id)])
        yield server


def test_wrong_bytes_at_a_link_are_refused_and_fetched_again_over_grpc(
    served: tuple[Registry, str], mitm: MitmProxy, hostile: PayloadHttpServer, tmp_path: Path
) -> None:
    registry, _ = served
    hostile.behaviour = "wrong-bytes"
    recorder = Recorder()
    result = _sync(mitm, tmp_path / "device", recorder)
    planned = sum(len(data) for data in hostile.payloads.values())
    assert result.bytes_by_source == {"http": planned, "grpc": planned}
    assert all(r.offset == 0 for r in _fetches(mitm)), "the wrong bytes were not resumed from"
    failed = recorder.failures()
    assert len(failed) == len(hostile.payloads) and all(
        e.source == "http" and "IntegrityError" in e.detail for e in failed
    )
    _assert_installed(registry, tmp_path / "device", result.version)


def test_a_bucket_gone_mid_payload_is_resumed_over_grpc(
    served: tuple[Registry, str], mitm: MitmProxy, hostile: PayloadHttpServer, tmp_path: Path
) -> None:
    """The URL server dies within the largest payload: gRPC goes on from that byte, none lost or fetched twice."""
    registry, _ = served
    largest, data = max(hostile.payloads.items(), key=lambda item: len(item[1]))
    cut = len(data) // 3
    hostile.behaviour, hostile.die_after = "die-after", cut
    mitm.on_check = _with_urls(lambda payload: [hostile.url(largest)] if payload.payload_id == largest else [])
    recorder = Recorder()
    result = _sync(mitm, tmp_path / "device", recorder)
    planned = sum(len(data) for data in hostile.payloads.values())
    assert hostile.died.is_set() and result.bytes_by_source["http"] == cut
    assert result.bytes_by_source["http"] + result.bytes_by_source["grpc"] == planned == result.payload_bytes
    resumed = [r.offset for r in _fetches(mitm) if r.payload_id == largest]
    assert resumed == [cut], "gRPC resumed where HTTP stopped"
    _assert_installed(registry, tmp_path / "device", result.version)


def test_a_silent_link_is_cut_by_the_idle_timeout_and_resumed(
    served: tuple[Registry, str], mitm: MitmProxy, hostile: PayloadHttpServer, tmp_path: Path
) -> None:
    """Each answer sends a third of what is left, then goes silent without closing: every try is progress."""
    registry, _ = served
    largest, data = max(hostile.payloads.items(), key=lambda item: len(item[1]))
    hostile.behaviour, hostile.die_after = "stall-after", len(data) // 3
    mitm.on_check = _with_urls(lambda payload: [hostile.url(largest)] if payload.payload_id == largest else [])
    result = _sync(mitm, tmp_path / "device", transport=dataclasses.replace(FAST, idle_timeout_s=0.5))
    planned = sum(len(data) for data in hostile.payloads.values())
    assert result.bytes_by_source["http"] == len(data) and result.payload_bytes == planned
    third, last = len(data) // 3, len(data) - 1
    assert [r for _, r in hostile.requests][:2] == [f"bytes=0-{last}", f"bytes={third}-{last}"]
    _assert_installed(registry, tmp_path / "device", result.version)


@pytest.mark.parametrize("behaviour", ["redirect", "not-found", "expired"])
def test_a_link_that_fails_leaves_grpc_to_bring_the_bytes(
    served: tuple[Registry, str], mitm: MitmProxy, hostile: PayloadHttpServer, tmp_path: Path, behaviour: str
) -> None:
    """A redirect is not followed (a link may not send the device elsewhere); other failures fall back too."""
    registry, _ = served
    hostile.behaviour = behaviour
    result = _sync(mitm, tmp_path / "device")
    planned = sum(len(data) for data in hostile.payloads.values())
    assert result.bytes_by_source == {"grpc": planned}
    expected_checks = 2 if behaviour == "expired" else 1  # an expired link is asked for again, once
    assert len(_checks(mitm)) == expected_checks
    _assert_installed(registry, tmp_path / "device", result.version)


def test_an_answer_that_ignores_the_range_starts_over_from_byte_zero(
    served: tuple[Registry, str], mitm: MitmProxy, hostile: PayloadHttpServer, tmp_path: Path
) -> None:
    """A server answering 200 with the whole payload to a ranged request: the .part restarts at 0, safely."""
    hostile.behaviour = "ignore-range"
    payload_id, data = max(hostile.payloads.items(), key=lambda item: len(item[1]))
    part = tmp_path / "downloads" / f"{payload_id}.part"
    part.parent.mkdir()
    part.write_bytes(data[:12_345])  # a download cut earlier, to be resumed
    payload = update_pb2.Payload(path="f", codec="full", payload_id=payload_id, sha256=payload_id, size=len(data))
    payload.urls.append(hostile.url(payload_id))
    fetcher = PayloadFetcher(FAST, servers=lambda: [], http=HttpClient(FAST))
    download = fetcher.download(MODEL, payload, part)
    assert download.path.read_bytes() == data
    assert download.bytes_by_source == {"http": len(data)}
    assert hostile.requests == [(payload_id, f"bytes=12345-{len(data) - 1}")]


# --- what the device logs ----------------------------------------------------------------------


def test_logs_never_show_a_links_signature(
    served: tuple[Registry, str],
    mitm: MitmProxy,
    hostile: PayloadHttpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile.behaviour = "wrong-bytes"
    with caplog.at_level("INFO", logger="edgerec"):
        _sync(mitm, tmp_path / "device")
    assert "secret-" not in caplog.text and "X-Signature" not in caplog.text
    assert f"127.0.0.1:{hostile.port}/" in caplog.text
