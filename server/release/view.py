"""What an operator sees of a model's rollouts: each rollout, its waves, devices per wave, gate numbers.

One JSON-ready shape for ``edgerec rollout status --json`` and the read-only ``/rollouts`` page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgerec.server.release import cohorts
from edgerec.server.release.controller import attributes_of, split_cohorts
from edgerec.server.release.decide import targets
from edgerec.server.release.policy import ReleasePolicy, Rollout, revert_json, rollout_json
from edgerec.server.release.records import DeviceRecord

__all__ = ["policy_view", "rollout_view"]


def rollout_view(rollout: Rollout, devices: Sequence[DeviceRecord]) -> dict[str, Any]:
    """``rollout`` as stored, plus per wave: its share, the targeted devices whose cohort falls in it,
    and its latest gate verdict; and the current wave's treatment and control sizes."""
    view = rollout_json(rollout)
    targeted = [d for d in devices if targets(rollout, attributes_of(d))]
    buckets = [cohorts.bucket(rollout.seed, d.device_id) for d in targeted]
    waves = []
    low = 0
    for index, percent in enumerate(rollout.waves):
        high = round(percent * cohorts.BUCKETS / 100)
        gate = rollout.gate(index)
        waves.append(
            {
                "wave": index + 1,
                "percent": percent,
                "devices": sum(1 for b in buckets if low <= b < high),
                "on_version": sum(
                    1
                    for d, b in zip(targeted, buckets, strict=True)
                    if low <= b < high and d.current_version == rollout.version
                ),
                "status": _wave_status(rollout, index),
                "verdict": gate.verdict if gate is not None else None,
            }
        )
        low = high
    current = split_cohorts(rollout, devices)
    view.update(
        {
            "model_devices": len(devices),
            "targeted_devices": len(targeted),
            "current_wave": rollout.wave_index + 1,
            "percent": rollout.percent,
            "treatment_devices": len(current.treatment),
            "control_devices": len(current.control),
            "wave_table": waves,
        }
    )
    return view


def _wave_status(rollout: Rollout, index: int) -> str:
    if index < rollout.wave_index or (index == rollout.wave_index and rollout.state == "completed"):
        return "passed"
    if index == rollout.wave_index:
        return rollout.state
    return "pending"


def policy_view(policy: ReleasePolicy, devices: Sequence[DeviceRecord]) -> dict[str, Any]:
    """A model's channels, pins and rollouts (newest first), each rollout with its waves' devices."""
    return {
        "model": policy.model,
        "channels": dict(sorted(policy.channels.items())),
        "device_pins": len(policy.device_pins),
        "label_pins": [{"where": p.where, "version": p.version} for p in policy.label_pins],
        "reverts": [revert_json(r) for r in policy.reverts],
        "rollouts": [rollout_view(r, devices) for r in reversed(policy.rollouts)],
    }
