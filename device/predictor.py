"""Predictor: local-first prediction with a cache, circuit breakers, a worker pool, hedging and fallback.

``predict`` answers, in this order: the prediction cache (keyed by version and request bytes);
the local model, in the caller's thread while it has been fast, else on a worker pool where a
slow run is hedged with the server and cancelled when it loses; the server
(:class:`~edgerec.device.server_scorer.ServerScorer`) when the local model is missing, faulty,
late or its breaker is open; the policy's default score when nothing else can. Every knob is in
:class:`~edgerec.device.policy.FallbackPolicy`. Model faults count toward the active model's
rollback (:class:`~edgerec.device.active_model.ActiveModel`); a request the model refuses is the
caller's :class:`InvalidInputError` and counts against nothing.

This is the hot path: a cache hit costs a few microseconds, so each step reads attributes
directly rather than calling through layers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerec.device.active_model import NO_LOCAL_MODEL, ActiveModel
from edgerec.device.cache import CacheKey, PredictionCache
from edgerec.device.health import check_golden
from edgerec.device.local_model import LocalModel, Prediction
from edgerec.device.observer import Observer, overrides_predict
from edgerec.device.policy import CircuitBreaker, FallbackPolicy, FallbackReason, PredictCounters, Source
from edgerec.device.server_scorer import ServerScorer
from edgerec.errors import EdgerecError, InvalidInputError, NoModelAvailableError
from edgerec.runtimes import NonFiniteScoresError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LocalCall:
    """A local run on the worker pool: its future and the RunOptions that can terminate it."""

    future: Future[np.ndarray]
    options: Any


class Predictor:
    """Answers predictions for one model: cache, local model, server, default score."""

    def __init__(
        self,
        active: ActiveModel,
        scorer: ServerScorer | None,
        *,
        policy: FallbackPolicy,
        cache: PredictionCache,
        counters: PredictCounters,
        cache_rows: bool = False,
        observer: Observer | None = None,
    ) -> None:
        self.active = active
        self.scorer = scorer
        self.policy = policy
        self.cache = cache
        self.counters = counters
        self.local_breaker = CircuitBreaker("local", policy.local_failure_threshold, policy.local_cooldown_s)
        # onnxruntime calls cannot be cancelled: they run here so a slow one never blocks past the deadline.
        self.local_pool = futures.ThreadPoolExecutor(policy.local_workers, thread_name_prefix="edgerec-local")
        self._server_pool = futures.ThreadPoolExecutor(policy.server_workers, thread_name_prefix="edgerec-hedge")
        self._tracked: LocalModel | None = None
        self._caching = cache.max_entries > 0
        # Cache each row of a batch, so a batch (or a single request) repeating some rows runs the model on
        # the others only. Off by default: keying, looking up and storing a row costs more than the small
        # reference model spends on it (docs/performance.md), so it pays only for costlier models.
        self.cache_rows = cache_rows
        # Moving average of recent local latency: below the policy's inline limit the model runs inline.
        self._recent_s = 0.0
        self._inline_limit_s = policy.inline_limit_s
        self._inline_weight = policy.inline_weight
        self._pooled_inflight = 0  # local runs on the pool not finished yet (a stuck one keeps us off inline)
        self._inflight_lock = threading.Lock()
        self._observer = observer
        if overrides_predict(observer):
            # Only a listening observer costs a call per prediction: the plain path stays as it is.
            self.predict = self._observed_predict  # type: ignore[method-assign]

    def close(self) -> None:
        self.local_pool.shutdown(wait=False, cancel_futures=True)
        self._server_pool.shutdown(wait=False, cancel_futures=True)

    def _observed_predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        prediction = Predictor.predict(self, inputs)
        observer = self._observer
        assert observer is not None
        try:
            observer.on_predict(prediction)
        except Exception:
            log.exception("observer failed on a prediction")
        return prediction

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Scores from the cache, the local model, or (when that is unusable or slow) the server.

        Answers or raises a typed error within ``policy.deadline_s`` (see :class:`FallbackPolicy`).
        :class:`InvalidInputError` when the request is wrong: inputs that do not match the model's
        signature, or values the model refuses (an id outside an embedding table). Such a request
        goes to neither the server nor the breakers, and never counts toward a rollback.
        """
        try:
            started = time.perf_counter()
            active = self.active
            local = active.loaded
            if local is None or started >= active.recheck_at:
                loads = active.loads
                local, load_failure = active.current()
                if active.loads != loads:  # loading a new version (once per version) is not part of a prediction
                    started = time.perf_counter()
                if local is None:
                    detail = load_failure or NO_LOCAL_MODEL
                    code = FallbackReason.NO_LOCAL_MODEL if detail == NO_LOCAL_MODEL else FallbackReason.LOAD_FAILED
                    arrays = {name: np.asarray(a) for name, a in inputs.items()}
                    rows = min((a.shape[0] for a in arrays.values() if a.ndim), default=1)
                    policy = self.policy.for_rows(rows)
                    return self._fallback(arrays, None, code, detail, started, started + policy.deadline_s, policy)
            arrays, rows = local.check(inputs)
            if local is not self._tracked:
                self._track(local)
            key: CacheKey | None = None
            if self._caching:
                if rows > 1 and self.cache_rows:
                    keys = local.row_keys(arrays, rows)
                    if keys is not None:
                        return self._predict_rows(arrays, rows, local, keys, started)
                key = local.cache_key(arrays, rows)
                cached = self.cache.get(key)
                if cached is not None:
                    return self._answer(cached, Source.CACHE, local.version, started)
            return self._run(arrays, rows, local, key, started)
        except InvalidInputError:
            self.counters.count_rejected()  # the caller's mistake: counts against neither the model nor the server
            raise

    def _run(
        self, arrays: dict[str, np.ndarray], rows: int, local: LocalModel, key: CacheKey | None, started: float
    ) -> Prediction:
        """Checked inputs the cache did not answer: the local model, else the server (see :meth:`predict`)."""
        version = local.version
        breaker = self.local_breaker
        if breaker.closed and self._recent_s < self._inline_limit_s and not self._pooled_inflight:
            # The common case: the model has been fast, so it runs here (no thread hand-off).
            try:
                scores = local.score(arrays)
            except InvalidInputError:
                raise  # the request's fault, not the model's
            except EdgerecError as exc:
                self._note_local_time(time.perf_counter() - started, rows)
                return self._local_failed(exc, arrays, local, started, self.policy.for_rows(rows))
            latency = time.perf_counter() - started
            if rows == 1:  # _note_local_time, inlined
                self._recent_s += (latency - self._recent_s) * self._inline_weight
            else:
                self._note_local_time(latency, rows)
            breaker.record_success()
            self.active.faults_in_a_row = 0
            if key is not None:
                self.cache.put(key, scores)
            self.counters.count(Source.LOCAL, None, latency)
            return Prediction(scores, Source.LOCAL, version, latency)
        policy = self.policy.for_rows(rows)
        deadline = started + policy.deadline_s
        if not breaker.closed:
            if breaker.allow():  # half-open: the version's golden cases decide, not this request
                self._probe_local(local)
            detail = "local model's circuit breaker is open"
            return self._fallback(arrays, local, FallbackReason.LOCAL_BREAKER_OPEN, detail, started, deadline, policy)
        return self._race(arrays, local, key, rows, started, deadline, policy)

    def _probe_local(self, local: LocalModel) -> None:
        """Run ``local``'s golden cases on the worker pool: they close its breaker, or open it for another cooldown."""

        def probe() -> None:
            try:
                check_golden(local.loaded.runner, local.installed.manifest, local.loaded.recipe)
            except Exception as exc:  # whatever breaks the health check keeps the model out
                log.warning("%s version %d failed its health check: %s", self.active.model, local.version, exc)
                passed = False
            else:
                log.info(
                    "%s version %d passed its health check: the local model answers again",
                    self.active.model,
                    local.version,
                )
                passed = True
            if local is self._tracked:  # a newer version started with a breaker of its own
                if passed:
                    self.local_breaker.record_success()
                else:
                    self.local_breaker.record_failure()

        try:
            self.local_pool.submit(probe)
        except RuntimeError:  # the client is closing
            self.local_breaker.record_failure()

    def _predict_rows(
        self, arrays: dict[str, np.ndarray], rows: int, local: LocalModel, keys: list[CacheKey], started: float
    ) -> Prediction:
        """A batch with row caching: the cache answers the rows it has, :meth:`_run` the others."""
        hits = {i: hit for i, hit in enumerate(self.cache.get_many(keys)) if hit is not None}
        missing = [i for i in range(rows) if i not in hits]
        if not missing:
            answer = self._answer(np.concatenate(list(hits.values())), Source.CACHE, local.version, started)
            answer.cached_rows = rows
            return answer
        whole = len(missing) == rows
        answer = self._run(arrays if whole else local.take_rows(arrays, missing), len(missing), local, None, started)
        if answer.version != local.version or answer.source is Source.DEFAULT:
            # Cached rows are of the local version: they must not be mixed with another version or a default.
            return answer if whole else self._run(arrays, rows, local, None, started)
        self.cache.put_rows([keys[i] for i in missing], answer.scores)
        if whole:
            return answer
        per_row = answer.scores.size // len(missing)
        scores = np.empty((rows, per_row), dtype=np.float32)
        scores[missing] = answer.scores.reshape(len(missing), per_row)
        scores[list(hits)] = np.stack(list(hits.values())).reshape(len(hits), per_row)
        latency = time.perf_counter() - started
        return Prediction(
            scores.ravel(), answer.source, answer.version, latency, answer.fallback_reason, answer.fallback, len(hits)
        )

    def _note_local_time(self, seconds: float, rows: int) -> None:
        """Feed the moving average of local latency (per single row) that picks the inline path."""
        if rows > 1:
            seconds -= self.policy.per_row_s * (rows - 1)
        self._recent_s += (seconds - self._recent_s) * self._inline_weight

    def _submit_local(self, local: LocalModel, arrays: dict[str, np.ndarray], rows: int) -> _LocalCall:
        """Run the local model on the worker pool; the returned call can be cancelled or terminated."""
        options = local.run_options()

        def run() -> np.ndarray:
            began = time.perf_counter()
            try:
                return local.score(arrays, options)
            finally:
                if not options.terminate:
                    self._note_local_time(time.perf_counter() - began, rows)

        with self._inflight_lock:
            self._pooled_inflight += 1
        self.counters.count_pooled()
        future = self.local_pool.submit(run)
        future.add_done_callback(self._local_done)
        return _LocalCall(future, options)

    def _local_done(self, _: Future[np.ndarray]) -> None:
        with self._inflight_lock:
            self._pooled_inflight -= 1

    def _race(
        self,
        arrays: dict[str, np.ndarray],
        local: LocalModel,
        key: CacheKey | None,
        rows: int,
        started: float,
        deadline: float,
        policy: FallbackPolicy,
    ) -> Prediction:
        """Run the local model on the pool; hedge with the server when it is slow; first good answer wins."""
        hedge_at = started + policy.hedge_after_s if policy.hedge_after_s is not None else None
        local_deadline = started + policy.local_deadline_s
        call = self._submit_local(local, arrays, rows)
        local_call = call.future
        server_call: Future[Prediction] | None = None
        while True:
            if local_call.done():
                try:
                    scores = local_call.result()
                except InvalidInputError:
                    if server_call is not None:
                        server_call.cancel()
                    raise  # the request's fault, not the model's
                except EdgerecError as exc:
                    return self._local_failed(exc, arrays, local, started, policy, deadline, server_call)
                self.local_breaker.record_success()
                self.active.faults_in_a_row = 0
                if key is not None:
                    self.cache.put(key, scores)
                return self._answer(scores, Source.LOCAL, local.version, started)
            if server_call is not None and server_call.done() and server_call.exception() is None:
                answer = server_call.result()
                self._cancel(call)
                return self._answer(answer.scores, answer.source, answer.version, started, FallbackReason.HEDGED)
            now = time.perf_counter()
            if now >= local_deadline:
                code, detail = FallbackReason.LOCAL_DEADLINE, f"local inference exceeded {policy.local_deadline_s}s"
                log.warning("%s; falling back to the server", detail)
                self.local_breaker.record_failure()
                self._cancel(call)
                break
            if server_call is None and hedge_at is not None and now >= hedge_at and self.scorer is not None:
                server_call = self._server_pool.submit(self.scorer.ask, arrays, local.version, deadline)
            wake = local_deadline if server_call is not None or hedge_at is None else min(hedge_at, local_deadline)
            waiting: list[Future[Any]] = [local_call]
            if server_call is not None and not server_call.done():
                waiting.append(server_call)
            futures.wait(waiting, timeout=max(0.0, wake - now), return_when=futures.FIRST_COMPLETED)
        return self._fallback(arrays, local, code, detail, started, deadline, policy, server_call)

    def _cancel(self, call: _LocalCall) -> None:
        """Stop a local run that lost: drop it from the queue, or terminate it if it is running."""
        if call.future.done():
            return
        if not call.future.cancel():
            call.options.terminate = True
        self.counters.count_cancelled()

    def _local_failed(
        self,
        exc: EdgerecError,
        arrays: dict[str, np.ndarray],
        local: LocalModel,
        started: float,
        policy: FallbackPolicy,
        deadline: float | None = None,
        server_call: Future[Prediction] | None = None,
    ) -> Prediction:
        """The local model failed (a runtime error or non-finite scores): count it and ask the server."""
        code = FallbackReason.NON_FINITE if isinstance(exc, NonFiniteScoresError) else FallbackReason.LOCAL_ERROR
        detail = f"local inference failed: {exc}"
        log.warning("%s; falling back to the server", detail)
        self.local_breaker.record_failure()
        self.active.record_fault(local.version)
        if deadline is None:
            deadline = started + policy.deadline_s
        return self._fallback(arrays, local, code, detail, started, deadline, policy, server_call)

    def _fallback(
        self,
        arrays: dict[str, np.ndarray],
        local: LocalModel | None,
        code: FallbackReason,
        detail: str,
        started: float,
        deadline: float,
        policy: FallbackPolicy,
        server_call: Future[Prediction] | None = None,
    ) -> Prediction:
        """The server's answer (or the configured default score) for a request the local model did not answer."""
        reason = f"{code.value}: {detail}"
        try:
            if server_call is not None:
                remaining = max(0.0, deadline - time.perf_counter())
                try:
                    answer = server_call.result(timeout=remaining)
                except futures.TimeoutError as exc:
                    raise NoModelAvailableError(
                        f"server did not answer within the {policy.deadline_s:.3g}s deadline"
                    ) from exc
            elif self.scorer is None:
                raise NoModelAvailableError("no server is configured")
            else:
                wanted = local.installed.version if local else self.active.installed_version
                answer = self.scorer.answer(arrays, wanted, reason, started, deadline)
        except NoModelAvailableError as exc:
            if self.policy.default_score is None:
                self.counters.count_error(code)
                raise NoModelAvailableError(f"cannot predict: {reason}; {exc}") from exc
            log.warning("cannot predict (%s; %s): answering the default score", reason, exc)
            batch = next(iter(arrays.values())).shape[:1] if arrays else (1,)
            scores = np.full(batch or (1,), self.policy.default_score, dtype=np.float32)
            version = local.version if local else 0
            return self._answer(scores, Source.DEFAULT, version, started, code, reason)
        return self._answer(answer.scores, answer.source, answer.version, started, code, reason)

    def _answer(
        self,
        scores: np.ndarray,
        source: Source,
        version: int,
        started: float,
        code: FallbackReason | None = None,
        reason: str | None = None,
    ) -> Prediction:
        latency = time.perf_counter() - started
        self.counters.count(source, code, latency)
        return Prediction(scores, source, version, latency, reason if reason or code is None else code.value, code)

    def _track(self, local: LocalModel) -> None:
        """A newly loaded model (sync, rollback, reload) starts with a closed breaker and an empty cache."""
        self._tracked = local
        self.local_breaker.reset()
        self._recent_s = 0.0
        self.cache.observe_version(local.version)
