"""EdgeClient: the device SDK's one object. Sync updates, predict locally, fall back to the server."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerec import tensors
from edgerec.device.cache import CacheKey, PredictionCache, request_key
from edgerec.device.policy import CircuitBreaker, FallbackPolicy, FallbackReason, PredictCounters, Source
from edgerec.device.storage import InstalledVersion, ModelStore
from edgerec.device.sync import FileProgress, Syncer, SyncResult
from edgerec.device.transport import ServerConnection, TransportConfig
from edgerec.errors import (
    AuthenticationError,
    EdgerecError,
    InvalidInputError,
    ModelRuntimeError,
    NoModelAvailableError,
)
from edgerec.runtimes import OnnxRunner
from edgerec.signing import load_public_key
from edgerec.trust import TrustedKeys, UpdateVerifier
from edgerec.units import parse_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Scores for a request and where they came from."""

    scores: np.ndarray
    source: Source  # cache, local, server or default (a str enum: compares equal to "local" etc.)
    version: int
    latency_s: float
    # Why the local model did not answer: the code's value and a detail; None when it did.
    fallback_reason: str | None = None
    fallback: FallbackReason | None = None


class _LocalModel:
    """The active version, loaded and verified."""

    def __init__(self, installed: InstalledVersion, threads: int) -> None:
        self.installed = installed
        self.runner = OnnxRunner(installed.entrypoint, threads=threads)
        self.input_specs = [(s.name, s.dtype, list(s.shape)) for s in installed.manifest.inputs]
        self._warm_up()

    def _warm_up(self) -> None:
        """One run on zeros (batch 1), so the first real prediction does not pay onnxruntime's first-run cost."""
        zeros = {
            name: np.zeros([d if d >= 0 else 1 for d in shape], dtype=dtype) for name, dtype, shape in self.input_specs
        }
        try:
            self.runner.run(zeros)
        except EdgerecError as exc:
            log.debug("warm-up run failed (the first prediction will tell): %s", exc)


class _NonFiniteError(ModelRuntimeError):
    """Local scores with NaN or inf."""


