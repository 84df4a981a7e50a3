"""The device SDK's public seams: its config object, the observer, a payload transport of your own,
the retry policy as a value, and several servers for one device."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mitm import MitmProxy

from edgerec.device import (
    CacheConfig,
    EdgeClient,
    EdgeConfig,
    FallbackPolicy,
    FetchJob,
    Observer,
    PayloadTransport,
    Prediction,
    RetryPolicy,
    SyncEvent,
    SyncPhase,
    TransportConfig,
    TrustConfig,
)
from edgerec.device.storage import DEVICE_ID_FILE
from edgerec.device.transport import SourceUnavailableError
from edgerec.errors import ModelNotFoundError, TransportError
from edgerec.registry import Registry
from edgerec.tools import faults
from edgerec.v1 import update_pb2

MODEL = "ctr"
QUICK = TransportConfig(
    check_timeout_s=10, retry=RetryPolicy(max_attempts=3, backoff_initial_s=0.02, backoff_max_s=0.1)
)
# Deadlines for a loaded test machine: the server answers whatever the local model does.
RELAXED = FallbackPolicy(deadline_s=5.0, local_deadline_s=4.0, hedge_after_s=None)


# --- the config ---------------------------------------------------------------------------------


def test_a_config_has_documented_defaults(tmp_path: Path) -> None:
    config = EdgeConfig(model=MODEL, data_dir=tmp_path)
    assert config.servers == () and config.trust == TrustConfig() and config.trust.verifier(MODEL) is None
    assert config.transport == TransportConfig() and config.fallback == FallbackPolicy()
    assert config.cache == CacheConfig() and config.recipes == ("int8", "fp32") and config.threads == 1
    assert config.device_id == "" and config.max_payload_bytes == 0 and config.token is None


def test_every_config_field_is_documented() -> None:
    """Each field of EdgeConfig, CacheConfig and TransportConfig has a docstring right below it."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(EdgeConfig)))  # type: ignore[arg-type]
    tree.body += ast.parse(inspect.getsource(inspect.getmodule(TransportConfig))).body  # type: ignore[arg-type]
    for cls in (EdgeConfig, CacheConfig, TransportConfig):
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        body = node.body
        undocumented = [
            stmt.target.id
            for stmt, after in zip(body, [*body[1:], None], strict=True)
            if isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant))
        ]
        assert not undocumented, f"{cls.__name__}: {undocumented}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "../etc"}, "invalid model name"),
        ({"servers": ("host:1", "bad address")}, "server address"),
        ({"servers": ("",)}, "server address"),
        ({"recipes": ()}, "recipe"),
        ({"codecs": ("full", "gzip")}, "codecs"),
        ({"threads": 0}, "threads"),
        ({"max_payload_bytes": -1}, "max_payload_bytes"),
        ({"device_id": "two words"}, "device_id"),
        ({"device_id": "x" * 200}, "device_id"),
        ({"token": "has space.secret"}, "token"),
    ],
)
def test_a_config_refuses_wrong_values_when_made(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EdgeConfig(**{"model": MODEL, "data_dir": tmp_path, **changes})  # type: ignore[arg-type]


def test_the_parts_of_a_config_check_themselves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        TrustConfig((tmp_path / "server.pub",), insecure=True)
    with pytest.raises(ValueError, match="cache"):
        CacheConfig(entries=-1)
    with pytest.raises(ValueError, match="ttl"):
        CacheConfig(ttl_s=0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        TransportConfig(max_chunk_bytes=2 << 20)


def test_keywords_build_the_same_config_as_the_object(tmp_path: Path) -> None:
    policy = dataclasses.replace(RELAXED, default_score=0.5)
    built = EdgeConfig.build(
        ["a:1", "b:2"], MODEL, tmp_path, insecure=True, policy=policy, cache_entries=7, cache_rows=True, threads=2
    )
    assert built == EdgeConfig(
        model=MODEL,
        data_dir=tmp_path,
        servers=("a:1", "b:2"),
        trust=TrustConfig(insecure=True),
        fallback=policy,
        cache=CacheConfig(entries=7, rows=True),
        threads=2,
    )
    with EdgeClient(built) as from_config, EdgeClient(["a:1", "b:2"], MODEL, tmp_path, insecure=True) as from_words:
        assert from_config.config == built and from_config.verification == "off"
        assert from_words.config.servers == built.servers
    with pytest.raises(TypeError):
        EdgeClient(built, MODEL)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        EdgeClient(None, MODEL, tmp_path, rate="2mbit")  # the cap lives in TransportConfig(rate_bytes_per_s=...)


def test_every_device_gets_a_stable_id_kept_in_its_data_dir(tmp_path: Path) -> None:
    with EdgeClient(None, MODEL, tmp_path / "a") as first:
        made = first.device_id
    with EdgeClient(None, "other-model", tmp_path / "a") as again:
        assert again.device_id == made, "one id per device, whatever the model"
    assert (tmp_path / "a" / DEVICE_ID_FILE).read_text() == made
    assert stat.S_IMODE((tmp_path / "a" / DEVICE_ID_FILE).stat().st_mode) == 0o600
    with EdgeClient(None, MODEL, tmp_path / "b") as elsewhere:
        assert elsewhere.device_id != made
    with EdgeClient(None, MODEL, tmp_path / "a", device_id="kiosk-4") as named:
        assert named.device_id == "kiosk-4"
    with EdgeClient(None, MODEL, tmp_path / "a", token="tv-9.secret") as by_token:
        assert by_token.device_id == "tv-9"


def test_a_damaged_device_id_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DEVICE_ID_FILE).write_bytes(b"\x00not an id\n" * 40)
    with caplog.at_level(logging.WARNING, logger="edgerec"), EdgeClient(None, MODEL, tmp_path) as client:
        assert client.device_id.startswith("edgerec-") and "damaged" in caplog.text
    with EdgeClient(None, MODEL, tmp_path) as again:
        assert again.device_id == client.device_id


# --- retries as a value --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_retry_policy_is_a_value() -> None:
    clock = Clock()
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=1.0, backoff_max_s=3.0, jitter=0.5, clock=clock)
    loop = policy.start()
    once = loop.next("cut", "CheckUpdate")
    assert (loop.failures, once.failures) == (0, 1), "next() returns a new value; the old one is unchanged"
    assert 1.0 <= once.delay_s <= 2.0  # 1 s doubled once, drawn from [50 %, 100 %]
    twice_progressed = once.next("cut", progressed=True)
    assert twice_progressed.failures == 0 and 0.5 <= twice_progressed.delay_s <= 1.0
    with pytest.raises(TransportError, match="CheckUpdate failed 3 times in a row; last: refused"):
        once.next("refused", "CheckUpdate").next("refused", "CheckUpdate")
    assert policy.failures == 0 and policy.deadline_at is None


