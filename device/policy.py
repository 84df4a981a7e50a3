"""When a device answers from its local model and when it asks the server: settings, breakers, counters."""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass


class Source(enum.StrEnum):
    """Where an answer came from."""

    CACHE = "cache"
    LOCAL = "local"
    SERVER = "server"
    DEFAULT = "default"


class FallbackReason(enum.StrEnum):
    """Why the local model did not answer."""

    NO_LOCAL_MODEL = "no_local_model"
    LOAD_FAILED = "load_failed"
    LOCAL_ERROR = "local_error"
    NON_FINITE = "non_finite"
    LOCAL_DEADLINE = "local_deadline"
    HEDGED = "hedged"  # local was slow; the hedged server call answered first
    LOCAL_BREAKER_OPEN = "local_breaker_open"


@dataclass(frozen=True)
class FallbackPolicy:
    """Every knob of the predict path, with its default.

    ``deadline_s`` bounds a whole predict: an answer or a typed error comes back within it.
    Local inference that has not answered after ``hedge_after_s`` also starts the server call (the
    first good answer wins); after ``local_deadline_s`` it counts as failed. ``default_score``, when
    set, answers (``source="default"``) when neither the local model nor the server can.
    The three times are for one row; a batch gets ``per_row_s`` more on each for every further row,
    so a 20,000-row scoring call is not judged by a single recommendation's deadline.
    """

    # Issue 6 aims at 50 ms; until tools/bench_predict.py measures it on loaded 2-core devices, the
    # defaults leave room for a cold gRPC channel and a server that loads the model on first use.
    deadline_s: float = 0.25
    local_deadline_s: float = 0.15
    hedge_after_s: float | None = 0.05
    local_failure_threshold: int = 3
    local_cooldown_s: float = 5.0
    server_failure_threshold: int = 3
    server_cooldown_s: float = 2.0
    default_score: float | None = None
    local_workers: int = 2
    server_workers: int = 4
    per_row_s: float = 20e-6

    def for_rows(self, rows: int) -> FallbackPolicy:
        """This policy with its times stretched for a batch of ``rows``."""
        extra = self.per_row_s * max(rows - 1, 0)
        if extra == 0:
            return self
        return dataclasses.replace(
            self,
            deadline_s=self.deadline_s + extra,
            local_deadline_s=self.local_deadline_s + extra,
            hedge_after_s=None if self.hedge_after_s is None else self.hedge_after_s + extra,
        )

    def __post_init__(self) -> None:
        if not 0 < self.local_deadline_s <= self.deadline_s:
            raise ValueError("need 0 < local_deadline_s <= deadline_s")
        if self.hedge_after_s is not None and not 0 <= self.hedge_after_s <= self.local_deadline_s:
            raise ValueError("hedge_after_s must be in [0, local_deadline_s] or None")
        if min(self.local_failure_threshold, self.server_failure_threshold, self.local_workers) < 1:
            raise ValueError("failure thresholds and local_workers must be >= 1")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` failures in a row; after ``cooldown_s`` lets one probe through.

    A successful probe closes it; a failed probe opens it for another cooldown.
    """

    def __init__(self, name: str, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time may."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or (self._opened_at is None and self._failures >= self.threshold):
                self.times_opened += 1
                self._opened_at = self._clock()
            self._probing = False

    def reset(self) -> None:
        self.record_success()


class PredictCounters:
    """Answers by source, fallbacks by reason and recent latencies, thread-safe."""

    def __init__(self, latency_window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._sources: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._server_failures = 0

    def count(self, source: Source, reason: FallbackReason | None, latency_s: float) -> None:
        with self._lock:
            self._sources[source.value] += 1
            if reason is not None:
                self._reasons[reason.value] += 1
            self._latencies.append(latency_s)

    def latency_percentiles(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float]:
        """Latency in seconds at each quantile over the recent window (empty when nothing was counted)."""
        with self._lock:
            window = sorted(self._latencies)
        if not window:
            return {}
        return {q: window[min(len(window) - 1, int(q * len(window)))] for q in quantiles}

    def count_server_failure(self) -> None:
        with self._lock:
            self._server_failures += 1

    @property
    def by_source(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sources)

    @property
    def by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._reasons)

    @property
    def server_failures(self) -> int:
        with self._lock:
            return self._server_failures
