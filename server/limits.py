"""Limits on payload streams: how many each device (and the server) may hold open, how fast they flow,
and how little progress ends one (see edgerec.server.progress)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgerec.errors import StreamLimitError
from edgerec.ratelimit import TokenBucket
from edgerec.server.progress import ProgressRules, StreamProgress
from edgerec.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_ended = ThrottledLog(log)

# Each message costs the server CPU whatever its size: at low rates a paced stream sends fewer, larger
# chunks (a pause of a second or two at the slowest links), still small enough that a cut loses little.
MIN_PACED_CHUNK_BYTES = 16 * 1024
MIN_CHUNK_BYTES = 1024
# The least a paced stream sends per pause (see paced_burst_chunks): each wake-up of a stream costs
# the server CPU whatever it sends, so a slow stream wakes once per 64 KiB.
MIN_PACED_BURST_BYTES = 64 * 1024
# A refused stream is told to come back after a random time in [RETRY_AFTER_S, 2 * RETRY_AFTER_S):
# spread out, the devices a full server turned away do not all return in the same instant.
RETRY_AFTER_S = 5.0


@dataclass(frozen=True)
class StreamLimits:
    """None switches a limit off. Rates are in bytes per second."""

    max_streams_per_device: int | None = None
    max_streams: int | None = None
    per_device_rate: float | None = None
    global_rate: float | None = None
    progress: ProgressRules = field(default_factory=ProgressRules)

    def chunk_limit(self, max_chunk_bytes: int) -> int:
        """The largest chunk a stream sends: one the progress rules can see cross the slowest allowed
        link in time, and under a rate cap one whose pause stays near 1/8 s (at least 16 KiB)."""
        limit = min(max_chunk_bytes, max(MIN_CHUNK_BYTES, self.progress.chunk_limit()))
        rates = [r for r in (self.per_device_rate, self.global_rate) if r is not None]
        if rates:
            limit = min(limit, max(MIN_PACED_CHUNK_BYTES, int(min(rates) / 8)))
        return limit


def device_rate(requested: int, min_rate: float) -> float | None:
    """The pace, in bytes per second, for a stream whose device asked ``requested`` (0: no cap, None).

    The device's own bandwidth cap: the server sends no faster, so the device reads as fast as bytes
    arrive and nothing piles up unread in its receive window. Never below ``min_rate``, the least a
    stream must move to keep its slot (see edgerec.server.progress).
    """
    if requested <= 0:
        return None
    return max(float(requested), min_rate)


def paced_chunk_bytes(rate: float, max_chunk_bytes: int) -> int:
    """The chunk size that keeps each pause of a stream paced at ``rate`` near 1/8 s (at least 16 KiB)."""
    return max(min(MIN_PACED_CHUNK_BYTES, max_chunk_bytes), min(max_chunk_bytes, int(rate / 8)))


def paced_burst_chunks(rate: float, chunk_bytes: int) -> int:
    """How many chunks a stream paced at ``rate`` sends back to back after each pause.

    Each wake-up of a paced stream costs the server CPU, so a slow stream, whose one chunk already
    pauses 1/8 s or more, sends MIN_PACED_BURST_BYTES per pause; the chunks stay small, so a cut loses
    at most the one in flight. A faster stream sends one chunk per pause: bursts there would only
    fill buffers with bytes a cut loses.
    """
    if rate / 8 > chunk_bytes:
        return 1
    return max(1, MIN_PACED_BURST_BYTES // max(1, chunk_bytes))


def stream_bucket(rate: float, burst_bytes: int) -> TokenBucket:
    """A bucket pacing one stream at ``rate``: its burst is one group of chunks, so a stream never runs
    ahead by more."""
    return TokenBucket(rate, burst=burst_bytes)


@dataclass
class _Device:
    streams: int
    bucket: TokenBucket | None
    last_used: float


class StreamSlot:
    """One open stream: paces its bytes, tracks its progress; ``close`` (idempotent) gives its place back."""

    def __init__(self, limiter: StreamLimiter, device: str, bucket: TokenBucket | None) -> None:
        self.device = device
        self.progress = StreamProgress(limiter.limits.progress)
        self.opened_at = time.monotonic()
        self._limiter = limiter
        self._bucket = bucket
        self._closed = False
        self._end_stream: Callable[[str], None] | None = None
        self._end_reason: str | None = None
        self._lock = threading.Lock()

    def pace(self, nbytes: int) -> None:
        """Sleep until ``nbytes`` more may be sent under the device's and the global caps.

        Only this stream's thread sleeps: the buckets' locks are not held while waiting.
        """
        started = time.monotonic()
        if self._bucket is not None:
            self._bucket.consume(nbytes)
        if self._limiter.global_bucket is not None:
            self._limiter.global_bucket.consume(nbytes)
        self.progress.paused(time.monotonic() - started)

    def on_end(self, end_stream: Callable[[str], None]) -> None:
        """How to end the stream when the server takes its slot back: ``end_stream(reason)``."""
        with self._lock:
            self._end_stream = end_stream
            reason = self._end_reason
        if reason is not None:  # taken back before the stream said how to end it
            end_stream(reason)

    def end(self, reason: str) -> None:
        """Take the slot back: end the stream (see :meth:`on_end`) for ``reason``, once, and close the slot."""
        with self._lock:
            if self._end_reason is not None:
                return
            self._end_reason = reason
            end_stream = self._end_stream
        _ended.info("ending the payload stream of %s after %d bytes: %s", self.device, self.progress.taken, reason)
        try:
            if end_stream is not None:
                end_stream(reason)
        finally:
            self.close()

    def close(self) -> None:
        if self._mark_closed():
            self._limiter.release(self)

    def _mark_closed(self) -> bool:
        """Mark the slot closed; False if it was already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            return True


