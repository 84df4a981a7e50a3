"""Health and recommendation-quality gates of one rollout wave: the new version's devices against a
control cohort still on the previous version.

Each treatment device (offered the new version) is, at the time of the verdict, one of:

- ``running``: its latest report, made after it was offered the version, says it runs it;
- ``install_failed``: its report lists a failed install of the version and it does not run it;
- ``rolled_back``: it ran the version and rolled back from it (or holds it back);
- ``silent``: none of the above ``silent_after_s`` after it was offered the version (counted failed);
- ``pending``: none of the above yet, within the timeout.

Health gates (each a rate over the decided devices, or a treatment number against the control's)
fail the wave on their own; the quality gate compares click-through with a one-sided test (a
significant drop fails) and calibration (observed over predicted clicks) with a two-sided one.
A gate without enough samples keeps the wave waiting; a fail beats a wait.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edgerec.server.release.records import DeviceRecord, VersionRecord
from edgerec.server.release.stats import proportion_drop_p, rate_ratio_p

__all__ = [
    "OVERRIDABLE",
    "GateReport",
    "GateThresholds",
    "GateValue",
    "Verdict",
    "check_overrides",
    "evaluate_wave",
]

Verdict = Literal["pass", "wait", "fail"]


@dataclass(frozen=True)
class GateThresholds:
    """When a wave passes, waits or fails (defaults are what a rollout uses unless told otherwise).

    Rates are fractions (0.05 is 5%). A treatment number "against control" fails when it exceeds
    ``control * ratio + slack`` (the slack keeps a near-zero control from failing on noise).
    """

    # Decided treatment devices (running or failed) needed before a pass; a wave smaller than this
    # passes once every one of its devices is decided.
    min_devices: int = 10
    # A device offered the version and neither running nor failed this long after is silent (failed).
    silent_after_s: float = 3600.0
    max_install_failure_rate: float = 0.05
    max_rollback_rate: float = 0.05
    max_silent_rate: float = 0.05
    # Predictions per arm before fallback, local error and latency numbers are compared.
    min_predictions: int = 100
    max_fallback_ratio: float = 1.5
    fallback_slack: float = 0.01
    max_local_error_ratio: float = 1.5
    local_error_slack: float = 0.005
    # Ratio of the treatment's median device p99 to the control's.
    max_p99_ratio: float = 1.5
    # Quality: impressions per arm before click-through is compared (the test's minimum sample).
    min_impressions: int = 1000
    # One-sided significance of a click-through drop, and the smallest relative drop that fails.
    ctr_alpha: float = 0.01
    min_ctr_drop: float = 0.01
    # Calibration (observed over predicted clicks): fails when it moves from the control's by more than
    # this factor (log scale) with two-sided significance ``calibration_alpha``; needs min_clicks per arm.
    max_calibration_drift: float = 0.25
    calibration_alpha: float = 0.01
    min_clicks: int = 50
    # Without a control cohort with samples, comparisons cannot be made: wait (True) or skip them.
    require_control: bool = True

    def __post_init__(self) -> None:
        for name in ("min_devices", "min_predictions", "min_impressions", "min_clicks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_install_failure_rate", "max_rollback_rate", "max_silent_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in 0..1, got {getattr(self, name)}")
        for name in ("ctr_alpha", "calibration_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("max_fallback_ratio", "max_local_error_ratio", "max_p99_ratio"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("silent_after_s", "fallback_slack", "local_error_slack", "min_ctr_drop", "max_calibration_drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def overridden(self, overrides: Mapping[str, GateValue]) -> GateThresholds:
        """These thresholds with the named ones of ``overrides`` in their place (ValueError when out of range)."""
        values: dict[str, Any] = dict(overrides)
        return dataclasses.replace(self, **values)


GateValue = int | float | bool
"""The value of one threshold a rollout may set."""

_KINDS: dict[str, type] = {"int": int, "float": float, "bool": bool}
OVERRIDABLE: Mapping[str, type] = {
    f.name: _KINDS[str(f.type)] for f in dataclasses.fields(GateThresholds) if str(f.type) in _KINDS
}
"""The ``GateThresholds`` fields a rollout may set, and each one's type."""
MAX_INT_THRESHOLD = 2**53


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, GateValue]:
    """``overrides`` of named thresholds, checked and typed (floats as floats), sorted by name.

    Raises ValueError on an unknown name, a value of the wrong type or out of its range. Each
    threshold's range does not depend on the others, so overrides that are valid on the defaults are
    valid on any other valid thresholds too.
    """
    if len(overrides) > len(OVERRIDABLE):
        raise ValueError(f"{len(overrides)} gate thresholds; at most {len(OVERRIDABLE)}")
    checked: dict[str, GateValue] = {}
    for name, value in sorted(overrides.items()):
        kind = OVERRIDABLE.get(name)
        if kind is None:
            raise ValueError(f"no gate threshold named {str(name)[:64]!r} (known: {', '.join(OVERRIDABLE)})")
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"gate threshold {name} must be true or false, got {str(value)[:40]}")
            checked[name] = value
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_INT_THRESHOLD:
                raise ValueError(f"gate threshold {name} must be an integer, got {str(value)[:40]}")
            checked[name] = value
        else:
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"gate threshold {name} must be a finite number, got {str(value)[:40]}")
            checked[name] = float(value)
    GateThresholds().overridden(checked)  # each threshold's own range check
    return checked


