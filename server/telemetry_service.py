"""The Telemetry gRPC service: keeps each device's latest status report, bounded, for metrics and operators.

Every report comes from a caller the server cannot vouch for, so what is kept is bounded three ways:
a report's size (``max_report_bytes``, also enforced on the raw message, see ``message_limits``), the
number of (device, model) reports and their total bytes (the least recently reporting go first). Only
reports for published models are kept, and their sources and reasons are folded into the names the
device SDK defines ("other" for any else): a report never adds a name of its own to what is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

import grpc

from edgerec import grpc_status
from edgerec.attributes import validate_app_version, validate_channel, validate_labels
from edgerec.device.policy import FallbackReason, Source
from edgerec.errors import EdgerecError, InvalidInputError, ModelNotFoundError, ResourceLimitError
from edgerec.registry import ModelRegistry
from edgerec.server.release.records import FleetObserver
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)

# A device's report is a few hundred bytes; 8 KiB leaves room for a long device id and last error.
DEFAULT_MAX_REPORT_BYTES = 8 * 1024
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
# Rollbacks one report may carry (the device SDK sends its last 64).
MAX_ROLLBACKS = 64
# Runtimes, per-version outcomes and install failures one report may carry (the protocol's bounds).
MAX_RUNTIMES = 8
MAX_OUTCOMES = 8
MAX_INSTALL_FAILURES = 16
# What a source or reason outside the SDK's names is counted as.
OTHER = "other"
SOURCES = frozenset(s.value for s in Source)
REASONS = frozenset(r.value for r in FallbackReason)
# How long the list of published models is trusted before the registry is asked again.
MODELS_TTL_S = 1.0
# Bytes a kept report costs beside its serialized form: its key, the dict entry, the objects' headers.
ENTRY_OVERHEAD = 256


class TelemetryService(telemetry_pb2_grpc.TelemetryServicer):
    """Stores the latest report per (device, model) of published models, within ``max_devices`` reports
    and ``max_bytes`` bytes; each report at most ``max_report_bytes``. ``observer`` is told of every
    report kept."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_devices: int = 10_000,
        *,
        max_report_bytes: int = DEFAULT_MAX_REPORT_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        observer: FleetObserver | None = None,
    ) -> None:
        if max_devices < 1 or max_report_bytes < 1 or max_bytes < max_report_bytes:
            raise ValueError(
                f"need max_devices >= 1 and 1 <= max_report_bytes <= max_bytes, "
                f"got {max_devices}, {max_report_bytes}, {max_bytes}"
            )
        self.registry = registry
        self.observer = observer
        self.max_devices = max_devices
        self.max_report_bytes = max_report_bytes
        self.max_bytes = max_bytes
        # (device, model) -> the report, serialized: what it costs is then what it counts for (a parsed
        # message holds far more, and keeps the memory of what it was copied from).
        self._reports: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._models: tuple[float, frozenset[str]] = (-float("inf"), frozenset())
        self.received = 0
        self.evicted = 0

    def ReportStatus(
        self, request: telemetry_pb2.StatusReport, context: grpc.ServicerContext
    ) -> telemetry_pb2.StatusAck:
        try:
            self.store(request)
        except EdgerecError as exc:
            log.info("status report refused: %s", exc)
            grpc_status.abort(context, exc)
        return telemetry_pb2.StatusAck(received_unix_s=time.time())

    def store(self, report: telemetry_pb2.StatusReport) -> None:
        """Check and keep ``report`` as its device's latest: InvalidInputError when malformed,
        ResourceLimitError when too big, ModelNotFoundError for a model that is not published."""
        size = report.ByteSize()
        if size > self.max_report_bytes:
            raise ResourceLimitError(f"a {size}-byte status report; the server takes at most {self.max_report_bytes}")
        if not report.device_id or not report.model:
            raise InvalidInputError("a status report needs device_id and model")
        if len(report.rollbacks) > MAX_ROLLBACKS:
            raise InvalidInputError(f"a status report carries at most {MAX_ROLLBACKS} rollbacks")
        _check_attributes(report)
        if report.model not in self.published_models():
            raise ModelNotFoundError(f"no model named {report.model[:64]!r} is published")
        kept = _folded(report).SerializeToString()
        key = (report.device_id, report.model)
        with self._lock:
            old = self._reports.pop(key, None)
            if old is not None:
                self._bytes -= _cost(key, old)
            self._reports[key] = kept
            self._bytes += _cost(key, kept)
            self.received += 1
            while len(self._reports) > self.max_devices or self._bytes > self.max_bytes:
                gone, freed = self._reports.popitem(last=False)
                self._bytes -= _cost(gone, freed)
                self.evicted += 1
        if self.observer is not None:
            try:
                self.observer.reported(report, time.time())
            except Exception:  # the fleet records must never cost a device its report
                log.exception("fleet observer failed on a status report of %s", report.model)

    def published_models(self) -> frozenset[str]:
        """The registry's models, asked again at most every MODELS_TTL_S (reports come from many devices)."""
        now = time.monotonic()
        checked, models = self._models
        if now - checked >= MODELS_TTL_S:
            models = frozenset(self.registry.models())
            self._models = (now, models)
        return models

    def latest(self, device_id: str, model: str) -> telemetry_pb2.StatusReport | None:
        """The device's last report for ``model`` as kept (a copy), or None."""
        with self._lock:
            kept = self._reports.get((device_id, model))
        return None if kept is None else telemetry_pb2.StatusReport.FromString(kept)

    def reports(self) -> list[telemetry_pb2.StatusReport]:
        """Every kept report as kept, least recently received first."""
        return list(self.each_report())

    def each_report(self) -> Iterator[telemetry_pb2.StatusReport]:
        """:meth:`reports` one at a time: only one is parsed at once however many are kept."""
        with self._lock:
            kept = list(self._reports.values())
        for blob in kept:
            yield telemetry_pb2.StatusReport.FromString(blob)

    @property
    def kept_bytes(self) -> int:
        """Bytes the kept reports count for: serialized, with their keys and ENTRY_OVERHEAD each."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)


def _check_attributes(report: telemetry_pb2.StatusReport) -> None:
    """InvalidInputError unless the report's attributes and per-version lists are within the protocol's bounds."""
    validate_channel(report.channel)
    validate_labels(report.labels)
    validate_app_version(report.app_version)
    for what, count, most in (
        ("runtimes", len(report.runtimes), MAX_RUNTIMES),
        ("version outcomes", len(report.outcomes), MAX_OUTCOMES),
        ("install failures", len(report.install_failures), MAX_INSTALL_FAILURES),
    ):
        if count > most:
            raise InvalidInputError(f"a status report carries at most {most} {what}, got {count}")


def _cost(key: tuple[str, str], kept: bytes) -> int:
    return len(kept) + len(key[0]) + len(key[1]) + ENTRY_OVERHEAD


def _folded(report: telemetry_pb2.StatusReport) -> telemetry_pb2.StatusReport:
    """A copy of ``report`` whose sources and reasons are the SDK's names, any other counted as OTHER."""
    kept = telemetry_pb2.StatusReport()
    kept.CopyFrom(report)
    for folded, sent, known in (
        (kept.predictions_by_source, report.predictions_by_source, SOURCES),
        (kept.fallbacks_by_reason, report.fallbacks_by_reason, REASONS),
    ):
        folded.clear()
        for name, count in sent.items():
            label = name if name in known else OTHER
            folded[label] = min(folded[label] + count, 2**64 - 1)
    return kept