class StreamLimiter:
    """Hands out stream slots within the limits; one per-device bucket, kept while it matters.

    A thread checks the open streams' progress while any is open and ends those that break a rule
    (edgerec.server.progress). When every slot is taken, a device with no stream open takes one from
    the device holding the most (if it holds two or more): its newest stream ends, and resumes later.
    """

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self.global_bucket = TokenBucket(limits.global_rate) if limits.global_rate else None
        self._devices: dict[str, _Device] = {}
        self._slots: set[StreamSlot] = set()
        self._prune_at = 1024
        self._lock = threading.Lock()
        self._watching = False

    def open(self, device: str) -> StreamSlot:
        """A slot for one more stream of ``device``; StreamLimitError when a limit is reached."""
        limits = self.limits
        taken: StreamSlot | None = None
        with self._lock:
            state = self._devices.get(device)
            if limits.max_streams is not None and len(self._slots) >= limits.max_streams:
                taken = self._fair_share() if state is None or state.streams == 0 else None
                if taken is None:
                    raise StreamLimitError(
                        f"the server already streams {len(self._slots)} payloads (limit {limits.max_streams})"
                    )
                self._forget(taken)
            if state is None:
                self._prune()
                bucket = TokenBucket(limits.per_device_rate) if limits.per_device_rate else None
                state = self._devices[device] = _Device(0, bucket, time.monotonic())
            if limits.max_streams_per_device is not None and state.streams >= limits.max_streams_per_device:
                raise StreamLimitError(
                    f"device {device} already has {state.streams} payload streams open "
                    f"(limit {limits.max_streams_per_device})"
                )
            state.streams += 1
            state.last_used = time.monotonic()
            slot = StreamSlot(self, device, state.bucket)
            self._slots.add(slot)
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="edgerec-stream-watch", daemon=True).start()
        if taken is not None:
            taken.end(f"the server is full and device {device} had no stream: {taken.device} keeps its others")
        return slot

    def release(self, slot: StreamSlot) -> None:
        """Give ``slot``'s place back (StreamSlot.close calls this once)."""
        with self._lock:
            self._forget(slot)

    def _forget(self, slot: StreamSlot) -> None:
        """Drop ``slot`` from the counts, once (caller holds the lock)."""
        if slot not in self._slots:
            return
        slot._mark_closed()
        self._slots.discard(slot)
        state = self._devices[slot.device]
        state.streams -= 1
        state.last_used = time.monotonic()

    def _fair_share(self) -> StreamSlot | None:
        """The newest stream of the device holding the most, if it holds two or more (caller holds the lock)."""
        by_device: dict[str, list[StreamSlot]] = {}
        for slot in self._slots:
            by_device.setdefault(slot.device, []).append(slot)
        busiest = max(by_device.values(), key=len, default=[])
        if len(busiest) < 2:
            return None
        return max(busiest, key=lambda slot: slot.opened_at)

    def _watch(self) -> None:
        """Check the open streams' progress until none is open; end those that break a rule."""
        interval = self.limits.progress.check_interval()
        while True:
            time.sleep(interval)
            with self._lock:
                slots = list(self._slots)
                if not slots:
                    self._watching = False
                    return
            for slot in slots:
                try:
                    reason = slot.progress.check()
                    if reason is not None:
                        slot.end(reason)
                except Exception:  # a bug must not stop the watch over the other streams
                    log.exception("cannot check or end the payload stream of %s", slot.device)

    def retry_after_s(self) -> float:
        """When a device refused a slot should ask again, in seconds (randomized to spread the retries)."""
        return RETRY_AFTER_S * (1.0 + random.random())

    def open_streams(self, device: str | None = None) -> int:
        """Streams open now, for one device or all."""
        with self._lock:
            if device is None:
                return len(self._slots)
            state = self._devices.get(device)
            return state.streams if state else 0

    def _prune(self) -> None:
        """Forget idle devices whose bucket has refilled: a fresh one is then the same (caller holds the lock)."""
        if len(self._devices) < self._prune_at:
            return
        now = time.monotonic()
        idle = [
            name
            for name, state in self._devices.items()
            if state.streams == 0 and (state.bucket is None or now - state.last_used > _refill_seconds(state.bucket))
        ]
        for name in idle:
            del self._devices[name]
        self._prune_at = max(1024, 2 * len(self._devices))


def _refill_seconds(bucket: TokenBucket) -> float:
    # After its last chunk (a debt of at most one paced chunk) a bucket is full again within this time.
    return (bucket.burst + max(bucket.rate / 8, MIN_PACED_CHUNK_BYTES)) / bucket.rate + 1.0