def test_a_retry_policy_stops_at_its_deadline() -> None:
    clock = Clock()
    loop = RetryPolicy(max_attempts=100, backoff_initial_s=1.0, backoff_max_s=1.0, jitter=0.0, clock=clock).start(5.0)
    assert loop.remaining_s() == 5.0 and loop.timeout(30.0) == 5.0
    clock.now += 3.5
    loop = loop.next("slow")  # waits 1 s: done before the deadline
    clock.now += 1.0
    with pytest.raises(TransportError, match="missed its 5 s deadline; last: slow"):
        loop.next("slow")
    assert loop.timeout(30.0) == 0.5


# --- the observer -------------------------------------------------------------------------------


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[SyncEvent] = []
        self.predictions: list[Prediction] = []

    def on_sync(self, event: SyncEvent) -> None:
        self.events.append(event)

    def on_predict(self, prediction: Prediction) -> None:
        self.predictions.append(prediction)

    def phases(self) -> list[SyncPhase]:
        """The phases in order, a payload's progress events folded into one."""
        folded: list[SyncPhase] = []
        for event in self.events:
            if not (event.phase is SyncPhase.PROGRESS and folded and folded[-1] is SyncPhase.PROGRESS):
                folded.append(event.phase)
        return folded


@pytest.mark.torch
def test_the_observer_hears_every_sync_phase_in_order_and_every_prediction(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    registry, address = served
    recorder = Recorder()
    with EdgeClient(address, MODEL, tmp_path, insecure=True, observer=recorder, policy=RELAXED) as client:
        client.sync(target_version=1)
        files = len(registry.files(MODEL, 1)) // 2  # the int8 artifact's files (fp32 has as many)
        per_file = [SyncPhase.DOWNLOAD, SyncPhase.PROGRESS, SyncPhase.DOWNLOADED, SyncPhase.APPLY]
        after = [SyncPhase.VERIFY, SyncPhase.HEALTH, SyncPhase.ACTIVATE, SyncPhase.SWITCH, SyncPhase.PRUNE]
        assert recorder.phases() == [
            SyncPhase.CHECK,
            SyncPhase.PLAN,
            *per_file * files,
            *after,
            SyncPhase.ACTIVATED,
            SyncPhase.DONE,
        ]
        plan = recorder.events[1]
        progress = [e for e in recorder.events if e.phase is SyncPhase.PROGRESS]
        assert plan.version == 1 and plan.total == sum(
            e.total for e in recorder.events if e.phase is SyncPhase.DOWNLOAD
        )
        assert all(e.source == "grpc" and 0 < e.done <= e.total for e in progress)
        assert recorder.events[-1].detail == "updated" and recorder.events[-1].version == 1

        recorder.events.clear()
        client.sync()
        assert recorder.phases()[:2] == [SyncPhase.CHECK, SyncPhase.PLAN] and recorder.phases()[-1] is SyncPhase.DONE
        recorder.events.clear()
        client.sync()
        assert recorder.phases() == [SyncPhase.CHECK, SyncPhase.DONE] and recorder.events[-1].detail == "current"

        first, second = client.predict(request_inputs), client.predict(request_inputs)
        assert recorder.predictions == [first, second]
        assert [(p.source, p.version) for p in recorder.predictions] == [("local", 2), ("cache", 2)]

    recorder.events.clear()
    with (
        EdgeClient(address, "no-such-model", tmp_path, insecure=True, observer=recorder) as missing,
        pytest.raises(ModelNotFoundError),
    ):
        missing.sync()
    assert recorder.phases() == [SyncPhase.CHECK, SyncPhase.FAILED]
    assert recorder.events[-1].detail.startswith("ModelNotFoundError")


class Broken(Observer):
    def on_sync(self, event: SyncEvent) -> None:
        raise RuntimeError("an observer bug")

    def on_predict(self, prediction: Prediction) -> None:
        raise RuntimeError("an observer bug")


@pytest.mark.torch
def test_an_observer_that_raises_changes_nothing(
    served: tuple[Registry, str],
    tmp_path: Path,
    request_inputs: dict[str, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, address = served
    with EdgeClient(address, MODEL, tmp_path, insecure=True, observer=Broken(), policy=RELAXED) as client:
        assert client.sync().version == 2
        assert client.predict(request_inputs).source == "local"
    assert "observer failed" in caplog.text


# --- a payload transport of your own ---------------------------------------------------------------


class FolderMirror(PayloadTransport):
    """Payloads from a folder (a USB stick, a LAN share): ``<folder>/<payload id>``."""

    name = "mirror"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.asked: list[str] = []

    def fetch(self, job: FetchJob) -> None:
        self.asked.append(job.payload.payload_id)
        path = self.folder / job.payload.payload_id
        if not path.is_file():
            raise SourceUnavailableError(f"{path.name} is not on the mirror")
        with path.open("rb") as f:
            f.seek(job.offset)
            while job.offset < job.size and (block := f.read(min(64 * 1024, job.size - job.offset))):
                job.write(block)


@pytest.fixture
def mitm(served: tuple[Registry, str]) -> Iterator[MitmProxy]:
    with MitmProxy(served[1]) as proxy:
        yield proxy


def _fetches(mitm: MitmProxy) -> list[update_pb2.FetchPayloadRequest]:
    return [r for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]


@pytest.mark.torch
def test_a_transport_of_your_own_brings_the_bytes(
    served: tuple[Registry, str], mitm: MitmProxy, tmp_path: Path
) -> None:
    registry, address = served
    plan = faults.planned_update(address, tmp_path / "probe")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    fetched = [p for p in plan.payloads if p.codec != "copy"]
    for payload in fetched[1:]:  # the mirror lacks the first payload: the server brings that one
        with registry.open_payload(MODEL, payload.payload_id) as f:
            (mirror / payload.payload_id).write_bytes(f.read())
    source = FolderMirror(mirror)
    with EdgeClient(mitm.address, MODEL, tmp_path / "device", insecure=True, payload_transports=[source]) as client:
        result = client.sync()
    assert source.asked == [p.payload_id for p in fetched]
    assert result.bytes_by_source == {
        "grpc": fetched[0].size,
        "mirror": sum(p.size for p in fetched[1:]),
    }
    assert [r.payload_id for r in _fetches(mitm)] == [fetched[0].payload_id]
    assert not faults.installed_problems(client.store, registry, result.version)


# --- several servers ---------------------------------------------------------------------------------


def _dead_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.torch
def test_a_device_fails_over_from_a_server_that_is_down(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    registry, address = served
    dead = _dead_address()
    with EdgeClient([dead, address], MODEL, tmp_path / "a", insecure=True, transport=QUICK) as client:
        result = client.sync()
        assert result.updated and result.bytes_by_source == {"grpc": result.payload_bytes}
        assert client.servers is not None and client.servers.preferred.target == address
        assert not faults.installed_problems(client.store, registry, result.version)
    with EdgeClient([dead, address], MODEL, tmp_path / "b", policy=RELAXED, transport=QUICK) as remote:
        answer = remote.predict(request_inputs)  # no local model: the second server answers the first call
        assert answer.source == "server" and remote.server_breaker.times_opened == 0
    with (
        EdgeClient([dead, _dead_address()], MODEL, tmp_path / "c", insecure=True, transport=QUICK) as stranded,
        pytest.raises(TransportError, match="failed 3 times in a row"),
    ):
        stranded.sync()


@pytest.mark.torch
def test_a_download_cut_by_a_dying_replica_goes_on_at_the_next_one(
    served: tuple[Registry, str], tmp_path: Path
) -> None:
    """Replica A sends the first chunk of each payload, then fails: replica B resumes from that byte."""
    registry, address = served

    def dies_after_the_first_chunk(
        request: update_pb2.FetchPayloadRequest, upstream: Iterator[update_pb2.PayloadChunk]
    ) -> Iterator[update_pb2.PayloadChunk]:
        if request.offset == 0:
            yield next(upstream)
        raise OSError("replica A went away")

    with MitmProxy(address) as replica_a, MitmProxy(address) as replica_b:
        replica_a.on_fetch = dies_after_the_first_chunk
        transport = dataclasses.replace(QUICK, max_chunk_bytes=16 * 1024)
        with EdgeClient(
            [replica_a.address, replica_b.address], MODEL, tmp_path, insecure=True, transport=transport
        ) as client:
            result = client.sync()
        first = {r.payload_id: r.offset for r in _fetches(replica_b)}
    fetched = [p for p in result.payloads if p["codec"] != "copy"]
    assert result.payload_bytes == sum(int(str(p["size"])) for p in fetched), "no byte lost or fetched twice"
    assert result.bytes_by_source == {"grpc": result.payload_bytes}
    # A got another try after its chunk (it had made progress), then B went on from that chunk's end.
    assert first and all(offset == 16 * 1024 for offset in first.values()), first
    assert not faults.installed_problems(client.store, registry, result.version)
