"""Limits on payload streams: how many each device (and the server) may hold open, and how fast they flow."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from edgerec.ratelimit import TokenBucket

MIN_PACED_CHUNK_BYTES = 4096
# The slowest pace a device may ask for (FetchPayloadRequest.max_bytes_per_second): a lower rate is raised
# to it, so that a stream ends within payload size / 1 KiB/s seconds and cannot hold its slot forever.
MIN_DEVICE_RATE = 1024.0


class StreamLimitError(Exception):
    """Opening one more stream would break a limit (the server answers RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class StreamLimits:
    """None switches a limit off. Rates are in bytes per second."""

    max_streams_per_device: int | None = None
    max_streams: int | None = None
    per_device_rate: float | None = None
    global_rate: float | None = None

    def chunk_limit(self, max_chunk_bytes: int) -> int | None:
        """The chunk size that keeps each pause of a rate-capped stream near 1/8 s; None when uncapped."""
        rates = [r for r in (self.per_device_rate, self.global_rate) if r is not None]
        if not rates:
            return None
        return max(MIN_PACED_CHUNK_BYTES, min(max_chunk_bytes, int(min(rates) / 8)))


def device_rate(requested: int) -> float | None:
    """The pace, in bytes per second, for a stream whose device asked ``requested`` (0: no cap, None).

    The device's own bandwidth cap: the server sends no faster, so the device reads as fast as bytes
    arrive and nothing piles up unread in its receive window. At least :data:`MIN_DEVICE_RATE`.
    """
    if requested <= 0:
        return None
    return max(float(requested), MIN_DEVICE_RATE)


def paced_chunk_bytes(rate: float, max_chunk_bytes: int) -> int:
    """The chunk size that keeps each pause of a stream paced at ``rate`` near 1/8 s (at least 4 KiB)."""
    return max(min(MIN_PACED_CHUNK_BYTES, max_chunk_bytes), min(max_chunk_bytes, int(rate / 8)))


def stream_bucket(rate: float, chunk_bytes: int) -> TokenBucket:
    """A bucket pacing one stream at ``rate``: its burst is one chunk, so a stream never runs ahead by more."""
    return TokenBucket(rate, burst=chunk_bytes)


@dataclass
class _Device:
    streams: int
    bucket: TokenBucket | None
    last_used: float


class StreamSlot:
    """One open stream: paces its bytes; ``close`` (idempotent) gives its place back."""

    def __init__(self, limiter: StreamLimiter, device: str, bucket: TokenBucket | None) -> None:
        self.device = device
        self._limiter = limiter
        self._bucket = bucket
        self._closed = False
        self._lock = threading.Lock()

    def pace(self, nbytes: int) -> None:
        """Sleep until ``nbytes`` more may be sent under the device's and the global caps.

        Only this stream's thread sleeps: the buckets' locks are not held while waiting.
        """
        if self._bucket is not None:
            self._bucket.consume(nbytes)
        if self._limiter.global_bucket is not None:
            self._limiter.global_bucket.consume(nbytes)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._limiter.release(self.device)


class StreamLimiter:
    """Hands out stream slots within the limits; one per-device bucket, kept while it matters."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self.global_bucket = TokenBucket(limits.global_rate) if limits.global_rate else None
        self._devices: dict[str, _Device] = {}
        self._streams = 0
        self._prune_at = 1024
        self._lock = threading.Lock()

    def open(self, device: str) -> StreamSlot:
        """A slot for one more stream of ``device``; StreamLimitError when a limit is reached."""
        limits = self.limits
        with self._lock:
            if limits.max_streams is not None and self._streams >= limits.max_streams:
                raise StreamLimitError(
                    f"the server already streams {self._streams} payloads (limit {limits.max_streams})"
                )
            state = self._devices.get(device)
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
            self._streams += 1
            return StreamSlot(self, device, state.bucket)

    def release(self, device: str) -> None:
        with self._lock:
            state = self._devices[device]
            state.streams -= 1
            state.last_used = time.monotonic()
            self._streams -= 1

    def open_streams(self, device: str | None = None) -> int:
        """Streams open now, for one device or all."""
        with self._lock:
            if device is None:
                return self._streams
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
