"""EdgeClient: the device SDK's one object. Sync updates, predict locally, fall back to the server."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.artifacts import DEFAULT_RECIPES
from edgerec.device.cache import CacheKey, PredictionCache, request_key
from edgerec.device.local_model import LocalModel, Prediction
from edgerec.device.ort_cache import ORT_CACHE_DIR, prune_ort_cache
from edgerec.device.policy import CircuitBreaker, FallbackPolicy, FallbackReason, PredictCounters, Source
from edgerec.device.storage import ModelStore
from edgerec.device.sync import FileProgress, Syncer, SyncResult, check_golden
from edgerec.device.telemetry import StatusReporter, SyncStats, TelemetrySender, build_report
from edgerec.device.transport import ServerConnection, TransportConfig
from edgerec.errors import (
    AuthenticationError,
    EdgerecError,
    InvalidInputError,
    NoModelAvailableError,
    NoTrustedKeysError,
)
from edgerec.runtimes import NonFiniteScoresError
from edgerec.signing import load_public_key
from edgerec.tokens import device_id_of
from edgerec.trust import TrustedKeys, UpdateVerifier
from edgerec.units import parse_rate
from edgerec.v1 import telemetry_pb2

log = logging.getLogger(__name__)

# How often predict checks whether another process switched the active version (seconds).
STATE_CHECK_INTERVAL_S = 0.05
# How sync verifies when it has neither trusted keys nor the insecure opt-out (it refuses).
UNCONFIGURED = "unconfigured"
NO_TRUSTED_KEYS = (
    "no trusted keys: refusing to sync updates nobody can verify. Pass the server's public key "
    "(EdgeClient(trusted_keys=['server.pub']), edgerec sync --trusted-key server.pub), "
    "or opt out explicitly with EdgeClient(insecure=True) (edgerec sync --insecure-skip-verify)"
)
# Share of the deadline kept back from a server call's gRPC timeout (5 ms of the default 50 ms).
DEADLINE_MARGIN = 0.1


@dataclass(frozen=True)
class _LocalCall:
    """A local run on the worker pool: its future and the RunOptions that can terminate it."""

    future: Future[np.ndarray]
    options: Any


class EdgeClient:
    """A device's handle on one model.

    Sync verifies every update by the server's public key(s) in ``trusted_keys``; without keys it
    refuses (NoTrustedKeysError) unless ``insecure=True`` opts out of verification explicitly.

    >>> client = EdgeClient(server="127.0.0.1:50051", model="ctr", data_dir="/var/lib/edgerec",
    ...                     trusted_keys=["/etc/edgerec/server.pub"])
    >>> client.sync()
    >>> client.predict({"dense_features": dense, "sparse_ids": ids}).scores
    """

    def __init__(
        self,
        server: str | None,
        model: str,
        data_dir: Path | str,
        *,
        rate: str | float | None = None,
        cache_entries: int = 1024,
        recipes: tuple[str, ...] = DEFAULT_RECIPES,
        threads: int = 1,
        optimized_model_cache: bool = True,
        device_id: str = "",
        max_payload_bytes: int = 0,
        max_local_failures: int = 3,
        trusted_keys: Sequence[Path | str] | TrustedKeys | None = None,
        insecure: bool = False,
        tls_ca: Path | str | None = None,
        token: str | None = None,
        transport: TransportConfig | None = None,
        policy: FallbackPolicy | None = None,
        cache_ttl_s: float | None = 300.0,
        cache_max_bytes: int = 4 * 1024 * 1024,
        cache_rows: bool = False,
    ) -> None:
        self.model = model
        self.store = ModelStore(data_dir, model)
        self.recipes = recipes
        self.threads = threads
        # onnxruntime artifacts: the EXTENDED-optimized model is saved here once per artifact digest.
        self.ort_cache_dir: Path | None = Path(data_dir) / ORT_CACHE_DIR if optimized_model_cache else None
        # A token is "<device_id>.<secret>": the id in front names the device when none is given.
        self.device_id = device_id or device_id_of(token)
        self.max_payload_bytes = max_payload_bytes
        self.max_local_failures = max_local_failures
        self._consecutive_failures = 0
        # (from version, to version) of every rollback this client made, oldest first.
        self.rollbacks: list[tuple[int, int]] = []
        # How sync verifies updates; None: no keys and no opt-out, so sync refuses.
        self.verifier = _verifier(model, trusted_keys, insecure)
        config = transport or TransportConfig()
        if rate is not None:
            rate_bytes = parse_rate(rate) if isinstance(rate, str) else float(rate)
            config = dataclasses.replace(config, rate_bytes_per_s=rate_bytes)
        self._connection = (
            ServerConnection(server, config, tls_ca=Path(tls_ca) if tls_ca else None, token=token) if server else None
        )
        self._server, self._tls_ca, self._token = server, Path(tls_ca) if tls_ca else None, token
        self.sync_stats = SyncStats()
        self._telemetry: TelemetrySender | None = None
        self._reporter: StatusReporter | None = None
        self.cache = PredictionCache(cache_entries, ttl_s=cache_ttl_s, max_bytes=cache_max_bytes)
        self.policy = policy or FallbackPolicy()
        self.counters = PredictCounters()
        self.local_breaker = CircuitBreaker("local", self.policy.local_failure_threshold, self.policy.local_cooldown_s)
        self.server_breaker = CircuitBreaker(
            "server", self.policy.server_failure_threshold, self.policy.server_cooldown_s
        )
        # onnxruntime calls cannot be cancelled: they run here so a slow one never blocks past the deadline.
        self._local_pool = futures.ThreadPoolExecutor(self.policy.local_workers, thread_name_prefix="edgerec-local")
        self._server_pool = futures.ThreadPoolExecutor(self.policy.server_workers, thread_name_prefix="edgerec-hedge")
        self._tracked: LocalModel | None = None
        self._local: LocalModel | None = None
        self._local_failure: str | None = None
        self._state_stamp: tuple[int, int] | None = None
        # perf_counter time after which predict looks at the store's state file again (another process may sync)
        self._recheck_at = 0.0
        self._loads = 0  # load attempts (a changed count tells predict that it waited for one)
        self._installed_version = 0  # the active version at the last load attempt (0: none or unreadable)
        self._last_server_version = 0
        self._lock = threading.Lock()
        self._caching = self.cache.max_entries > 0
        # Cache each row of a batch, so a batch (or a single request) repeating some rows runs the model on
        # the others only. Off by default: keying, looking up and storing rows cost about 5 us a row (64-row
        # batches of the small reference model, whose batch costs 2 us a row), so it pays for costlier models.
        self.cache_rows = cache_rows
        # Moving average of recent local latency: below the policy's inline limit the model runs inline.
        self._recent_s = 0.0
        self._inline_limit_s = self.policy.inline_limit_s
        self._inline_weight = self.policy.inline_weight
        self._pooled_inflight = 0  # local runs on the pool not finished yet (a stuck one keeps us off inline)
        self._inflight_lock = threading.Lock()

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.stop()
        if self._telemetry is not None:
            self._telemetry.close()
        self._local_pool.shutdown(wait=False, cancel_futures=True)
        self._server_pool.shutdown(wait=False, cancel_futures=True)
        if self._connection is not None:
            self._connection.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- updates ----------------------------------------------------------------

    def sync(self, target_version: int = 0, progress: FileProgress | None = None) -> SyncResult:
        """Install the server's latest (or ``target_version``) if newer; the old version is kept."""
        if self._connection is None:
            raise NoModelAvailableError("no server configured; cannot sync")
        if self.verifier is None:
            refused = NoTrustedKeysError(NO_TRUSTED_KEYS)
            self.sync_stats.record(None, refused)
            raise refused
        syncer = Syncer(
            self.store,
            self._connection,
            verifier=self.verifier,
            recipes=self.recipes,
            device_id=self.device_id,
            max_payload_bytes=self.max_payload_bytes,
        )
        try:
            result = syncer.sync(target_version, progress)
        except Exception as exc:
            self.sync_stats.record(None, exc)
            raise
        self.sync_stats.record(result)
        if result.held_back_reason:
            log.warning("%s: %s", self.model, result.held_back_reason)
        if result.updated:
            self.reload()
            self.cache.clear()
            self._prune_ort_cache()
        return result

    @property
    def held_back_version(self) -> int | None:
        """The version this device rolled back from and does not install again until :meth:`clear_rollback`."""
        try:
            return self.store.held_back()
        except (EdgerecError, OSError):
            return None

    def clear_rollback(self) -> int | None:
        """Let the next sync install again the version a rollback held back; returns that version (None: none held).

        For an operator who fixed what made it fail here (or wants it tried again). A newer
        version ends the hold by itself.
        """
        return self.store.clear_rollback()

    @property
    def verification(self) -> str:
        """How sync verifies updates: "ed25519" (trusted keys), "off" (insecure=True) or "unconfigured" (refuses)."""
        return self.verifier.verification if self.verifier is not None else UNCONFIGURED

    @property
    def active_version(self) -> int | None:
        """The installed active version, or None (also when a crash left it unreadable)."""
        try:
            current = self.store.current()
        except EdgerecError:
            return None
        return current.version if current else None

    # --- status reports ---------------------------------------------------------

    def runtime_info(self) -> dict[str, str]:
        """What predict runs: the loaded artifact's ``describe()`` (recipe, runtime, model files, batch sizes,
        optimized-model cache) and its version; loads the active version if needed. Without a usable local
        model: ``runtime`` is empty and ``error`` says why. ``verification`` is how sync verifies updates.
        """
        local, failure = self._local_model()
        if local is None:
            return {
                "version": "",
                "recipe": "",
                "runtime": "",
                "error": failure or "no local model installed",
                "verification": self.verification,
            }
        return {"version": str(local.version), **local.loaded.describe(), "verification": self.verification}

    def status_report(self) -> telemetry_pb2.StatusReport:
        """What this client runs and did since it started: answers by source, fallbacks, latency, syncs."""
        try:
            current = self.store.current()
        except EdgerecError:
            current = None
        local = self._local
        # The recipe of the artifact loaded for that version (a tflite_* recipe runs on LiteRT), else the installed one.
        recipe = (
            ""
            if current is None
            else local.loaded.recipe
            if local and local.version == current.version
            else current.recipe
        )
        return build_report(
            device_id=self.device_id,
            model=self.model,
            active_version=current.version if current else 0,
            recipe=recipe,
            counters=self.counters,
            sync=self.sync_stats.snapshot(),
            rollbacks=list(self.rollbacks),
            held_back_version=self.held_back_version or 0,
        )

    def report_status(self, timeout_s: float = 2.0) -> telemetry_pb2.StatusAck:
        """Send one status report now; NoModelAvailableError without a server, a typed error when it fails."""
        return self._telemetry_sender().send(self.status_report(), timeout_s)

    def start_reporting(self, interval_s: float = 60.0, timeout_s: float = 2.0) -> StatusReporter:
        """Report status every ``interval_s`` on a background thread until :meth:`close` (idempotent)."""
        if self._reporter is None:
            sender = self._telemetry_sender()
            self._reporter = StatusReporter(self.status_report, sender.send, interval_s=interval_s, timeout_s=timeout_s)
        return self._reporter.start()

    def _telemetry_sender(self) -> TelemetrySender:
        if self._server is None:
            raise NoModelAvailableError("no server configured; cannot report status")
        if self._telemetry is None:
            self._telemetry = TelemetrySender(self._server, tls_ca=self._tls_ca, token=self._token)
        return self._telemetry

    # --- predictions ------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Scores from the cache, the local model, or (when that is unusable or slow) the server.

        Answers or raises a typed error within ``policy.deadline_s`` (see :class:`FallbackPolicy`).
        :class:`InvalidInputError` when the request is wrong: inputs that do not match the model's
        signature, or values the model refuses (an id outside an embedding table). Such a request
        goes to neither the server nor the breakers, and never counts toward a rollback.
        """
        try:
            started = time.perf_counter()
            local = self._local
            if local is None or started >= self._recheck_at:
                loads = self._loads
                local, load_failure = self._local_model()
                if self._loads != loads:  # loading a new version (once per version) is not part of a prediction
                    started = time.perf_counter()
                if local is None:
                    detail = load_failure or "no local model installed"
                    code = (
                        FallbackReason.NO_LOCAL_MODEL if detail.startswith("no local") else FallbackReason.LOAD_FAILED
                    )
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
            self._consecutive_failures = 0
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
                log.warning("%s version %d failed its health check: %s", self.model, local.version, exc)
                passed = False
            else:
                log.info(
                    "%s version %d passed its health check: the local model answers again", self.model, local.version
                )
                passed = True
            if local is self._tracked:  # a newer version started with a breaker of its own
                if passed:
                    self.local_breaker.record_success()
                else:
                    self.local_breaker.record_failure()

        try:
            self._local_pool.submit(probe)
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
        future = self._local_pool.submit(run)
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
                self._consecutive_failures = 0
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
            if server_call is None and hedge_at is not None and now >= hedge_at and self._connection is not None:
                server_call = self._server_pool.submit(self._ask_server, arrays, local.version, deadline)
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
        self._count_local_failure(local.version)
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
            else:
                answer = self._predict_on_server(arrays, local, reason, started, deadline)
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

    def _count_local_failure(self, version: int) -> None:
        """A fault of the model (a runtime error or non-finite scores; never a refused request): after
        ``max_local_failures`` in a row, roll back to the previous version and hold this one back.
        """
        self._consecutive_failures += 1
        if self._consecutive_failures < self.max_local_failures or self.store.previous() is None:
            return
        restored = self.store.rollback()
        self._consecutive_failures = 0
        self.rollbacks.append((version, restored.version))
        log.error(
            "%s version %d failed %d predictions in a row: rolled back to version %d",
            self.model,
            version,
            self.max_local_failures,
            restored.version,
        )
        self.reload()

    def _predict_on_server(
        self,
        arrays: dict[str, np.ndarray],
        local: LocalModel | None,
        reason: str,
        started: float,
        deadline: float,
    ) -> Prediction:
        """The server's answer (or a cached earlier one); NoModelAvailableError when it cannot give one."""
        wanted = local.installed.version if local else self._installed_version
        key = request_key(wanted or self._last_server_version, arrays)
        cached = self.cache.get(key) if key[0] else None
        if cached is not None:
            return Prediction(cached, Source.CACHE, key[0], time.perf_counter() - started, reason)
        return self._ask_server(arrays, wanted, deadline)

    def _ask_server(self, arrays: dict[str, np.ndarray], wanted: int, deadline: float) -> Prediction:
        """One Predict call through the server's breaker, bounded by ``deadline`` (a perf_counter time)."""
        if self._connection is None:
            raise NoModelAvailableError("no server is configured")
        started = time.perf_counter()
        # gRPC's deadline fires a little late on a busy CPU, and raising the error takes time too: keep a
        # margin so the caller has its typed error within the deadline.
        remaining = deadline - started - DEADLINE_MARGIN * self.policy.deadline_s
        if remaining <= 0:
            raise NoModelAvailableError("no time left to ask the server")
        if not self.server_breaker.allow():  # after the time check: a half-open probe must go out once allowed
            raise NoModelAvailableError("the server's circuit breaker is open")
        try:
            response = self._connection.predict(self.model, arrays, version=wanted, timeout_s=remaining)
        except (InvalidInputError, AuthenticationError):
            self.server_breaker.record_success()  # the server is up; the request is wrong
            raise
        except EdgerecError as exc:
            self.server_breaker.record_failure()
            self.counters.count_server_failure()
            raise NoModelAvailableError(f"server failed: {exc}") from exc
        # The server's answer is returned as is (the caller sees any NaN); the cache refuses non-finite scores.
        scores = np.asarray(response.scores, dtype=np.float32)
        self.server_breaker.record_success()
        self._last_server_version = response.version
        self.cache.put(request_key(response.version, arrays), scores)
        return Prediction(scores, Source.SERVER, response.version, time.perf_counter() - started)

    def _local_model(self) -> tuple[LocalModel | None, str | None]:
        """The loaded active version, loading and verifying it on first use; else why not.

        The store's state file is only re-read when it changed on disk (another process may sync);
        predict looks at it at most every ``STATE_CHECK_INTERVAL_S`` (a stat costs as much as the rest of
        the hot path). Answers always carry the version that produced them. After a load the
        optimized-model cache is pruned (outside the lock: predict never waits for the disk).
        """
        loads = self._loads
        local, failure = self._load_local_model()
        if local is not None and self._loads != loads:
            self._prune_ort_cache()
        return local, failure

    def _prune_ort_cache(self) -> None:
        if self.ort_cache_dir is not None:
            prune_ort_cache(self.store.root.parent, self.ort_cache_dir)

    def _load_local_model(self) -> tuple[LocalModel | None, str | None]:
        failure = self._local_failure
        if failure is not None and time.perf_counter() < self._recheck_at:
            # Known unusable: while the server answers instead, predict must not pay a stat per call.
            return None, failure
        with self._lock:
            stamp = self.store.state_stamp()
            self._recheck_at = time.perf_counter() + STATE_CHECK_INTERVAL_S
            if stamp == self._state_stamp and (self._local is not None or self._local_failure is not None):
                return self._local, self._local_failure
            self._state_stamp = stamp
            self._local, self._local_failure = None, None
            self._loads += 1
            self._installed_version = 0
            try:
                installed = self.store.current()
                if installed is None:
                    self._local_failure = "no local model installed"
                    return None, self._local_failure
                self._installed_version = installed.version
                self.store.verify(installed)
                self._local = LocalModel(installed, self.threads, self.ort_cache_dir)
                log.info("loaded %s version %d: %s", self.model, installed.version, self._local.loaded.describe())
                return self._local, None
            except EdgerecError as exc:
                self._local_failure = f"local model unusable: {exc}"
                log.warning("%s", self._local_failure)
                return None, self._local_failure

    def reload(self) -> None:
        """Forget the loaded model so the next predict loads and verifies it again."""
        with self._lock:
            self._local, self._local_failure, self._state_stamp = None, None, None
            self._recheck_at = 0.0


def _verifier(model: str, keys: Sequence[Path | str] | TrustedKeys | None, insecure: bool) -> UpdateVerifier | None:
    """The verifier sync uses: by the trusted keys, insecure only when asked; None when neither."""
    if isinstance(keys, TrustedKeys):
        trusted: TrustedKeys | None = keys
    elif keys:  # public key files; an empty list trusts nothing
        trusted = TrustedKeys.from_public_keys([load_public_key(Path(path)) for path in keys])
    else:
        trusted = None
    if insecure:
        if trusted is not None:
            raise ValueError("pass trusted_keys or insecure=True, not both")
        return UpdateVerifier.insecure(model)
    return UpdateVerifier(model, trusted) if trusted is not None else None
