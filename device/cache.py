"""An LRU cache of predictions with a TTL and a byte bound, keyed by model version and the exact request."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# (model version, what fixes the request's layout, its bytes or their digest). The layout is every input's
# (name, dtype, shape) for :func:`request_key`, the batch size for :func:`signature_key`: the two never collide.
CacheKey = tuple[int, Hashable, bytes]

# Requests up to this many bytes are keyed by their bytes (cheaper than a digest, and exact); larger ones by a
# 16-byte BLAKE2b digest. So a key holds at most about this much request data.
INLINE_KEY_BYTES = 512


def request_key(version: int, inputs: Mapping[str, np.ndarray]) -> CacheKey:
    """Version plus every input's name, dtype and shape (canonical order) and its C-order bytes or their digest."""
    names = sorted(inputs) if len(inputs) > 1 else list(inputs)
    arrays = [np.asarray(inputs[name]) for name in names]
    header = tuple((name, array.dtype.str, array.shape) for name, array in zip(names, arrays, strict=True))
    return version, header, _content(arrays)


def signature_key(version: int, rows: int, checked: Mapping[str, np.ndarray]) -> CacheKey:
    """The key of arrays already checked against ``version``'s signature, in its order.

    Their dtypes and every dimension but the batch are the signature's, so the batch size and the bytes
    are all that can differ: a cheaper key than :func:`request_key` (the cache-hit path's largest cost).
    Only for signatures whose sole free dimension is the batch.
    """
    return version, rows, _content(checked.values())


def row_keys(version: int, checked: Mapping[str, np.ndarray], batched: Sequence[bool], rows: int) -> list[CacheKey]:
    """One key per row of a checked batch: row ``i``'s key is :func:`signature_key` of that row alone.

    ``batched`` tells, in signature order, which inputs have the batch dimension (the others are part of
    every row). So a row cached from one batch answers the same row in another batch, or alone.
    """
    parts = [
        np.ascontiguousarray(array).reshape(rows, -1).view(np.uint8)
        if has_rows
        else np.broadcast_to(np.ascontiguousarray(array).reshape(1, -1).view(np.uint8), (rows, array.nbytes))
        for array, has_rows in zip(checked.values(), batched, strict=True)
    ]
    table = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    width = table.shape[1]
    if 0 < width <= INLINE_KEY_BYTES:
        blobs: list[bytes] = np.ascontiguousarray(table).view(f"V{width}").ravel().tolist()
    else:
        blobs = [_content([row]) for row in table]
    return [(version, 1, blob) for blob in blobs]


def _content(arrays: Iterable[np.ndarray]) -> bytes:
    """The arrays' C-order bytes joined, or a 16-byte BLAKE2b digest of them above ``INLINE_KEY_BYTES``."""
    # C order whatever the strides; map() of the unbound method runs no Python frame per array (hot path)
    blob = b"".join(map(np.ndarray.tobytes, arrays))
    if len(blob) <= INLINE_KEY_BYTES:
        return blob
    return hashlib.blake2b(blob, digest_size=16).digest()


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was made."""

    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int
    expirations: int
    refused_non_finite: int


# (read-only scores, expiry time on the cache's clock, bytes of the scores): a tuple, the cheapest to make.
_Entry = tuple[np.ndarray, float, int]


class PredictionCache:
    """Thread-safe LRU of read-only score arrays.

    Bounded by ``max_entries`` and ``max_bytes`` (of score data; each key adds at most
    ``INLINE_KEY_BYTES`` of request data); entries older than ``ttl_s`` are
    misses. A key includes the model version, and :meth:`observe_version` drops every entry when the
    active version changes, so an answer of one version never serves another. Non-finite scores are
    never stored.
    """

    def __init__(
        self,
        max_entries: int = 1024,
        *,
        ttl_s: float | None = 300.0,
        max_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._bytes = 0
        self._version: int | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        self.refused_non_finite = 0

    def get(self, key: CacheKey) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry[1] <= self._clock():
                self._drop(key)
                self.expirations += 1
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        """:meth:`get` of each key, under one lock."""
        now = self._clock()
        found: list[np.ndarray | None] = []
        entries = self._entries
        hits = 0
        with self._lock:
            for key in keys:
                entry = entries.get(key)
                if entry is not None and entry[1] <= now:
                    self._drop(key)
                    self.expirations += 1
                    entry = None
                if entry is None:
                    found.append(None)
                else:
                    entries.move_to_end(key)
                    found.append(entry[0])
                    hits += 1
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def put(self, key: CacheKey, scores: np.ndarray) -> bool:
        """Store a copy of ``scores``; False when refused (non-finite, too big, or caching is off)."""
        if self.max_entries <= 0:
            return False
        if not np.all(np.isfinite(scores)):
            with self._lock:
                self.refused_non_finite += 1
            return False
        frozen = np.array(scores, copy=True)
        frozen.flags.writeable = False
        if frozen.nbytes > self.max_bytes:
            return False
        expires_at = self._expiry()
        with self._lock:
            if self._version is not None and key[0] != self._version:
                return False  # a late answer of a version that is no longer active
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (frozen, expires_at, frozen.nbytes)
            self._bytes += frozen.nbytes
            self._evict()
        return True

    def put_rows(self, keys: Sequence[CacheKey], scores: np.ndarray) -> int:
        """Store row ``i`` of ``scores`` (split evenly across the keys) under ``keys[i]``; returns rows stored.

        The keys are of one version, as :func:`row_keys` makes them.

        Rows with non-finite scores are refused; so is everything when the scores do not split evenly.
        """
        if self.max_entries <= 0 or not keys or scores.size % len(keys):
            return 0
        frozen = np.array(scores, copy=True).reshape(len(keys), -1)
        frozen.flags.writeable = False
        finite = np.isfinite(frozen).all(axis=1).tolist()
        size = frozen.itemsize * frozen.shape[1]
        if size > self.max_bytes:
            return 0
        expires_at = self._expiry()
        entries = self._entries
        stored = 0
        with self._lock:
            self.refused_non_finite += finite.count(False)
            if self._version is not None and keys[0][0] != self._version:
                return 0  # a late answer of a version that is no longer active (every key has the same version)
            for key, row, ok in zip(keys, frozen, finite, strict=True):
                if ok:
                    old = entries.pop(key, None)
                    if old is not None:
                        self._bytes -= old[2]
                    entries[key] = (row, expires_at, size)
                    stored += 1
            self._bytes += stored * size
            self._evict()
        return stored

    def _expiry(self) -> float:
        return self._clock() + self.ttl_s if self.ttl_s is not None else float("inf")

    def _evict(self) -> None:
        """Drop the least recently used entries beyond the bounds (lock held)."""
        entries = self._entries
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(entries)))
            self.evictions += 1

    def observe_version(self, version: int) -> None:
        """Tell the cache which version is active; a change drops every entry."""
        if version == self._version:
            return
        with self._lock:
            if version == self._version:
                return
            self._version = version
            self._entries.clear()
            self._bytes = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._version = None

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self.hits,
                self.misses,
                len(self._entries),
                self._bytes,
                self.evictions,
                self.expirations,
                self.refused_non_finite,
            )

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: CacheKey) -> None:
        self._bytes -= self._entries.pop(key)[2]
