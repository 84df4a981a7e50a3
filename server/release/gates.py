"""Health and recommendation-quality gates of one rollout wave: the new version's devices against a
control cohort still on the previous version.

(Interface only, filled in by the gates work: ``evaluate_wave`` raises until then.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgerec.server.release.records import DeviceRecord

__all__ = ["GateReport", "GateThresholds", "Verdict", "evaluate_wave"]

Verdict = Literal["pass", "wait", "fail"]


@dataclass(frozen=True)
class GateThresholds:
    """When a wave passes, waits or fails (defaults are what a rollout uses unless told otherwise)."""


@dataclass(frozen=True)
class GateReport:
    """A wave's verdict, why, and the numbers behind it (flat and JSON-ready, e.g. ``"ctr.p_value"``)."""

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    numbers: dict[str, float] = field(default_factory=dict)


def evaluate_wave(
    *,
    version: int,
    baseline_version: int,
    treatment: Sequence[DeviceRecord],
    control: Sequence[DeviceRecord],
    wave_started_unix_s: float,
    now_unix_s: float,
    thresholds: GateThresholds,
) -> GateReport:
    """The verdict on ``version`` for a wave: ``treatment`` devices were offered it, ``control`` stay on
    ``baseline_version``. "fail" when an error condition trips, "pass" when the success condition
    holds, "wait" while samples are too few."""
    raise NotImplementedError("rollout gates are not built yet")
