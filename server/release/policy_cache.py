"""Release policies as the request path reads them: from the registry, kept for a refresh interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgerec.errors import ReleasePolicyError
from edgerec.registry import ModelRegistry
from edgerec.server.release.policy import ReleasePolicy, load_policy
from edgerec.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_unreadable = ThrottledLog(log)

__all__ = ["DEFAULT_POLICY_REFRESH_S", "PolicyCache"]

DEFAULT_POLICY_REFRESH_S = 2.0
MAX_CACHED_MODELS = 4096


class PolicyCache:
    """Each model's policy, read again once older than ``refresh_s`` (0: on every call). Thread-safe.

    An unreadable policy keeps the last good one this replica read; with none, ``get`` raises
    ReleasePolicyError (the device keeps what it runs and asks again: nothing is offered by guess).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        refresh_s: float = DEFAULT_POLICY_REFRESH_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, ReleasePolicy | None]] = {}
        self._reading: set[str] = set()  # models whose policy a thread is reading now

    def get(self, model: str) -> ReleasePolicy | None:
        """``model``'s policy (None: it has none and tracks its latest version)."""
        now = self._clock()
        with self._lock:
            hit = self._cached.get(model)
            # One thread reads a stale policy again; meanwhile the others keep the one they have.
            if hit is not None and (now - hit[0] < self.refresh_s or model in self._reading):
                return hit[1]
            self._reading.add(model)
        try:
            policy, _ = load_policy(self.registry, model)
        except ReleasePolicyError as exc:
            if hit is None:
                raise
            _unreadable.warning("keeping the last readable release policy of %s: %s", model[:80], exc)
            policy = hit[1]
        finally:
            with self._lock:
                self._reading.discard(model)
        with self._lock:
            if len(self._cached) >= MAX_CACHED_MODELS and model not in self._cached:
                self._cached.pop(next(iter(self._cached)))
            self._cached[model] = (now, policy)
        return policy

    def forget(self) -> None:
        """Drop what is cached: the next ``get`` of each model reads the registry."""
        with self._lock:
            self._cached.clear()
