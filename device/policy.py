"""When a device answers from its local model and when it asks the server: settings, breakers, counters."""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections import deque
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
    first good answer wins, the other is cancelled); after ``local_deadline_s`` it counts as failed.
    After ``local_failure_threshold`` local failures in a row the local model is skipped (the
    server answers); ``local_cooldown_s`` later its golden cases (the manifest's health check) run
    on the worker pool, and it answers again once they pass. When that many in a row were model
    faults (runtime errors, non-finite scores; not missed deadlines, never a refused request) and a
    previous version is installed, the device rolls back to it and holds the faulty version back.
    The server's breaker instead lets one request through as its probe, after ``server_cooldown_s``.
    ``default_score``, when set, answers (``source="default"``) when neither the local model nor the
    server can. The three times are for one row; a batch gets ``per_row_s`` more on each for every
    further row, so a 20,000-row scoring call is not judged by a single recommendation's deadline.

    Defaults: ``deadline_s=0.05`` (a recommendation's latency budget), ``local_deadline_s=0.04``,
    ``hedge_after_s=0.01``. A small model's slowest runs on a busy machine stay well below the hedge
    delay, so the hedge fires only for a truly stalled local run; a server on loopback answers well
    within what is left, after a local error (the full deadline) or after a missed local deadline.
    The measurements behind them (``make bench-predict``) are in ``docs/performance.md``.

    The local model runs in the caller's thread (no hand-off to a worker: the cheapest path) while
    its breaker is closed, no earlier run is still busy on the pool, and the moving average of
    recent local latency (each call weighs ``inline_weight``) is below ``inline_fraction`` of the
    hedge delay (of ``local_deadline_s`` without hedging). An inline run cannot be interrupted, so
    once the model has been slow the calls go through the ``local_workers`` pool, where they are
    hedged, and cancelled when they lose. An average rather than a maximum: one run preempted
    for a few ms on a busy CPU does not send the next calls through the pool; a stalled model
    (one run above 4x the limit) does. ``inline_fraction=0`` always uses the pool.
    """

    deadline_s: float = 0.05
    local_deadline_s: float = 0.04
    hedge_after_s: float | None = 0.01
    local_failure_threshold: int = 3
    local_cooldown_s: float = 5.0
    server_failure_threshold: int = 3
    server_cooldown_s: float = 2.0
    default_score: float | None = None
    local_workers: int = 2
    server_workers: int = 4
    per_row_s: float = 20e-6
    inline_fraction: float = 0.25
    inline_weight: float = 0.25

    @property
    def inline_limit_s(self) -> float:
        """Slowest recent local call (seconds, one row) under which the local model runs inline."""
        budget = self.hedge_after_s if self.hedge_after_s is not None else self.local_deadline_s
        return self.inline_fraction * budget

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
        if not 0 <= self.inline_fraction <= 1 or not 0 < self.inline_weight <= 1:
            raise ValueError("need 0 <= inline_fraction <= 1 and 0 < inline_weight <= 1")


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

    @property
    def closed(self) -> bool:
        """True while closed (no lock: one attribute read, for the hot path)."""
        return self._opened_at is None

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time may."""
        opened_at = self._opened_at
        if opened_at is None:  # closed: the common case needs no lock
            return True
        if self._clock() - opened_at < self.cooldown_s:
            # Open: fail fast without the lock too (callers may be many while a server is down); a
            # concurrent change is decided under the lock by the calls that see it.
            return False
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        if self._opened_at is None and not self._failures and not self._probing:
            return  # already closed and clean: nothing to write
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


# PredictCounters adds up pending answers at least this often (bounds the memory they hold).
FOLD_EVERY = 1024


class PredictCounters:
    """Answers by source, fallbacks by reason, recent latencies and hedging outcomes, thread-safe."""

    def __init__(self, latency_window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._sources: dict[Source, int] = dict.fromkeys(Source, 0)
        self._reasons: dict[FallbackReason, int] = dict.fromkeys(FallbackReason, 0)
        self._latencies: deque[float] = deque(maxlen=latency_window)
        # Answers not added up yet: count() only appends here (atomic, no lock on the hot path); readers
        # and every FOLD_EVERY-th answer add them up under the lock.
        self._pending: deque[tuple[Source, FallbackReason | None, float]] = deque()
        self._server_failures = 0
        self._pooled = 0
        self._cancelled = 0
        self._errors = 0
        self._rejected = 0

    def count(self, source: Source, reason: FallbackReason | None, latency_s: float) -> None:
        """One answer (on the hot path: one append)."""
        pending = self._pending
        pending.append((source, reason, latency_s))
        if len(pending) >= FOLD_EVERY:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Add up the pending answers (lock held)."""
        pending, sources, reasons, latencies = self._pending, self._sources, self._reasons, self._latencies
        for _ in range(len(pending)):
            source, reason, latency_s = pending.popleft()
            sources[source] += 1
            if reason is not None:
                reasons[reason] += 1
            latencies.append(latency_s)

    def latency_percentiles(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float]:
        """Latency in seconds at each quantile over the recent window (empty when nothing was counted)."""
        with self._lock:
            self._fold()
            window = sorted(self._latencies)
        if not window:
            return {}
        return {q: window[min(len(window) - 1, int(q * len(window)))] for q in quantiles}

    def count_error(self, reason: FallbackReason) -> None:
        """A fallback that ended in a typed error (neither the server nor a default score answered)."""
        with self._lock:
            self._reasons[reason] += 1
            self._errors += 1

    def count_rejected(self) -> None:
        """A request refused as the caller's mistake (InvalidInputError): no fault of the model or the server."""
        with self._lock:
            self._rejected += 1

    def count_server_failure(self) -> None:
        with self._lock:
            self._server_failures += 1

    def count_pooled(self) -> None:
        """A local run handed to the worker pool (the model had been slow) instead of running inline."""
        with self._lock:
            self._pooled += 1

    def count_cancelled(self) -> None:
        """A local run that lost (to a hedged server answer or its deadline) and was cancelled."""
        with self._lock:
            self._cancelled += 1

    @property
    def by_source(self) -> dict[str, int]:
        """Answers by source; sources never seen are left out."""
        with self._lock:
            self._fold()
            return {source.value: n for source, n in self._sources.items() if n}

    @property
    def by_reason(self) -> dict[str, int]:
        """Fallbacks by reason; reasons never seen are left out."""
        with self._lock:
            self._fold()
            return {reason.value: n for reason, n in self._reasons.items() if n}

    @property
    def server_failures(self) -> int:
        with self._lock:
            return self._server_failures

    @property
    def latency_count(self) -> int:
        """Answers in the latency window."""
        with self._lock:
            self._fold()
            return len(self._latencies)

    @property
    def errors(self) -> int:
        with self._lock:
            return self._errors

    @property
    def rejected(self) -> int:
        with self._lock:
            return self._rejected

    @property
    def pooled(self) -> int:
        with self._lock:
            return self._pooled

    @property
    def cancelled(self) -> int:
        with self._lock:
            return self._cancelled