@dataclass(frozen=True)
class GateReport:
    """A wave's verdict, why, and the numbers behind it (flat and JSON-ready, e.g. ``"ctr.p_value"``)."""

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    numbers: dict[str, float] = field(default_factory=dict)


DeviceState = Literal["running", "install_failed", "rolled_back", "silent", "pending"]


def device_state(
    record: DeviceRecord, version: int, *, wave_started_unix_s: float, now_unix_s: float, silent_after_s: float
) -> DeviceState:
    """What a treatment device (offered ``version``) did with it so far."""
    offered_at = max(record.offered_since_unix_s, wave_started_unix_s)
    if version in record.rollbacks_from or record.held_back_version == version:
        return "rolled_back"
    if record.active_version == version and record.last_report_unix_s > 0:
        return "running"
    if any(v == version for v, _ in record.install_failures):
        return "install_failed"
    if now_unix_s - offered_at > silent_after_s:
        return "silent"
    return "pending"


@dataclass
class _Arm:
    """One arm's sums over its devices' records of one version."""

    predictions: int = 0
    local_errors: int = 0
    fallbacks: int = 0
    impressions: int = 0
    clicks: int = 0
    score_sum: float = 0.0
    p99s: list[float] = field(default_factory=list)

    def add(self, record: VersionRecord) -> None:
        self.predictions += record.predictions
        self.local_errors += min(record.local_errors, record.predictions)
        self.fallbacks += min(record.fallbacks, record.predictions)
        self.impressions += record.impressions
        self.clicks += min(record.clicks, record.impressions)
        self.score_sum += min(record.score_sum, float(record.impressions))
        if record.predictions > 0 and math.isfinite(record.p99_s):
            self.p99s.append(record.p99_s)


def _arm(devices: Sequence[DeviceRecord], version: int) -> _Arm:
    arm = _Arm()
    for device in devices:
        record = device.version(version)
        if record is not None:
            arm.add(record)
    return arm


class _Verdicts:
    def __init__(self) -> None:
        self.fails: list[str] = []
        self.waits: list[str] = []
        self.numbers: dict[str, float] = {}

    def report(self) -> GateReport:
        numbers = {k: float(v) for k, v in self.numbers.items() if math.isfinite(v)}
        if self.fails:
            return GateReport("fail", tuple(self.fails + self.waits), numbers)
        if self.waits:
            return GateReport("wait", tuple(self.waits), numbers)
        return GateReport("pass", (), numbers)


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
    t = thresholds
    out = _Verdicts()
    states = [
        device_state(
            d, version, wave_started_unix_s=wave_started_unix_s, now_unix_s=now_unix_s, silent_after_s=t.silent_after_s
        )
        for d in treatment
    ]
    counts = {s: states.count(s) for s in ("running", "install_failed", "rolled_back", "silent", "pending")}
    decided = len(states) - counts["pending"]
    out.numbers.update({f"devices.{state}": n for state, n in counts.items()})
    out.numbers.update(
        {"devices.treatment": len(treatment), "devices.control": len(control), "devices.decided": decided}
    )
    _health(out, counts, decided, len(states), t)
    decided_devices = [d for d, s in zip(treatment, states, strict=True) if s != "pending"]
    on_baseline = [d for d in control if d.active_version == baseline_version]
    _compare(out, _arm(decided_devices, version), _arm(on_baseline, baseline_version), t)
    return out.report()


def _health(out: _Verdicts, counts: dict[str, int], decided: int, total: int, t: GateThresholds) -> None:
    if total == 0:
        out.waits.append("no device has been offered the version yet")
        return
    for state, name, limit in (
        ("install_failed", "install_failure_rate", t.max_install_failure_rate),
        ("rolled_back", "rollback_rate", t.max_rollback_rate),
        ("silent", "silent_rate", t.max_silent_rate),
    ):
        rate = counts[state] / decided if decided else 0.0
        out.numbers[name] = rate
        # A rate fails once enough devices decided that it is not one unlucky device, or earlier when
        # it exceeds the limit whatever the pending devices do.
        settled = decided >= min(t.min_devices, total) and rate > limit
        if settled or counts[state] / max(total, t.min_devices) > limit:
            out.fails.append(f"{name} {rate:.1%} of {decided} decided devices exceeds {limit:.1%}")
    failed = counts["install_failed"] + counts["rolled_back"] + counts["silent"]
    out.numbers["failure_rate"] = failed / decided if decided else 0.0
    if decided < min(t.min_devices, total) or (decided < t.min_devices and counts["pending"]):
        out.waits.append(f"{decided} of {total} devices decided; need {min(t.min_devices, total)} and no pending")


