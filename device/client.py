"""EdgeClient: the device SDK's one object, a thin facade over parts that each do one job.

===========================  ==========================================================================
``EdgeConfig``               what the client is configured with (:mod:`edgerec.device.config`)
``ActiveModel``              the installed version predict runs; reload, rollback and its hold
``Predictor``                local-first predict: cache, breakers, inline or pool, hedging, fallback
``ServerScorer``             the server's Predict through its breaker
``Syncer``                   check, verify, fetch, apply, health-check, switch (:mod:`edgerec.device.sync`)
``ServerPool``               the servers, with failover (:mod:`edgerec.device.transport`)
``StatusReporter``           status reports to the server (:mod:`edgerec.device.telemetry`)
``OutcomeLedger``            per-version feedback and predict counts (:mod:`edgerec.device.feedback`)
===========================  ==========================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from edgerec.device.active_model import ActiveModel
from edgerec.device.cache import PredictionCache
from edgerec.device.config import UNCONFIGURED, EdgeConfig
from edgerec.device.feedback import CounterSnapshot, OutcomeLedger
from edgerec.device.local_model import Prediction
from edgerec.device.observer import Observer, SyncEvent, SyncPhase, notify_sync
from edgerec.device.ort_cache import ORT_CACHE_DIR
from edgerec.device.policy import CircuitBreaker, FallbackPolicy, FallbackReason, PredictCounters, Source
from edgerec.device.predictor import Predictor
from edgerec.device.server_scorer import ServerScorer
from edgerec.device.storage import ModelStore, stable_device_id
from edgerec.device.sync import FileProgress, Syncer, SyncResult
from edgerec.device.telemetry import StatusReporter, SyncStats, TelemetrySender, build_report
from edgerec.device.transport.base import PayloadTransport
from edgerec.device.transport.fetcher import PayloadFetcher
from edgerec.device.transport.grpc import ServerPool
from edgerec.device.transport.http import HttpClient
from edgerec.errors import EdgerecError, InvalidInputError, NoModelAvailableError, NoTrustedKeysError
from edgerec.tokens import device_id_of
from edgerec.trust import UpdateVerifier
from edgerec.v1 import telemetry_pb2

log = logging.getLogger(__name__)

# Fallback reasons that are the local model failing (not the device lacking one, or a hedge won by the server).
_LOCAL_ERRORS = (
    FallbackReason.LOAD_FAILED,
    FallbackReason.LOCAL_ERROR,
    FallbackReason.NON_FINITE,
    FallbackReason.LOCAL_DEADLINE,
)

NO_TRUSTED_KEYS = (
    "no trusted keys: refusing to sync updates nobody can verify. Pass the server's public key "
    "(EdgeClient(trusted_keys=['server.pub']), edgerec sync --trusted-key server.pub), "
    "or opt out explicitly with EdgeClient(insecure=True) (edgerec sync --insecure-skip-verify)"
)


class EdgeClient:
    """A device's handle on one model: ``sync()`` updates, ``predict()`` answers, status reports go back.

    Made from an :class:`EdgeConfig`, or from the keywords of :meth:`EdgeConfig.build`::

        client = EdgeClient(EdgeConfig(model="ctr", data_dir=Path("/var/lib/edgerec"), servers=("srv:50051",),
                                       trust=TrustConfig((Path("/etc/edgerec/server.pub"),))))
        client = EdgeClient("srv:50051", "ctr", "/var/lib/edgerec", trusted_keys=["/etc/edgerec/server.pub"])
        client.sync()
        client.predict({"dense_features": dense, "sparse_ids": ids}).scores

    Sync verifies every update by the trusted keys; without keys it refuses (NoTrustedKeysError)
    unless ``insecure=True`` opts out of verification explicitly. ``observer`` hears every sync
    phase and prediction (:class:`~edgerec.device.observer.Observer`); ``payload_transports`` are
    sources of payload bytes tried before the plan's URLs and the servers
    (:class:`~edgerec.device.transport.base.PayloadTransport`).
    """

    @overload
    def __init__(
        self,
        server: EdgeConfig,
        /,
        *,
        observer: Observer | None = None,
        payload_transports: Sequence[PayloadTransport] = (),
    ) -> None: ...

    @overload
    def __init__(
        self,
        server: str | Sequence[str] | None,
        model: str,
        data_dir: Path | str,
        *,
        observer: Observer | None = None,
        payload_transports: Sequence[PayloadTransport] = (),
        **settings: Any,
    ) -> None: ...

    def __init__(
        self,
        server: EdgeConfig | str | Sequence[str] | None,
        model: str | None = None,
        data_dir: Path | str | None = None,
        *,
        observer: Observer | None = None,
        payload_transports: Sequence[PayloadTransport] = (),
        **settings: Any,
    ) -> None:
        if isinstance(server, EdgeConfig):
            if model is not None or data_dir is not None or settings:
                raise TypeError("pass an EdgeConfig alone, or server, model and data_dir with keywords")
            config = server
        else:
            if model is None or data_dir is None:
                raise TypeError("EdgeClient needs server, model and data_dir (or an EdgeConfig)")
            config = EdgeConfig.build(server, model, data_dir, **settings)
        self.config = config
        self.model = config.model
        self.observer = observer
        self.store = ModelStore(config.data_dir, config.model)
        # A token is "<device_id>.<secret>": the id in front names the device when none is given.
        self.device_id = config.device_id or device_id_of(config.token) or stable_device_id(config.data_dir)
        # How sync verifies updates; None: no keys and no opt-out, so sync refuses.
        self.verifier: UpdateVerifier | None = config.trust.verifier(config.model)
        self.servers = (
            ServerPool.connect(config.servers, config.transport, tls_ca=config.tls_ca, token=config.token)
            if config.servers
            else None
        )
        self.sync_stats = SyncStats()
        self._telemetry: TelemetrySender | None = None
        self._reporter: StatusReporter | None = None
        self._syncer: Syncer | None = None
        self._fetcher: PayloadFetcher | None = None
        self._payload_transports = list(payload_transports)
        self.cache = PredictionCache(config.cache.entries, ttl_s=config.cache.ttl_s, max_bytes=config.cache.max_bytes)
        self.counters = PredictCounters()
        self.outcomes = OutcomeLedger(self.store.root)
        self.active = ActiveModel(
            self.store,
            threads=config.threads,
            ort_cache_dir=config.data_dir / ORT_CACHE_DIR if config.optimized_model_cache else None,
            rollback_after=config.fallback.local_failure_threshold,
        )
        self.scorer = (
            ServerScorer(config.model, self.servers, policy=config.fallback, cache=self.cache, counters=self.counters)
            if self.servers is not None
            else None
        )
        self.predictor = Predictor(
            self.active,
            self.scorer,
            policy=config.fallback,
            cache=self.cache,
            counters=self.counters,
            cache_rows=config.cache.rows,
            observer=observer,
        )
        self._offline_breaker = CircuitBreaker("server", 1, 0.0)
        # The predictor's own method, bound here: a prediction pays no call through the facade.
        self.predict = self.predictor.predict  # type: ignore[method-assign]

    def close(self) -> None:
        self.outcomes.save()
        if self._reporter is not None:
            self._reporter.stop()
        if self._telemetry is not None:
            self._telemetry.close()
        self.predictor.close()
        if self._fetcher is not None:
            self._fetcher.close()
        if self.servers is not None:
            self.servers.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the parts, for those who look inside --------------------------------------------------

    @property
    def policy(self) -> FallbackPolicy:
        return self.config.fallback

    @property
    def local_breaker(self) -> CircuitBreaker:
        return self.predictor.local_breaker

    @property
    def server_breaker(self) -> CircuitBreaker:
        """The server's breaker (an offline client has one that never sees a call)."""
        if self.scorer is None:
            return self._offline_breaker
        return self.scorer.breaker

    @property
    def rollbacks(self) -> list[tuple[int, int]]:
        """(from version, to version) of every rollback this client made, oldest first."""
        return self.active.rollbacks

    # --- updates -------------------------------------------------------------------------------

    def sync(self, target_version: int = 0, progress: FileProgress | None = None) -> SyncResult:
        """Install the server's latest (or ``target_version``) if newer; the old version is kept.

        ``progress`` hears (file, bytes so far, payload size) as payload bytes arrive.
        """
        try:
            syncer = self._sync_part()
        except EdgerecError as exc:
            self.sync_stats.record(None, exc)
            notify_sync(self.observer, SyncEvent(SyncPhase.FAILED, self.model, detail=f"{type(exc).__name__}: {exc}"))
            raise
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
            self.active.prune_ort_cache()
        return result

    def _sync_part(self) -> Syncer:
        """The Syncer (made on first use); NoModelAvailableError without a server, NoTrustedKeysError without trust."""
        if self.servers is None:
            raise NoModelAvailableError("no server configured; cannot sync")
        if self.verifier is None:
            raise NoTrustedKeysError(NO_TRUSTED_KEYS)
        if self._syncer is None:
            transport = self.config.transport
            self._fetcher = PayloadFetcher(
                transport,
                servers=self.servers.payload_transports,
                transports=self._payload_transports,
                http=HttpClient(transport),
            )
            self._syncer = Syncer(
                self.store,
                self.servers,
                verifier=self.verifier,
                recipes=self.config.recipes,
                codecs=self.config.codecs,
                device_id=self.device_id,
                max_payload_bytes=self.config.max_payload_bytes,
                fetcher=self._fetcher,
                observer=self.observer,
            )
        return self._syncer

    @property
    def held_back_version(self) -> int | None:
        """The version this device rolled back from and does not install again until :meth:`clear_rollback`."""
        return self.active.held_back_version

    def clear_rollback(self) -> int | None:
        """Let the next sync install again the version a rollback held back; returns that version (None: none held).

        For an operator who fixed what made it fail here (or wants it tried again). A newer
        version ends the hold by itself.
        """
        return self.active.clear_rollback()

    @property
    def verification(self) -> str:
        """How sync verifies updates: "ed25519" (trusted keys), "off" (insecure=True) or "unconfigured" (refuses)."""
        return self.verifier.verification if self.verifier is not None else UNCONFIGURED

    @property
    def active_version(self) -> int | None:
        """The installed active version, or None (also when a crash left it unreadable)."""
        return self.active.active_version

    def reload(self) -> None:
        """Forget the loaded model so the next predict loads and verifies it again."""
        self.active.reload()

    # --- predictions ---------------------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Scores from the cache, the local model, or (when that is unusable or slow) the server.

        Answers or raises a typed error within ``policy.deadline_s`` (see :class:`FallbackPolicy`).
        :class:`InvalidInputError` when the request is wrong: inputs that do not match the model's
        signature, or values the model refuses (an id outside an embedding table). Such a request
        goes to neither the server nor the breakers, and never counts toward a rollback.
        """
        return self.predictor.predict(inputs)  # replaced in __init__ by the predictor's bound method

    def record_feedback(
        self, prediction: Prediction, clicked: Sequence[int], shown: Sequence[int] | None = None
    ) -> bool:
        """Say what became of a prediction's items: the app showed rows ``shown`` of it (default: every row)
        and the user clicked rows ``clicked`` (a subset of ``shown``), as row indices of ``prediction.scores``.

        Only sums per model version are kept (impressions, clicks, the shown rows' scores) and reported;
        nothing of the request leaves the device. Counts only predictions the device's own model made
        (source "local" or "cache"); returns False for any other. InvalidInputError for an index out of
        range, repeated, or clicked but not shown.
        """
        if prediction.source not in (Source.LOCAL, Source.CACHE) or prediction.version < 1:
            return False
        scores = np.asarray(prediction.scores, dtype=np.float64)
        rows = scores.reshape(scores.shape[0], -1)[:, 0] if scores.ndim else scores.reshape(1)
        shown_rows = list(range(len(rows))) if shown is None else [int(i) for i in shown]
        clicked_rows = {int(i) for i in clicked}
        if len(set(shown_rows)) != len(shown_rows) or not all(0 <= i < len(rows) for i in shown_rows):
            raise InvalidInputError(f"shown must be distinct row indices below {len(rows)}")
        if len(clicked_rows) != len(clicked) or not clicked_rows <= set(shown_rows):
            raise InvalidInputError("clicked must be distinct row indices among the shown ones")
        picked = np.clip(np.nan_to_num(rows[shown_rows], nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        self.outcomes.record(
            prediction.version, impressions=len(shown_rows), clicks=len(clicked_rows), score_sum=float(picked.sum())
        )
        return True

    # --- status reports ------------------------------------------------------------------------

    def runtime_info(self) -> dict[str, str]:
        """What predict runs: the loaded artifact's ``describe()`` (recipe, runtime, model files, batch sizes,
        optimized-model cache) and its version; loads the active version if needed. Without a usable local
        model: ``runtime`` is empty and ``error`` says why. ``verification`` is how sync verifies updates.
        """
        local, failure = self.active.current()
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
        local = self.active.loaded
        # The recipe of the artifact loaded for that version (a tflite_* recipe runs on LiteRT), else the installed one.
        recipe = (
            ""
            if current is None
            else local.loaded.recipe
            if local and local.version == current.version
            else current.recipe
        )
        active_version = current.version if current else 0
        self.outcomes.credit(active_version, self._counter_snapshot())
        self.outcomes.save()
        return build_report(
            device_id=self.device_id,
            model=self.model,
            active_version=current.version if current else 0,
            recipe=recipe,
            counters=self.counters,
            sync=self.sync_stats.snapshot(),
            rollbacks=list(self.rollbacks),
            held_back_version=self.held_back_version or 0,
            outcomes=self.outcomes.outcomes(),
        )

    def _counter_snapshot(self) -> CounterSnapshot:
        by_source, by_reason = self.counters.by_source, self.counters.by_reason
        return CounterSnapshot(
            predictions=sum(by_source.values()),
            local_errors=sum(by_reason.get(r.value, 0) for r in _LOCAL_ERRORS),
            fallbacks=by_source.get(Source.SERVER.value, 0) + by_source.get(Source.DEFAULT.value, 0),
            p99_s=self.counters.latency_percentiles((0.99,)).get(0.99, 0.0),
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
        if self.servers is None:
            raise NoModelAvailableError("no server configured; cannot report status")
        if self._telemetry is None:
            self._telemetry = TelemetrySender(
                self.servers.preferred.target, tls_ca=self.config.tls_ca, token=self.config.token
            )
        return self._telemetry
