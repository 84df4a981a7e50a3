"""Retries as a value: how many tries, how long to wait between them, and until when.

A loop that retries does not count, draw jitter or watch a deadline itself; it asks a
:class:`RetryPolicy` (the shape of urllib3's ``Retry``)::

    retry = config.retry.start(deadline_s)          # a fresh loop: no failure yet, the clock started
    while True:
        try:
            return attempt(timeout=retry.timeout(per_try_s))
        except SomeTransientError as exc:
            retry = retry.next(str(exc), "CheckUpdate ctr")   # raises TransportError when none is left
            retry.sleep()

Each ``next`` returns a new value; the policy a config holds never changes.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgerec.errors import TransportError


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed call again; configure the first four fields, the others are a loop's state.

    ``max_attempts`` tries in a row may fail (an attempt that made progress, such as a download
    that received bytes, starts the count again); between them the wait grows from
    ``backoff_initial_s`` by doubling up to ``backoff_max_s``, each drawn at random from
    ``[(1 - jitter) * wait, wait]`` so a fleet cut off at once does not come back at once. A loop
    started with a deadline gives up when the next wait would reach it.
    """

    max_attempts: int = 8
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    jitter: float = 0.5
    # The state of one loop (see start() and next()):
    failures: int = 0
    """Failed attempts in a row since the start or the last progress."""
    deadline_at: float | None = None
    """``clock()`` time by which the loop must be done; None: no deadline."""
    deadline_s: float | None = None
    """The deadline's length, for messages."""
    delay_s: float = 0.0
    """The wait before the next attempt, drawn by :meth:`next`."""
    clock: Callable[[], float] = dataclasses.field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {self.backoff_initial_s} and {self.backoff_max_s}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def start(self, deadline_s: float | None = None) -> RetryPolicy:
        """A fresh loop of this policy: no failure yet, done by ``deadline_s`` from now (None: no deadline)."""
        deadline_at = None if deadline_s is None else self.clock() + deadline_s
        return dataclasses.replace(self, failures=0, deadline_at=deadline_at, deadline_s=deadline_s, delay_s=0.0)

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (at least 0), or None without one."""
        if self.deadline_at is None:
            return None
        return max(self.deadline_at - self.clock(), 0.0)

    def timeout(self, limit_s: float) -> float:
        """``limit_s``, or less when the deadline is nearer (never below 1 ms: a call needs some timeout)."""
        remaining = self.remaining_s()
        return limit_s if remaining is None else max(min(limit_s, remaining), 0.001)

    def backoff(self, failures: int) -> float:
        """A wait drawn for the ``failures``-th failure in a row (0: after an attempt that made progress)."""
        wait = min(self.backoff_max_s, self.backoff_initial_s * 2.0**failures)
        return wait * random.uniform(1.0 - self.jitter, 1.0)

    def next(self, reason: str, what: str = "the call", *, progressed: bool = False) -> RetryPolicy:
        """The loop after one more failed attempt (``reason`` says why); TransportError when it must stop.

        ``progressed`` says the attempt got somewhere before it failed: the count of failures in a
        row starts again, and only the deadline can end the loop.
        """
        failures = 0 if progressed else self.failures + 1
        if failures >= self.max_attempts:
            times = "once" if failures == 1 else f"{failures} times in a row"
            raise TransportError(f"{what} failed {times}; last: {reason}")
        delay = self.backoff(failures)
        if self.deadline_at is not None and self.clock() + delay >= self.deadline_at:
            raise TransportError(f"{what} missed its {self.deadline_s or 0:.3g} s deadline; last: {reason}")
        return dataclasses.replace(self, failures=failures, delay_s=delay)

    def sleep(self) -> None:
        """Wait the delay :meth:`next` drew."""
        if self.delay_s > 0:
            time.sleep(self.delay_s)
