"""The fleet as an operator reads it: one row per device, and devices grouped by version and channel,
with the wave of the model's active rollout each device falls in. JSON-ready, consistent types:
counts are ints, rates and times floats, and null where there is nothing to divide or no rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgerec.server.release import cohorts
from edgerec.server.release.decide import Device, targets
from edgerec.server.release.policy import ReleasePolicy, Rollout
from edgerec.server.release.records import DeviceRecord

__all__ = ["active_rollout", "device_rows", "device_wave", "status_groups"]


def active_rollout(policy: ReleasePolicy | None) -> Rollout | None:
    """The model's most recently started rollout that still moves, if any."""
    if policy is None:
        return None
    running = [r for r in policy.rollouts if r.active]
    return max(running, key=lambda r: r.started_unix_s) if running else None


def device_wave(rollout: Rollout | None, record: DeviceRecord) -> int | None:
    """The 1-based wave of ``rollout`` the device falls in (None: no rollout, or not targeted by it)."""
    if rollout is None:
        return None
    device = Device(
        device_id=record.device_id,
        channel=record.channel,
        current_version=record.current_version,
        runtimes=record.runtimes,
        app_version=record.app_version,
        labels=record.labels,
    )
    if not targets(rollout, device.attributes()):
        return None
    for index, percent in enumerate(rollout.waves):
        if cohorts.in_wave(rollout.seed, record.device_id, percent):
            return index + 1
    return None


@dataclass
class _Sums:
    predictions: int = 0
    fallbacks: int = 0
    local_errors: int = 0
    impressions: int = 0
    clicks: int = 0

    def add(self, record: DeviceRecord) -> None:
        counts = record.version(record.active_version)
        if counts is not None:
            self.predictions += counts.predictions
            self.fallbacks += counts.fallbacks
            self.local_errors += counts.local_errors
            self.impressions += counts.impressions
            self.clicks += counts.clicks

    def rates(self) -> dict[str, Any]:
        p, i = self.predictions, self.impressions
        return {
            "predictions": p,
            "fallback_rate": self.fallbacks / p if p else None,
            "local_error_rate": self.local_errors / p if p else None,
            "impressions": i,
            "clicks": self.clicks,
            "ctr": self.clicks / i if i else None,
        }


def _last_seen(record: DeviceRecord) -> float:
    return max(record.last_check_unix_s, record.last_report_unix_s)


def device_rows(records: Sequence[DeviceRecord], rollout: Rollout | None) -> list[dict[str, Any]]:
    """One JSON-ready row per device, most recently seen first."""
    rows = []
    for record in sorted(records, key=lambda r: (-_last_seen(r), r.device_id)):
        sums = _Sums()
        sums.add(record)
        rows.append(
            {
                "device_id": record.device_id,
                "channel": record.channel,
                "version": record.active_version or None,
                "offered_version": record.offered_version or None,
                "wave": device_wave(rollout, record),
                "last_seen_unix_s": _last_seen(record),
                "last_report_unix_s": record.last_report_unix_s or None,
                "app_version": record.app_version,
                "labels": dict(record.labels),
                "install_failures": len(record.install_failures),
                "rollbacks": len(record.rollbacks_from),
                **sums.rates(),
            }
        )
    return rows


def status_groups(records: Sequence[DeviceRecord], rollout: Rollout | None) -> list[dict[str, Any]]:
    """Devices grouped by (running version, channel, wave): counts, last seen, and their rates."""
    groups: dict[tuple[int, str, int], tuple[list[DeviceRecord], _Sums]] = {}
    for record in records:
        wave = device_wave(rollout, record)
        key = (record.active_version, record.channel, wave or 0)
        members, sums = groups.setdefault(key, ([], _Sums()))
        members.append(record)
        sums.add(record)
    out = []
    for (version, channel, wave), (members, sums) in sorted(groups.items()):
        out.append(
            {
                "version": version or None,
                "channel": channel,
                "wave": wave or None,
                "devices": len(members),
                "offered_other": sum(1 for m in members if m.offered_version and m.offered_version != version),
                "last_seen_unix_s": max(_last_seen(m) for m in members),
                **sums.rates(),
            }
        )
    return out