def _compare(out: _Verdicts, treat: _Arm, ctrl: _Arm, t: GateThresholds) -> None:
    n = out.numbers
    n["predictions.treatment"], n["predictions.control"] = treat.predictions, ctrl.predictions
    if treat.predictions < t.min_predictions or ctrl.predictions < t.min_predictions:
        if treat.predictions < t.min_predictions or t.require_control:
            out.waits.append(
                f"health comparison needs {t.min_predictions} predictions per arm, "
                f"have {treat.predictions} (treatment) and {ctrl.predictions} (control)"
            )
    else:
        for name, t_count, c_count, ratio, slack in (
            ("fallback_rate", treat.fallbacks, ctrl.fallbacks, t.max_fallback_ratio, t.fallback_slack),
            ("local_error_rate", treat.local_errors, ctrl.local_errors, t.max_local_error_ratio, t.local_error_slack),
        ):
            rate_t, rate_c = t_count / treat.predictions, c_count / ctrl.predictions
            n[f"{name}.treatment"], n[f"{name}.control"] = rate_t, rate_c
            if rate_t > rate_c * ratio + slack:
                out.fails.append(f"{name} {rate_t:.2%} against the control's {rate_c:.2%}")
        if treat.p99s and ctrl.p99s:
            p99_t, p99_c = statistics.median(treat.p99s), statistics.median(ctrl.p99s)
            n["p99_s.treatment"], n["p99_s.control"] = p99_t, p99_c
            if p99_c > 0:
                n["p99_ratio"] = p99_t / p99_c
                if p99_t > p99_c * t.max_p99_ratio:
                    out.fails.append(f"predict p99 {p99_t * 1e3:.2f} ms is {p99_t / p99_c:.2f}x the control's")
    _quality(out, treat, ctrl, t)


def _quality(out: _Verdicts, treat: _Arm, ctrl: _Arm, t: GateThresholds) -> None:
    n = out.numbers
    n["impressions.treatment"], n["impressions.control"] = treat.impressions, ctrl.impressions
    n["clicks.treatment"], n["clicks.control"] = treat.clicks, ctrl.clicks
    if treat.impressions == 0 and ctrl.impressions == 0:
        return  # no outcome feedback recorded by this app: nothing to compare
    if treat.impressions < t.min_impressions or ctrl.impressions < t.min_impressions:
        if treat.impressions < t.min_impressions or t.require_control:
            out.waits.append(
                f"click-through needs {t.min_impressions} impressions per arm, "
                f"have {treat.impressions} (treatment) and {ctrl.impressions} (control)"
            )
        return
    ctr_t, ctr_c = treat.clicks / treat.impressions, ctrl.clicks / ctrl.impressions
    z, p = proportion_drop_p(treat.clicks, treat.impressions, ctrl.clicks, ctrl.impressions)
    n.update({"ctr.treatment": ctr_t, "ctr.control": ctr_c, "ctr.z": z, "ctr.p_value": p})
    if ctr_c > 0:
        n["ctr.relative_change"] = ctr_t / ctr_c - 1
    if p < t.ctr_alpha and ctr_t < ctr_c * (1 - t.min_ctr_drop):
        out.fails.append(f"click-through {ctr_t:.3%} is significantly below the control's {ctr_c:.3%} (p={p:.2g})")
    if treat.score_sum > 0 and ctrl.score_sum > 0:
        n["mean_score.treatment"] = treat.score_sum / treat.impressions
        n["mean_score.control"] = ctrl.score_sum / ctrl.impressions
        n["calibration.treatment"] = treat.clicks / treat.score_sum
        n["calibration.control"] = ctrl.clicks / ctrl.score_sum
    if min(treat.clicks, ctrl.clicks) < t.min_clicks or treat.score_sum <= 0 or ctrl.score_sum <= 0:
        if treat.clicks < t.min_clicks or ctrl.clicks < t.min_clicks:
            out.waits.append(f"calibration needs {t.min_clicks} clicks per arm, have {treat.clicks} and {ctrl.clicks}")
        return
    drift, p_cal = rate_ratio_p(treat.clicks, treat.score_sum, ctrl.clicks, ctrl.score_sum)
    n["calibration.drift"], n["calibration.p_value"] = drift, p_cal
    if p_cal < t.calibration_alpha and abs(drift) > t.max_calibration_drift:
        out.fails.append(
            f"calibration (observed over predicted clicks) moved {math.exp(drift):.2f}x "
            f"from the control's (p={p_cal:.2g})"
        )
