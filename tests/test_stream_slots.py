"""Payload streams keep their slot only while they progress: real server on loopback, hostile raw clients.

The server here has two slots and small progress limits. Hostile clients ask for the slowest pace,
shrink their HTTP/2 receive window to 1 KiB and then read slowly or not at all, so gRPC blocks the
server's writes. Nothing waits on a duration: each test waits on an event (a status, a finished
download) with a deadline far above what it needs on a loaded machine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from servertools import registry_server

from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.errors import StreamLimitError
from edgerec.hashing import sha256_file
from edgerec.registry import Registry
from edgerec.server.app import ServerConfig, start_server
from edgerec.server.limits import RETRY_AFTER_S, StreamLimiter, StreamLimits
from edgerec.server.progress import ProgressRules, StreamProgress
from edgerec.server.security import RETRY_AFTER_KEY
from edgerec.v1 import update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch

MODEL = "ctr"
MIN_RATE = 64 * 1024  # bytes/s a stream must move to keep its slot on these servers
# A client whose receive window is 1 KiB: gRPC blocks the server's writes as soon as it stops reading.
TINY_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
# The honest device: retries on refusals for as long as the deadline allows.
PATIENT = TransportConfig(
    check_timeout_s=10, retry=RetryPolicy(max_attempts=100, backoff_initial_s=0.05, backoff_max_s=0.5)
)


# --- the rules, on a clock the test turns ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RULES = ProgressRules(min_rate=1000, window_s=10, idle_timeout_s=30, grace_s=5)


def test_a_client_that_stops_reading_is_idle_after_the_timeout() -> None:
    clock = Clock()
    progress = StreamProgress(ProgressRules(min_rate=1000, window_s=100, idle_timeout_s=30, grace_s=1000), clock)
    progress.sending(1000)
    clock.now += 29
    assert progress.check() is None
    clock.now += 1
    assert "no progress for 30.0 s" in (progress.check() or "")


def test_a_client_reading_below_the_minimum_rate_is_too_slow_within_a_window() -> None:
    clock = Clock()
    progress = StreamProgress(RULES, clock)
    progress.expect(1_000_000)
    for _ in range(4):  # 500 bytes/s of waiting on the client: half the minimum, for 8 s of a 10 s window
        progress.sending(1000)
        clock.now += 2
        progress.sent()
        assert progress.check() is None
    progress.sending(1000)
    clock.now += 2  # the window is over: 5000 bytes (the one in flight counted) where 10000 were due
    assert progress.check() == "the client read 5000 bytes in 10.0 s, below the minimum of 1000 bytes/s"


def test_time_the_server_spends_pacing_never_counts_against_the_client() -> None:
    clock = Clock()
    progress = StreamProgress(RULES, clock)
    progress.expect(100_000)
    for _ in range(100):  # the server paces 1000 bytes a second; the client takes each chunk at once
        clock.now += 1
        progress.paused(0.5)  # half of it under the server's own caps
        progress.sending(1000)
        progress.sent()
        assert progress.check() is None


def test_a_stream_may_not_outlast_its_bytes_at_the_minimum_rate_plus_grace() -> None:
    clock = Clock()
    progress = StreamProgress(RULES, clock)
    progress.expect(10_000)  # 10 s at 1000 bytes/s, plus 5 s of grace
    clock.now += 15
    assert progress.check() is None
    clock.now += 0.5
    progress.paused(1)  # paused by the server's caps: not the stream's time
    assert progress.check() is None
    clock.now += 1
    assert "longer than its 10000 bytes need" in (progress.check() or "")


def test_a_device_without_a_stream_takes_one_from_the_busiest_when_the_server_is_full() -> None:
    limiter = StreamLimiter(StreamLimits(max_streams_per_device=3, max_streams=3))
    hog = [limiter.open("hog") for _ in range(3)]
    ended: list[str] = []
    for slot in hog:
        slot.on_end(ended.append)
    newcomer = limiter.open("newcomer")  # the hog's newest stream ends
    assert len(ended) == 1 and "device newcomer had no stream" in ended[0]
    assert limiter.open_streams("hog") == 2 and limiter.open_streams() == 3
    hog[2].close()  # the ended stream's own close changes nothing
    assert limiter.open_streams() == 3
    with pytest.raises(StreamLimitError, match="the server"):
        limiter.open("newcomer")  # it holds one: it claims no more
    other = limiter.open("other")
    with pytest.raises(StreamLimitError, match="the server"):
        limiter.open("late")  # every device holds one: nobody has a stream to spare
    for slot in (*hog, newcomer, other):
        slot.close()
    assert limiter.open_streams() == 0


# --- against a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def payload(published_registry: Registry) -> update_pb2.Payload:
    """The largest payload a fresh device may fetch (about 180 kB)."""
    with registry_server(published_registry) as address, grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        plans = [
            stub.CheckUpdate(
                update_pb2.CheckUpdateRequest(model=MODEL, recipes=[recipe], codecs=["full"], runtimes=["onnxruntime"]),
                timeout=30,
            )
            for recipe in ("int8", "fp32")
        ]
    found: update_pb2.Payload = max((p for plan in plans for p in plan.payloads), key=lambda p: p.size)
    assert found.size >= 150_000, "these tests need a payload that does not fit in gRPC's buffers"
    return found


class HostileStream:
    """A FetchPayload at the slowest pace, on a channel of its own with a 1 KiB receive window."""

    def __init__(self, address: str, payload: update_pb2.Payload, device_id: str = "") -> None:
        self.channel = grpc.insecure_channel(address, options=TINY_WINDOW)
        stub = update_pb2_grpc.ModelUpdateStub(self.channel)  # type: ignore[no-untyped-call]
        request = update_pb2.FetchPayloadRequest(
            model=MODEL,
            payload_id=payload.payload_id,
            max_chunk_bytes=4096,
            max_bytes_per_second=1,
            device_id=device_id,
        )
        self.stream: Iterator[update_pb2.PayloadChunk] = stub.FetchPayload(request, timeout=120)
        self.error: grpc.RpcError | None = None
        self.received = 0

    def first_chunk(self) -> None:
        """Read one chunk: the server now holds a slot for this stream."""
        self.received += len(next(self.stream).data)

    def crawl(self, pause_s: float) -> None:
        """Read one chunk every ``pause_s`` until the stream ends; keep its error."""
        try:
            for chunk in self.stream:
                self.received += len(chunk.data)
                time.sleep(pause_s)
        except grpc.RpcError as exc:
            self.error = exc

    def close(self) -> None:
        self.channel.close()


def _status(stream: HostileStream) -> tuple[grpc.StatusCode, str]:
    assert stream.error is not None, f"the stream ran to its end ({stream.received} bytes)"
    return stream.error.code(), stream.error.details() or ""


def _wait_for(thread: threading.Thread, timeout: float = 60.0) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"


@contextlib.contextmanager
def serving(registry: Registry, **settings: Any) -> Iterator[tuple[str, StreamLimiter]]:
    """The real server with two slots and ``settings``; its address and the limiter that hands out its slots."""
    server = start_server(
        ServerConfig(
            registry=registry.root, listen="127.0.0.1:0", max_streams=2, max_streams_per_device=None, **settings
        )
    )
    assert server.payload_streams is not None
    try:
        yield f"127.0.0.1:{server.port}", server.payload_streams
    finally:
        server.stop(grace=0)


def _wait_until_no_stream_is_open(streams: StreamLimiter, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while streams.open_streams():
        assert time.monotonic() < deadline, f"{streams.open_streams()} slots still taken after {deadline_s} s"
        time.sleep(0.05)


def test_streams_below_the_minimum_rate_lose_their_slots_and_an_honest_download_then_succeeds(
    published_registry: Registry, payload: update_pb2.Payload, tmp_path: Path
) -> None:
    """Two hostile streams hold both slots, one reading 8 KiB/s and one nothing; both are ended."""
    limits = {"min_stream_rate": MIN_RATE, "stream_rate_window_s": 1.0, "stream_idle_timeout_s": 60.0}
    with serving(published_registry, **limits) as (address, streams):
        crawler, staller = HostileStream(address, payload), HostileStream(address, payload)
        try:
            crawler.first_chunk()
            staller.first_chunk()  # both slots are taken; the staller reads nothing more
            crawling = threading.Thread(target=crawler.crawl, args=(0.5,))
            crawling.start()
            honest = ServerConnection(address, PATIENT)
            try:
                finished = honest.download(MODEL, payload, tmp_path / "honest.part")
            finally:
                honest.close()
            assert sha256_file(finished) == payload.sha256
            _wait_for(crawling)
            _wait_until_no_stream_is_open(streams)  # the staller's stream has ended too
            staller.crawl(0)  # its status (gRPC drops what it buffered)
            for stream in (crawler, staller):
                code, details = _status(stream)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "payload stream ended" in details and f"below the minimum of {MIN_RATE} bytes/s" in details
                assert stream.received < payload.size
        finally:
            crawler.close()
            staller.close()


def test_a_client_that_stops_reading_is_ended_after_the_idle_timeout_and_vanished_ones_free_their_slots(
    published_registry: Registry, payload: update_pb2.Payload
) -> None:
    limits = {"min_stream_rate": MIN_RATE, "stream_rate_window_s": 600.0, "stream_idle_timeout_s": 1.0}
    with serving(published_registry, **limits) as (address, streams):
        staller, vanishing = HostileStream(address, payload), HostileStream(address, payload)
        try:
            staller.first_chunk()
            vanishing.first_chunk()
            vanishing.close()  # gone without a word: its slot must come back too
            _wait_until_no_stream_is_open(streams)  # the staller reads nothing meanwhile
            staller.crawl(0)  # its status (gRPC drops what it buffered)
            code, details = _status(staller)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "no progress for" in details and "the client did not read" in details
        finally:
            staller.close()


def test_without_tokens_devices_behind_one_address_have_their_own_limits_and_refusals_say_when_to_retry(
    published_registry: Registry, payload: update_pb2.Payload
) -> None:
    """Carrier NAT: devices a and b share 127.0.0.1; each may hold one stream, and a refusal names a retry time."""
    server = start_server(
        ServerConfig(registry=published_registry.root, listen="127.0.0.1:0", max_streams=3, max_streams_per_device=1)
    )
    address = f"127.0.0.1:{server.port}"
    streams: list[HostileStream] = []
    try:
        # One at a time: a stream asks for its slot when it opens, so opening them together races.
        for device in ("a", "b"):  # b, behind the same address, gets a slot of its own
            streams.append(HostileStream(address, payload, device))
            streams[-1].first_chunk()
        streams.append(HostileStream(address, payload, "a"))
        with pytest.raises(grpc.RpcError) as refused:
            streams[-1].first_chunk()  # a second stream of device a is over its limit
        error: Any = refused.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hints = [value for key, value in error.trailing_metadata() or () if key == RETRY_AFTER_KEY]
        assert len(hints) == 1 and RETRY_AFTER_S <= float(hints[0]) <= 2 * RETRY_AFTER_S, hints
    finally:
        for stream in streams:
            stream.close()
        server.stop(grace=0)
