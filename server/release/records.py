"""What the server knows of each device, as the release policy and its gates read it.

Two events feed it: a device's CheckUpdate (what it was offered, and the channel and labels it
sent) and its status report (what it runs and how each version did). Replicas record what they see
and share it through the registry; :class:`FleetSource` merges their records per device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgerec.v1 import telemetry_pb2, update_pb2

__all__ = ["DeviceRecord", "FleetObserver", "FleetSource", "VersionRecord"]


@dataclass(frozen=True)
class VersionRecord:
    """One version's counts on one device, as its latest report gave them (cumulative on the device)."""

    version: int
    predictions: int = 0
    local_errors: int = 0
    fallbacks: int = 0
    p99_s: float = 0.0
    impressions: int = 0
    clicks: int = 0
    score_sum: float = 0.0
    active_since_unix_s: float = 0.0


@dataclass(frozen=True)
class DeviceRecord:
    """One device of one model: what it was last offered and what it last reported.

    Times are the server's clock (when a replica saw the event), never the device's.
    """

    device_id: str
    model: str
    channel: str = "stable"
    labels: Mapping[str, str] = field(default_factory=dict)
    runtimes: tuple[str, ...] = ()
    app_version: str = ""
    # When the attributes above were last given (by a CheckUpdate or a status report).
    attributes_unix_s: float = 0.0
    # From CheckUpdate: the version the device runs as it said, the version it was offered, and when.
    current_version: int = 0
    offered_version: int = 0
    # When the device was first offered ``offered_version`` (the answers since all offered it): a gate
    # counts a device silent when it has not reported on that version some time after this.
    offered_since_unix_s: float = 0.0
    last_check_unix_s: float = 0.0
    first_seen_unix_s: float = 0.0
    # From its latest status report (0.0: none yet).
    last_report_unix_s: float = 0.0
    active_version: int = 0
    held_back_version: int = 0
    install_failures: tuple[tuple[int, str], ...] = ()
    rollbacks_from: tuple[int, ...] = ()
    versions: tuple[VersionRecord, ...] = ()

    def version(self, version: int) -> VersionRecord | None:
        """This device's counts for ``version``, if it reported any."""
        return next((v for v in self.versions if v.version == version), None)


class FleetObserver(Protocol):
    """Receives what a replica sees of devices; must be cheap (it runs on the request path)."""

    def checked(self, request: update_pb2.CheckUpdateRequest, offered_version: int, now_unix_s: float) -> None:
        """A CheckUpdate answered with ``offered_version`` (the version the device should run)."""
        ...

    def reported(self, report: telemetry_pb2.StatusReport, now_unix_s: float) -> None:
        """A status report accepted by the Telemetry service."""
        ...


class FleetSource(Protocol):
    """The fleet as every replica recorded it (what gates and the fleet view read)."""

    def devices(self, model: str) -> Sequence[DeviceRecord]:
        """Every known device of ``model``, one record each (the newest of what replicas saw)."""
        ...
