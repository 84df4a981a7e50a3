"""A small LRU cache of predictions, keyed by model version and the exact request tensors."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np


def request_key(version: int, inputs: Mapping[str, np.ndarray]) -> tuple[int, bytes]:
    """Version plus a digest of every input's name, dtype, shape and bytes (canonical order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return version, digest.digest()


class PredictionCache:
    """Thread-safe LRU of score arrays; a key includes the model version, so versions never mix."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, bytes]) -> np.ndarray | None:
        with self._lock:
            scores = self._entries.get(key)
            if scores is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return scores

    def put(self, key: tuple[int, bytes], scores: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        frozen = scores.copy()
        frozen.flags.writeable = False
        with self._lock:
            self._entries[key] = frozen
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
