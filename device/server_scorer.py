"""ServerScorer: the server's Predict as a fallback, through its circuit breaker, within the caller's deadline.

The predictor asks it when the local model cannot answer (none installed, a fault, a missed
deadline, its breaker open) or is slow (a hedged call). Each call goes to the preferred server
of the pool (failing over to the next when one is unreachable), gets what is left of the
deadline minus a margin, and passes the breaker: after ``server_failure_threshold`` failures in a
row it fails fast until ``server_cooldown_s`` lets one probe through. The server's answers are
cached under the version that produced them (the cache refuses non-finite scores).
"""

from __future__ import annotations

import time

import numpy as np

from edgerec.device.cache import PredictionCache, request_key
from edgerec.device.local_model import Prediction
from edgerec.device.policy import CircuitBreaker, FallbackPolicy, PredictCounters, Source
from edgerec.device.transport.grpc import ServerPool
from edgerec.errors import AuthenticationError, EdgerecError, InvalidInputError, NoModelAvailableError, TransportError

# Share of the deadline kept back from a server call's gRPC timeout (5 ms of the default 50 ms).
DEADLINE_MARGIN = 0.1


class ServerScorer:
    """Predict on the server for one model."""

    def __init__(
        self,
        model: str,
        servers: ServerPool,
        *,
        policy: FallbackPolicy,
        cache: PredictionCache,
        counters: PredictCounters,
    ) -> None:
        self.model = model
        self.servers = servers
        self.policy = policy
        self.cache = cache
        self.counters = counters
        self.breaker = CircuitBreaker("server", policy.server_failure_threshold, policy.server_cooldown_s)
        self.last_version = 0
        """The version of the server's last answer (what a device with no model of its own asks for next)."""

    def answer(
        self, arrays: dict[str, np.ndarray], wanted: int, reason: str, started: float, deadline: float
    ) -> Prediction:
        """An earlier server answer from the cache, else :meth:`ask`; NoModelAvailableError when neither can."""
        key = request_key(wanted or self.last_version, arrays)
        cached = self.cache.get(key) if key[0] else None
        if cached is not None:
            return Prediction(cached, Source.CACHE, key[0], time.perf_counter() - started, reason)
        return self.ask(arrays, wanted, deadline)

    def ask(self, arrays: dict[str, np.ndarray], wanted: int, deadline: float) -> Prediction:
        """One Predict for version ``wanted`` (0: the server's choice), done by ``deadline`` (perf_counter).

        An unreachable server hands the call to the next one while time is left; the breaker
        counts the call once, by how it ended.
        """
        started = time.perf_counter()
        if not self._time_left(deadline):
            raise NoModelAvailableError("no time left to ask the server")
        if not self.breaker.allow():  # after the time check: a half-open probe must go out once allowed
            raise NoModelAvailableError("the server's circuit breaker is open")
        servers = self.servers.in_order()
        for index, connection in enumerate(servers):
            remaining = self._time_left(deadline)
            try:
                if remaining <= 0:
                    raise TransportError("no time left for another server")
                response = connection.predict(self.model, arrays, version=wanted, timeout_s=remaining)
            except (InvalidInputError, AuthenticationError):
                self.breaker.record_success()  # the server is up; the request is wrong
                raise
            except EdgerecError as exc:
                unreachable = isinstance(exc, TransportError)
                if unreachable:
                    self.servers.failed(connection)
                if unreachable and index + 1 < len(servers) and self._time_left(deadline) > 0:
                    continue
                self.breaker.record_failure()
                self.counters.count_server_failure()
                raise NoModelAvailableError(f"server failed: {exc}") from exc
            self.servers.answered(connection)
            break
        # The server's answer is returned as is (the caller sees any NaN); the cache refuses non-finite scores.
        scores = np.asarray(response.scores, dtype=np.float32)
        self.breaker.record_success()
        self.last_version = response.version
        self.cache.put(request_key(response.version, arrays), scores)
        return Prediction(scores, Source.SERVER, response.version, time.perf_counter() - started)

    def _time_left(self, deadline: float) -> float:
        """Seconds a call may take now: to the deadline, less the margin."""
        # gRPC's deadline fires a little late on a busy CPU, and raising the error takes time too: keep a
        # margin so the caller has its typed error within the deadline.
        return deadline - time.perf_counter() - DEADLINE_MARGIN * self.policy.deadline_s
