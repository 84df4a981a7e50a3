"""A logger for messages callers can trigger at will: one line each while rare, a trickle under a flood.

A malformed or refused request deserves a log line, but a client sending thousands of them must
not fill the disk or drown the rest of the log. :class:`ThrottledLog` passes a burst of messages,
then a few per second, and the next message that passes says how many were dropped meanwhile.
It never logs a traceback: what a caller sent wrong is not a fault of the server.
"""

from __future__ import annotations

import logging
import threading

from edgerec.ratelimit import TokenBucket

DEFAULT_PER_SECOND = 1.0
DEFAULT_BURST = 20


class ThrottledLog:
    """``logger``, limited to ``burst`` messages at once and ``per_second`` on average."""

    def __init__(
        self, logger: logging.Logger, *, per_second: float = DEFAULT_PER_SECOND, burst: int = DEFAULT_BURST
    ) -> None:
        self.logger = logger
        self._bucket = TokenBucket(per_second, burst=burst)
        self._dropped = 0
        self._lock = threading.Lock()

    def log(self, level: int, message: str, *args: object) -> None:
        """Log ``message % args`` at ``level`` unless over the rate; say how many went unlogged before it."""
        if not self.logger.isEnabledFor(level):
            return
        with self._lock:
            if not self._bucket.try_consume(1):
                self._dropped += 1
                return
            dropped, self._dropped = self._dropped, 0
        if dropped:
            self.logger.log(level, message + " (%d similar messages suppressed before this one)", *args, dropped)
        else:
            self.logger.log(level, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)
