"""Whether a payload stream still deserves its slot: the minimum-progress rules, clock passed in.

A slot is a worker thread and one of the few streams the server runs at once, so a client that
opens a stream and then reads slowly, or not at all, must not keep it. The stream's thread reports
each chunk as it hands it to gRPC (:meth:`StreamProgress.sending`) and when gRPC has taken it
(:meth:`StreamProgress.sent`). In between the stream waits on its client: gRPC blocks while the
client's HTTP/2 receive window is full. Time elsewhere is the server's own (reading the file,
pacing at the device's or the server's rate) and never counts against the client.
:meth:`StreamProgress.check`, called now and then from another thread, names the rule a stream
broke, in this order:

1. idle: one chunk has waited ``idle_timeout_s`` on the client;
2. too slow: over ``window_s`` seconds of waiting on the client, it took fewer than ``min_rate``
   bytes per second of that time (the chunk in flight counts as taken);
3. too long: the stream has run longer than its remaining bytes need at ``min_rate``, plus
   ``grace_s``, not counting the time the server's own bandwidth caps paused it.

Ending a stream loses the device nothing: it resumes from the bytes it has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgerec.errors import ConfigError

# Half the slowest link the profiler models (2g, 64 kbit/s): such a device still gets its payloads.
DEFAULT_MIN_RATE = 4096.0
DEFAULT_WINDOW_S = 20.0
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class ProgressRules:
    """The least a payload stream must do to keep its slot; rates in bytes per second, times in seconds."""

    min_rate: float = DEFAULT_MIN_RATE
    window_s: float = DEFAULT_WINDOW_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    grace_s: float = DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        if not self.min_rate > 0:
            raise ConfigError(f"the minimum stream rate must be > 0 bytes/s, got {self.min_rate}")
        if not (self.window_s > 0 and self.idle_timeout_s > 0 and self.grace_s >= 0):
            raise ConfigError(
                f"need a rate window > 0, an idle timeout > 0 and a grace >= 0 seconds, got "
                f"{self.window_s}, {self.idle_timeout_s}, {self.grace_s}"
            )

    def chunk_limit(self) -> int:
        """The largest chunk that crosses a link at ``min_rate`` in a quarter of the idle timeout.

        gRPC reports a chunk taken only once all of it is, so a larger one would look idle.
        """
        return int(self.min_rate * self.idle_timeout_s / 4)

    def check_interval(self) -> float:
        """How often to check streams: often enough to end one soon after it breaks a rule."""
        return max(0.05, min(1.0, self.idle_timeout_s / 8, self.window_s / 8))


class StreamProgress:
    """How far one stream got and how long it waited on its client (thread-safe)."""

    def __init__(self, rules: ProgressRules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._budget_s = rules.grace_s  # until expect() says how many bytes remain
        self._remaining = 0
        self._capped_s = 0.0
        self._client_s = 0.0  # waiting on the client, chunks already taken
        self._sending_since: float | None = None
        self._in_flight = 0
        self._taken = 0
        self._window_client_s = 0.0
        self._window_taken = 0

    def expect(self, remaining_bytes: int) -> None:
        """The stream has ``remaining_bytes`` to send: it may run that long at ``min_rate``, plus the grace."""
        with self._lock:
            self._remaining = remaining_bytes
            self._budget_s = remaining_bytes / self.rules.min_rate + self.rules.grace_s

    def paused(self, seconds: float) -> None:
        """The server's own bandwidth caps held the stream for ``seconds``."""
        with self._lock:
            self._capped_s += seconds

    def sending(self, nbytes: int) -> None:
        """A chunk of ``nbytes`` goes to gRPC now."""
        with self._lock:
            self._sending_since = self._clock()
            self._in_flight = nbytes

    def sent(self) -> None:
        """gRPC took the chunk given to :meth:`sending`."""
        with self._lock:
            if self._sending_since is None:
                return
            self._client_s += self._clock() - self._sending_since
            self._taken += self._in_flight
            self._sending_since = None
            self._in_flight = 0

    @property
    def taken(self) -> int:
        """Bytes gRPC has taken so far."""
        with self._lock:
            return self._taken

    def check(self) -> str | None:
        """The rule the stream broke, as a sentence for the client, or None while it keeps its slot."""
        rules = self.rules
        with self._lock:
            now = self._clock()
            waiting = now - self._sending_since if self._sending_since is not None else 0.0
            if waiting >= rules.idle_timeout_s:
                return f"no progress for {waiting:.1f} s: the client did not read"
            client_s = self._client_s + waiting
            window = client_s - self._window_client_s
            if window >= rules.window_s:
                taken = self._taken + self._in_flight - self._window_taken
                if taken < rules.min_rate * window:
                    return (
                        f"the client read {taken} bytes in {window:.1f} s, "
                        f"below the minimum of {rules.min_rate:.0f} bytes/s"
                    )
                self._window_client_s = client_s
                self._window_taken = self._taken + self._in_flight
            ran = now - self._started - self._capped_s
            if ran > self._budget_s:
                return (
                    f"the stream ran {ran:.1f} s, longer than its {self._remaining} bytes need "
                    f"at {rules.min_rate:.0f} bytes/s plus {rules.grace_s:g} s"
                )
            return None
