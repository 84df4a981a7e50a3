"""The Telemetry gRPC service: keeps each device's latest status report, bounded, for metrics and operators."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import grpc

from edgerec import grpc_status
from edgerec.errors import InvalidInputError
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)

# Map entries (sources, reasons) and rollbacks one report may carry; strings longer than this are refused.
MAX_REPORT_ENTRIES = 64
MAX_REPORT_STRING = 1024


class TelemetryService(telemetry_pb2_grpc.TelemetryServicer):
    """Stores the latest report per (device, model); the least recently reporting device goes past ``max_devices``."""

    def __init__(self, max_devices: int = 10_000) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        self.max_devices = max_devices
        self._reports: OrderedDict[tuple[str, str], telemetry_pb2.StatusReport] = OrderedDict()
        self._lock = threading.Lock()
        self.received = 0
        self.evicted = 0

    def ReportStatus(
        self, request: telemetry_pb2.StatusReport, context: grpc.ServicerContext
    ) -> telemetry_pb2.StatusAck:
        try:
            self.store(request)
        except InvalidInputError as exc:
            log.info("status report refused: %s", exc)
            grpc_status.abort(context, exc)
            raise AssertionError("unreachable") from exc
        return telemetry_pb2.StatusAck(received_unix_s=time.time())

    def store(self, report: telemetry_pb2.StatusReport) -> None:
        """Check and keep ``report`` as its device's latest; InvalidInputError when it is malformed or too big."""
        _check(report)
        key = (report.device_id, report.model)
        kept = telemetry_pb2.StatusReport()
        kept.CopyFrom(report)
        with self._lock:
            self._reports.pop(key, None)
            self._reports[key] = kept
            self.received += 1
            while len(self._reports) > self.max_devices:
                self._reports.popitem(last=False)
                self.evicted += 1

    def latest(self, device_id: str, model: str) -> telemetry_pb2.StatusReport | None:
        """The device's last report for ``model`` (a copy), or None."""
        with self._lock:
            report = self._reports.get((device_id, model))
        if report is None:
            return None
        copy = telemetry_pb2.StatusReport()
        copy.CopyFrom(report)
        return copy

    def reports(self) -> list[telemetry_pb2.StatusReport]:
        """Every kept report, least recently received first (the stored objects: do not modify)."""
        with self._lock:
            return list(self._reports.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)


def _check(report: telemetry_pb2.StatusReport) -> None:
    if not report.device_id or not report.model:
        raise InvalidInputError("a status report needs device_id and model")
    sizes = (len(report.predictions_by_source), len(report.fallbacks_by_reason), len(report.rollbacks))
    if max(sizes) > MAX_REPORT_ENTRIES:
        raise InvalidInputError(f"a status report carries at most {MAX_REPORT_ENTRIES} entries per list or map")
    strings = [report.device_id, report.model, report.recipe, report.sync.last_error]
    strings += list(report.predictions_by_source) + list(report.fallbacks_by_reason)
    if any(len(s) > MAX_REPORT_STRING for s in strings):
        raise InvalidInputError(f"status report strings are at most {MAX_REPORT_STRING} characters")
