"""A token bucket that paces a byte stream (or anything countable) to a rate."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Allows ``rate`` bytes per second on average, with bursts of up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate / 10, 16 * 1024))
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def try_consume(self, amount: float = 1.0) -> bool:
        """Take ``amount`` if the bucket holds it now, without waiting; False (nothing taken) if not."""
        with self._lock:
            self._refill()
            if self._tokens < amount:
                return False
            self._tokens -= amount
            return True

    def consume(self, amount: int) -> None:
        """Block until ``amount`` bytes may pass (larger than the burst is allowed, and paid for)."""
        with self._lock:
            self._refill()
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
