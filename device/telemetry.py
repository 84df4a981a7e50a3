"""Device status reports: what the device runs, where its answers came from, how its syncs went.

:func:`build_report` turns a client's counters into a ``StatusReport``; :class:`TelemetrySender`
sends one over its own channel (``Telemetry.ReportStatus``); :class:`StatusReporter` sends one
every ``interval_s`` on a daemon thread. Reporting never touches the predict path beyond reading
counters, holds nothing but the next snapshot (built when it is sent, so nothing queues up while
the server is away), bounds every send by a timeout, and logs failures instead of raising them.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from edgerec.device.feedback import VersionOutcome
from edgerec.device.policy import PredictCounters
from edgerec.device.sync import SyncResult
from edgerec.device.transport.channel import make_channel
from edgerec.errors import EdgerecError
from edgerec.grpc_status import error_from_rpc
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)

# Longest error text a report carries (the server refuses nothing for it, but keeps reports small).
MAX_ERROR_CHARS = 512
# Versions whose outcomes one report carries (the server refuses more).
MAX_OUTCOMES = 8


@dataclass(frozen=True)
class SyncOutcomes:
    """Counts of sync outcomes since the client started, and the last error."""

    updated: int = 0
    up_to_date: int = 0
    failed: int = 0
    last_error: str = ""
    last_attempt_unix_s: float = 0.0
    held_back: int = 0


class SyncStats:
    """Thread-safe tally of what ``EdgeClient.sync`` calls did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes = SyncOutcomes()

    def record(self, result: SyncResult | None, error: BaseException | None = None) -> None:
        """One sync: its result, or the error it raised."""
        with self._lock:
            o = self._outcomes
            now = time.time()
            if error is not None:
                text = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
                self._outcomes = dataclasses.replace(o, failed=o.failed + 1, last_error=text, last_attempt_unix_s=now)
            elif result is not None and result.updated:
                self._outcomes = dataclasses.replace(o, updated=o.updated + 1, last_attempt_unix_s=now)
            elif result is not None and result.held_back_version is not None:
                self._outcomes = dataclasses.replace(o, held_back=o.held_back + 1, last_attempt_unix_s=now)
            else:
                self._outcomes = dataclasses.replace(o, up_to_date=o.up_to_date + 1, last_attempt_unix_s=now)

    def snapshot(self) -> SyncOutcomes:
        with self._lock:
            return self._outcomes


def build_report(
    *,
    device_id: str,
    model: str,
    active_version: int,
    recipe: str,
    counters: PredictCounters,
    sync: SyncOutcomes,
    rollbacks: Sequence[tuple[int, int]],
    held_back_version: int = 0,
    outcomes: Sequence[VersionOutcome] = (),
) -> telemetry_pb2.StatusReport:
    """A StatusReport from a client's state (counters are cumulative since the client started).

    ``held_back_version`` is the version the device rolled back from and holds back (0: none);
    ``outcomes`` the per-version sums, most recently updated first (the first MAX_OUTCOMES are sent).
    """
    percentiles = counters.latency_percentiles((0.5, 0.9, 0.99))
    report = telemetry_pb2.StatusReport(
        device_id=device_id,
        model=model,
        active_version=active_version,
        recipe=recipe,
        predictions_by_source=counters.by_source,
        fallbacks_by_reason=counters.by_reason,
        errors=counters.errors,
        rejected_requests=counters.rejected,
        server_failures=counters.server_failures,
        latency=telemetry_pb2.LatencyPercentiles(
            p50_s=percentiles.get(0.5, 0.0),
            p90_s=percentiles.get(0.9, 0.0),
            p99_s=percentiles.get(0.99, 0.0),
            count=counters.latency_count,
        ),
        sync=telemetry_pb2.SyncOutcomes(
            updated=sync.updated,
            up_to_date=sync.up_to_date,
            failed=sync.failed,
            last_error=sync.last_error,
            last_attempt_unix_s=sync.last_attempt_unix_s,
            held_back=sync.held_back,
        ),
        rollbacks=[telemetry_pb2.Rollback(from_version=a, to_version=b) for a, b in rollbacks[-64:]],
        created_unix_s=time.time(),
        held_back_version=held_back_version,
        outcomes=[
            telemetry_pb2.VersionOutcomes(
                version=o.version,
                predictions=o.predictions,
                local_errors=o.local_errors,
                fallbacks=o.fallbacks,
                latency=telemetry_pb2.LatencyPercentiles(p99_s=o.p99_s),
                impressions=o.impressions,
                clicks=o.clicks,
                score_sum=o.score_sum,
                active_since_unix_s=o.active_since_unix_s,
            )
            for o in outcomes[:MAX_OUTCOMES]
        ],
    )
    return report


class TelemetrySender:
    """Sends reports to ``Telemetry.ReportStatus`` on a channel of its own (predict traffic never waits on it)."""

    def __init__(self, target: str, *, tls_ca: Path | None = None, token: str | None = None) -> None:
        self.target = target
        self._channel = make_channel(target, tls_ca=tls_ca, token=token)
        self._stub = telemetry_pb2_grpc.TelemetryStub(self._channel)  # type: ignore[no-untyped-call]

    def send(self, report: telemetry_pb2.StatusReport, timeout_s: float = 2.0) -> telemetry_pb2.StatusAck:
        """One report; a typed EdgerecError when the server refuses it or cannot be reached in ``timeout_s``."""
        try:
            ack: telemetry_pb2.StatusAck = self._stub.ReportStatus(report, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"ReportStatus {report.model}") from exc
        return ack

    def close(self) -> None:
        self._channel.close()


class StatusReporter:
    """Sends ``make_report()`` every ``interval_s`` (with +-``jitter`` spread) on a daemon thread until stopped.

    One report is in flight at a time, each bounded by ``timeout_s``; a failed send is logged and
    counted, and the next one goes at the next tick (reports are snapshots: nothing is re-sent).
    """

    def __init__(
        self,
        make_report: Callable[[], telemetry_pb2.StatusReport],
        send: Callable[[telemetry_pb2.StatusReport, float], telemetry_pb2.StatusAck],
        *,
        interval_s: float = 60.0,
        timeout_s: float = 2.0,
        jitter: float = 0.1,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or not 0 <= jitter < 1:
            raise ValueError("need interval_s > 0, timeout_s > 0 and 0 <= jitter < 1")
        self._make_report = make_report
        self._send = send
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.jitter = jitter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def start(self) -> StatusReporter:
        """Start the background thread (idempotent); the first report goes after one interval."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edgerec-telemetry", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop after the send in flight, if any (waits at most ``timeout_s``; default: the send timeout)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout_s + 1.0 if timeout_s is None else timeout_s)

    def report_now(self) -> bool:
        """Build and send one report on the calling thread; True when the server acknowledged it."""
        try:
            self._send(self._make_report(), self.timeout_s)
        except (EdgerecError, grpc.RpcError, ValueError) as exc:
            with self._lock:
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("status report failed: %s", exc)
            return False
        with self._lock:
            self.sent += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s * (1 + random.uniform(-self.jitter, self.jitter))):
            try:
                self.report_now()
            except Exception:  # a reporter bug must not kill the thread silently; predict never sees it
                log.exception("status reporter failed to build or send a report")