def _run_local(local: _LocalModel, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The local model's first output as flat float32 scores (runs in the local pool)."""
    outputs = local.runner.run(arrays)
    scores = np.asarray(outputs[local.runner.output_names[0]], dtype=np.float32).ravel()
    if not np.all(np.isfinite(scores)):
        raise _NonFiniteError("local model returned non-finite scores")
    return scores


class EdgeClient:
    """A device's handle on one model.

    >>> client = EdgeClient(server="127.0.0.1:50051", model="ctr", data_dir="/var/lib/edgerec")
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
        recipes: tuple[str, ...] = ("int8", "fp32"),
        threads: int = 1,
        device_id: str = "",
        max_payload_bytes: int = 0,
        max_local_failures: int = 3,
        trusted_keys: Sequence[Path | str] | TrustedKeys | None = None,
        tls_ca: Path | str | None = None,
        token: str | None = None,
        transport: TransportConfig | None = None,
        policy: FallbackPolicy | None = None,
        cache_ttl_s: float | None = 300.0,
        cache_max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.model = model
        self.store = ModelStore(data_dir, model)
        self.recipes = recipes
        self.threads = threads
        # A token is "<device_id>.<secret>": the id in front names the device when none is given.
        self.device_id = device_id or (token.rpartition(".")[0] if token else "")
        self.max_payload_bytes = max_payload_bytes
        self.max_local_failures = max_local_failures
        self._consecutive_failures = 0
        # (from version, to version) of every rollback this client made, oldest first.
        self.rollbacks: list[tuple[int, int]] = []
        self.verifier = UpdateVerifier(model, _trusted(trusted_keys)) if trusted_keys is not None else None
        config = transport or TransportConfig()
        if rate is not None:
            rate_bytes = parse_rate(rate) if isinstance(rate, str) else float(rate)
            config = dataclasses.replace(config, rate_bytes_per_s=rate_bytes)
        self._connection = (
            ServerConnection(server, config, tls_ca=Path(tls_ca) if tls_ca else None, token=token) if server else None
        )
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
        self._tracked: _LocalModel | None = None
        self._local: _LocalModel | None = None
        self._local_failure: str | None = None
        self._state_stamp: tuple[int, int] | None = None
        self._last_server_version = 0
        self._lock = threading.Lock()

    def close(self) -> None:
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
        syncer = Syncer(
            self.store,
            self._connection,
            recipes=self.recipes,
            device_id=self.device_id,
            max_payload_bytes=self.max_payload_bytes,
            verifier=self.verifier,
        )
        result = syncer.sync(target_version, progress)
        if result.updated:
            self.reload()
            self.cache.clear()
        return result

    @property
    def active_version(self) -> int | None:
        """The installed active version, or None (also when a crash left it unreadable)."""
        try:
            current = self.store.current()
        except EdgerecError:
            return None
        return current.version if current else None

    # --- predictions ------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Scores from the cache, the local model, or (when that is unusable or slow) the server.

        Answers or raises a typed error within ``policy.deadline_s`` (see :class:`FallbackPolicy`).
        """
        started = time.perf_counter()
        local, load_failure = self._local_model()
        rows = min((np.shape(a)[0] for a in inputs.values() if np.ndim(a)), default=1)
        policy = self.policy.for_rows(rows)
        # Loading a new version (once per version) is not part of a prediction's deadline.
        deadline = time.perf_counter() + policy.deadline_s
        if local is None:
            detail = load_failure or "no local model installed"
            code = FallbackReason.NO_LOCAL_MODEL if detail.startswith("no local") else FallbackReason.LOAD_FAILED
            arrays = {name: np.asarray(a) for name, a in inputs.items()}
            return self._fallback(arrays, None, code, detail, started, deadline, policy)
        arrays = tensors.check_inputs(inputs, local.input_specs)
        version = local.installed.version
        self._track(local)
        key = request_key(version, arrays)
        cached = self.cache.get(key)
        if cached is not None:
            return self._answer(cached, Source.CACHE, version, started)
        if not self.local_breaker.allow():
            detail = "local model's circuit breaker is open"
            return self._fallback(arrays, local, FallbackReason.LOCAL_BREAKER_OPEN, detail, started, deadline, policy)
        future = self._local_pool.submit(_run_local, local, arrays)
        return self._race(future, arrays, local, key, started, deadline, policy)

    def _race(
        self,
        local_call: Future[np.ndarray],
        arrays: dict[str, np.ndarray],
        local: _LocalModel,
        key: CacheKey,
        started: float,
        deadline: float,
        policy: FallbackPolicy,
    ) -> Prediction:
        """Wait for the local model; hedge with the server when it is slow; first good answer wins."""
        begun = deadline - policy.deadline_s
        hedge_at = begun + policy.hedge_after_s if policy.hedge_after_s is not None else None
        local_deadline = begun + policy.local_deadline_s
        server_call: Future[Prediction] | None = None
        while True:
            if local_call.done():
                try:
                    scores = local_call.result()
                except EdgerecError as exc:
                    code = FallbackReason.NON_FINITE if isinstance(exc, _NonFiniteError) else FallbackReason.LOCAL_ERROR
                    detail = f"local inference failed: {exc}"
                    log.warning("%s; falling back to the server", detail)
                    self.local_breaker.record_failure()
                    self._count_local_failure(local.installed.version)
                    break
                self.local_breaker.record_success()
                self._consecutive_failures = 0
                self.cache.put(key, scores)
                return self._answer(scores, Source.LOCAL, key[0], started)
            if server_call is not None and server_call.done() and server_call.exception() is None:
                answer = server_call.result()
                local_call.add_done_callback(self._late_local(key))
                return self._answer(answer.scores, answer.source, answer.version, started, FallbackReason.HEDGED)
            now = time.perf_counter()
            if now >= local_deadline:
                code, detail = FallbackReason.LOCAL_DEADLINE, f"local inference exceeded {policy.local_deadline_s}s"
                log.warning("%s; falling back to the server", detail)
                self.local_breaker.record_failure()
                local_call.add_done_callback(self._late_local(key))
                break
            if server_call is None and hedge_at is not None and now >= hedge_at and self._connection is not None:
                server_call = self._server_pool.submit(self._ask_server, arrays, key[0], deadline)
            wake = local_deadline if server_call is not None or hedge_at is None else min(hedge_at, local_deadline)
            waiting: list[Future[Any]] = [local_call]
            if server_call is not None and not server_call.done():
                waiting.append(server_call)
            futures.wait(waiting, timeout=max(0.0, wake - now), return_when=futures.FIRST_COMPLETED)
        return self._fallback(arrays, local, code, detail, started, deadline, policy, server_call)

    def _late_local(self, key: CacheKey) -> Callable[[Future[np.ndarray]], None]:
        """Callback for a local call nobody waits for any more: keep a good answer in the cache."""

        def done(call: Future[np.ndarray]) -> None:
            if call.exception() is None:
                self.cache.put(key, call.result())

        return done

    def _fallback(
        self,
        arrays: dict[str, np.ndarray],
        local: _LocalModel | None,
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
                raise NoModelAvailableError(f"cannot predict: {reason}; {exc}") from exc
            log.warning("cannot predict (%s; %s): answering the default score", reason, exc)
            batch = next(iter(arrays.values())).shape[:1] if arrays else (1,)
            scores = np.full(batch or (1,), self.policy.default_score, dtype=np.float32)
            version = local.installed.version if local else 0
            return self._answer(scores, Source.DEFAULT, version, started, code, reason)
        return self._answer(answer.scores, answer.source, answer.version, started, code, reason)

    def _answer(
        self,
        scores: np.ndarray,
        source: Source | str,
        version: int,
        started: float,
        code: FallbackReason | None = None,
        reason: str | None = None,
    ) -> Prediction:
        source = Source(source)
        latency = time.perf_counter() - started
        self.counters.count(source, code, latency)
        return Prediction(scores, source, version, latency, reason if reason or code is None else code.value, code)

    def _track(self, local: _LocalModel) -> None:
        """A newly loaded model (sync, rollback, reload) starts with a closed breaker and an empty cache."""
        if local is not self._tracked:
            self._tracked = local
            self.local_breaker.reset()
        self.cache.observe_version(local.installed.version)

    def _count_local_failure(self, version: int) -> None:
        """After ``max_local_failures`` failures in a row, roll back to the previous version."""
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
        local: _LocalModel | None,
        reason: str,
        started: float,
        deadline: float,
    ) -> Prediction:
        """The server's answer (or a cached earlier one); NoModelAvailableError when it cannot give one."""
        wanted = local.installed.version if local else (self.active_version or 0)
        key = request_key(wanted or self._last_server_version, arrays)
        cached = self.cache.get(key) if key[0] else None
        if cached is not None:
            return Prediction(cached, Source.CACHE, key[0], time.perf_counter() - started, reason)
        return self._ask_server(arrays, wanted, deadline)

    def _ask_server(self, arrays: dict[str, np.ndarray], wanted: int, deadline: float) -> Prediction:
        """One Predict call through the server's breaker, bounded by ``deadline`` (a perf_counter time)."""
        if self._connection is None:
            raise NoModelAvailableError("no server is configured")
        if not self.server_breaker.allow():
            raise NoModelAvailableError("the server's circuit breaker is open")
        started = time.perf_counter()
        remaining = deadline - started
        if remaining <= 0:
            raise NoModelAvailableError("no time left to ask the server")
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

    def _local_model(self) -> tuple[_LocalModel | None, str | None]:
        """The loaded active version, loading and verifying it on first use; else why not.

        The store's state file is only re-read when it changed on disk (another process may sync).
        """
        with self._lock:
            stamp = self.store.state_stamp()
            if stamp == self._state_stamp and (self._local is not None or self._local_failure is not None):
                return self._local, self._local_failure
            self._state_stamp = stamp
            self._local, self._local_failure = None, None
            try:
                installed = self.store.current()
                if installed is None:
                    self._local_failure = "no local model installed"
                    return None, self._local_failure
                self.store.verify(installed)
                self._local = _LocalModel(installed, self.threads)
                log.info("loaded %s version %d (%s)", self.model, installed.version, installed.recipe)
                return self._local, None
            except EdgerecError as exc:
                self._local_failure = f"local model unusable: {exc}"
                log.warning("%s", self._local_failure)
                return None, self._local_failure

    def reload(self) -> None:
        """Forget the loaded model so the next predict loads and verifies it again."""
        with self._lock:
            self._local, self._local_failure, self._state_stamp = None, None, None


def _trusted(keys: Sequence[Path | str] | TrustedKeys) -> TrustedKeys:
    """Trusted keys from public key files (or as given)."""
    if isinstance(keys, TrustedKeys):
        return keys
    return TrustedKeys.from_public_keys([load_public_key(Path(path)) for path in keys])
