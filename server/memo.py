"""A small thread-safe memo whose entries expire: answers many devices ask for alike are worked out once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMemo(Generic[K, V]):
    """Values kept ``keep_s`` seconds after they were made, at most ``max_entries`` (least recently used go)."""

    def __init__(self, keep_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if keep_s < 0 or max_entries < 1:
            raise ValueError(f"need keep_s >= 0 and max_entries >= 1, got {keep_s} and {max_entries}")
        self.keep_s = keep_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The kept value of ``key`` if still fresh, else ``make()`` (kept from now on). Two callers missing
        at once may both make it: the memo saves work, it does not promise one maker."""
        now = self._clock()
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None and now < kept[0]:
                self._entries.move_to_end(key)
                return kept[1]
        value = make()
        with self._lock:
            self._entries[key] = (now + self.keep_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value
