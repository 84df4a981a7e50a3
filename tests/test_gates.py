"""Rollout gates: exact scenarios for each health and quality gate, and properties of the verdict."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.server.release.gates import GateReport, GateThresholds, device_state, evaluate_wave
from edgerec.server.release.records import DeviceRecord, VersionRecord
from edgerec.server.release.stats import fisher_lower_p, normal_cdf, proportion_drop_p, rate_ratio_p

NEW, OLD = 3, 2
T0 = 1_000_000.0
NOW = T0 + 600.0
DEFAULTS = GateThresholds()


def _device(
    i: int,
    *,
    active: int = NEW,
    offered: int = NEW,
    reported: bool = True,
    predictions: int = 100,
    local_errors: int = 0,
    fallbacks: int = 0,
    p99_s: float = 0.001,
    impressions: int = 0,
    clicks: int = 0,
    score_sum: float = 0.0,
    install_failed: bool = False,
    rolled_back: bool = False,
) -> DeviceRecord:
    record = VersionRecord(active, predictions, local_errors, fallbacks, p99_s, impressions, clicks, score_sum, T0 + 1)
    return DeviceRecord(
        device_id=f"d{i}",
        model="m",
        offered_version=offered,
        offered_since_unix_s=T0,
        last_check_unix_s=T0,
        first_seen_unix_s=T0,
        last_report_unix_s=T0 + 60 if reported else 0.0,
        active_version=active if reported else 0,
        install_failures=((NEW, "GoldenCaseError"),) if install_failed else (),
        rollbacks_from=(NEW,) if rolled_back else (),
        versions=(record,) if reported else (),
    )


def _treatment(n: int = 20, **kw: object) -> list[DeviceRecord]:
    return [_device(i, **kw) for i in range(n)]  # type: ignore[arg-type]


def _control(n: int = 20, **kw: object) -> list[DeviceRecord]:
    return [_device(1000 + i, active=OLD, offered=OLD, **kw) for i in range(n)]  # type: ignore[arg-type]


def _verdict(
    treatment: list[DeviceRecord],
    control: list[DeviceRecord],
    *,
    now: float = NOW,
    thresholds: GateThresholds = DEFAULTS,
) -> GateReport:
    return evaluate_wave(
        version=NEW,
        baseline_version=OLD,
        treatment=treatment,
        control=control,
        wave_started_unix_s=T0,
        now_unix_s=now,
        thresholds=thresholds,
    )


def test_a_healthy_wave_passes_with_flat_json_numbers() -> None:
    report = _verdict(
        _treatment(impressions=200, clicks=10, score_sum=10.0), _control(impressions=200, clicks=10, score_sum=10.0)
    )
    assert report.verdict == "pass" and report.reasons == ()
    n = report.numbers
    assert n["devices.running"] == 20 and n["install_failure_rate"] == 0.0 and n["failure_rate"] == 0.0
    assert n["ctr.treatment"] == n["ctr.control"] == 0.05 and n["ctr.p_value"] == 0.5
    assert n["calibration.treatment"] == n["calibration.control"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in n.values())
    json.dumps(n, allow_nan=False)


def test_install_failures_fail_the_wave() -> None:
    treatment = _treatment(7) + [_device(100 + i, install_failed=True, active=OLD) for i in range(3)]
    report = _verdict(treatment, _control())
    assert report.verdict == "fail"
    assert report.numbers["install_failure_rate"] == pytest.approx(0.3)
    assert any("install_failure_rate" in r for r in report.reasons)


def test_rollbacks_fail_the_wave() -> None:
    treatment = _treatment(18) + [_device(100 + i, rolled_back=True, active=OLD) for i in range(2)]
    report = _verdict(treatment, _control())
    assert report.verdict == "fail" and report.numbers["rollback_rate"] == pytest.approx(0.1)


def test_silent_devices_wait_then_count_as_failed() -> None:
    treatment = _treatment(8) + [_device(100 + i, reported=False) for i in range(2)]
    assert _verdict(treatment, _control()).verdict == "wait"  # the two are pending, within the timeout
    later = T0 + DEFAULTS.silent_after_s + 1
    report = _verdict(treatment, _control(), now=later)
    assert report.verdict == "fail" and report.numbers["devices.silent"] == 2
    assert report.numbers["silent_rate"] == pytest.approx(0.2)
    assert device_state(treatment[-1], NEW, wave_started_unix_s=T0, now_unix_s=later, silent_after_s=10) == "silent"


def test_a_device_offered_after_the_wave_started_gets_its_own_timeout() -> None:
    late = dataclasses.replace(_device(1, reported=False), offered_since_unix_s=T0 + 5000)
    state = device_state(late, NEW, wave_started_unix_s=T0, now_unix_s=T0 + 5000 + 10, silent_after_s=3600)
    assert state == "pending"


def test_too_few_devices_wait_and_a_small_wave_passes_once_all_decided() -> None:
    assert _verdict(_treatment(5), _control()).verdict == "pass"  # all 5 of a 5-device wave decided
    pending = [*_treatment(5), _device(9, reported=False)]
    assert _verdict(pending, _control()).verdict == "wait"
    assert _verdict([], _control()).verdict == "wait"


def test_failures_beyond_the_limit_whatever_the_pending_do_fail_early() -> None:
    treatment = [_device(i, install_failed=True, active=OLD) for i in range(5)]
    treatment += [_device(100 + i, reported=False) for i in range(45)]
    report = _verdict(treatment, _control())
    assert report.verdict == "fail"  # 5 of 50 is 10% even if all 45 pending succeed


def test_one_failure_among_few_decided_is_not_yet_a_rate() -> None:
    treatment = [_device(0, install_failed=True, active=OLD)] + [_device(i, reported=False) for i in range(1, 4)]
    lenient = GateThresholds(max_install_failure_rate=0.2)
    assert _verdict(treatment, _control(), thresholds=lenient).verdict == "wait"  # 1 of 1 decided, 3 pending
    assert _verdict(treatment[:1] + _treatment(3), _control(), thresholds=lenient).verdict == "fail"  # 1 of 4


def test_fallback_and_local_error_rates_against_the_control() -> None:
    assert _verdict(_treatment(fallbacks=10), _control(fallbacks=10)).verdict == "pass"
    report = _verdict(_treatment(fallbacks=30), _control(fallbacks=10))
    assert report.verdict == "fail" and report.numbers["fallback_rate.treatment"] == pytest.approx(0.3)
    report = _verdict(_treatment(local_errors=5), _control(local_errors=1))
    assert report.verdict == "fail" and any("local_error_rate" in r for r in report.reasons)


def test_predict_p99_against_the_control() -> None:
    report = _verdict(_treatment(p99_s=0.004), _control(p99_s=0.002))
    assert report.verdict == "fail" and report.numbers["p99_ratio"] == pytest.approx(2.0)
    assert _verdict(_treatment(p99_s=0.0024), _control(p99_s=0.002)).verdict == "pass"


def test_without_a_control_comparisons_wait_unless_told_not_to() -> None:
    report = _verdict(_treatment(), [])
    assert report.verdict == "wait" and any("predictions per arm" in r for r in report.reasons)
    assert _verdict(_treatment(), [], thresholds=GateThresholds(require_control=False)).verdict == "pass"


def test_a_significant_click_through_drop_fails() -> None:
    control = _control(impressions=500, clicks=50, score_sum=50.0)  # 10%
    worse = _treatment(impressions=500, clicks=40, score_sum=50.0)  # 8%, 10,000 impressions a side
    report = _verdict(worse, control, thresholds=GateThresholds(max_calibration_drift=10))
    assert report.verdict == "fail" and report.numbers["ctr.p_value"] < 0.01
    assert report.numbers["ctr.relative_change"] == pytest.approx(-0.2)
    # The same rates on too few impressions: wait for the minimum sample.
    few = _verdict(
        _treatment(impressions=40, clicks=3, score_sum=4.0), _control(impressions=40, clicks=4, score_sum=4.0)
    )
    assert few.verdict == "wait" and any("impressions per arm" in r for r in few.reasons)


def test_a_drop_within_noise_passes() -> None:
    report = _verdict(
        _treatment(impressions=100, clicks=9, score_sum=10.0), _control(impressions=100, clicks=10, score_sum=10.0)
    )
    assert report.verdict == "pass" and report.numbers["ctr.p_value"] > 0.01


def test_calibration_drift_fails() -> None:
    # Same click-through, but the new model predicts twice the clicks it gets.
    report = _verdict(
        _treatment(impressions=500, clicks=50, score_sum=100.0), _control(impressions=500, clicks=50, score_sum=50.0)
    )
    assert report.verdict == "fail" and report.numbers["calibration.treatment"] == pytest.approx(0.5)
    assert report.numbers["calibration.drift"] == pytest.approx(math.log(0.5))


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="ctr_alpha"):
        GateThresholds(ctr_alpha=0)
    with pytest.raises(ValueError, match="min_devices"):
        GateThresholds(min_devices=0)


# --- the tests themselves ------------------------------------------------------------


def test_fisher_exact_matches_the_textbook_table() -> None:
    # Men 1 of 12 dieting, women 9 of 12: one-sided p = P(X <= 1) = 0.0013797 (hypergeometric 24, 10, 12).
    assert fisher_lower_p(1, 12, 9, 12) == pytest.approx(0.0013797, abs=1e-6)
    assert fisher_lower_p(12, 12, 0, 12) == pytest.approx(1.0)


def test_the_z_test_and_the_exact_test_agree_where_both_apply() -> None:
    z, p = proportion_drop_p(450, 10_000, 500, 10_000)
    assert z == pytest.approx(-1.662, abs=1e-3) and p == pytest.approx(normal_cdf(z))
    assert fisher_lower_p(450, 10_000, 500, 10_000) == pytest.approx(p, rel=0.15)
    # Small counts take the exact test.
    assert proportion_drop_p(0, 50, 3, 50)[1] == pytest.approx(fisher_lower_p(0, 50, 3, 50))


def test_rate_ratio_is_symmetric() -> None:
    drift, p = rate_ratio_p(50, 100.0, 50, 50.0)
    assert drift == pytest.approx(math.log(0.5)) and 0 < p < 0.01
    back, p_back = rate_ratio_p(50, 50.0, 50, 100.0)
    assert back == pytest.approx(-drift) and p_back == pytest.approx(p)


@given(st.integers(1, 3000), st.integers(0, 3000), st.integers(1, 3000), st.integers(0, 3000), st.integers(1, 100))
def test_more_treatment_clicks_never_lower_the_p_value(n_t: int, x_t: int, n_c: int, x_c: int, more: int) -> None:
    x_t, x_c = min(x_t, n_t), min(x_c, n_c)
    p = proportion_drop_p(x_t, n_t, x_c, n_c)[1]
    assert 0.0 <= p <= 1.0
    higher = min(n_t, x_t + more)
    assert proportion_drop_p(higher, n_t, x_c, n_c)[1] >= p - 1e-9


@given(st.integers(0, 60), st.integers(0, 60), st.integers(1, 40), st.integers(0, 30), st.integers(0, 30))
def test_more_clicks_never_turn_a_pass_into_a_fail(
    clicks: int, control_clicks: int, more: int, failed: int, silent: int
) -> None:
    thresholds = GateThresholds(max_calibration_drift=100.0, min_impressions=500)
    control = _control(impressions=100, clicks=control_clicks, score_sum=5.0)
    base = _treatment(impressions=100, clicks=clicks, score_sum=5.0)
    base += [_device(500 + i, install_failed=True, active=OLD) for i in range(failed % 3)]
    base += [_device(600 + i, reported=False) for i in range(silent % 3)]
    better = [
        dataclasses.replace(
            d, versions=tuple(dataclasses.replace(v, clicks=min(100, v.clicks + more)) for v in d.versions)
        )
        for d in base
    ]
    before, after = _verdict(base, control, thresholds=thresholds), _verdict(better, control, thresholds=thresholds)
    if before.verdict == "pass":
        assert after.verdict == "pass"
    if after.verdict == "fail":
        assert before.verdict == "fail"


@given(st.floats(0, 20_000), st.floats(0, 20_000))
def test_time_never_turns_a_silent_fail_into_a_pass(earlier: float, later_by: float) -> None:
    treatment = [*_treatment(10), _device(100, reported=False)]
    first = _verdict(treatment, _control(), now=T0 + earlier)
    second = _verdict(treatment, _control(), now=T0 + earlier + later_by)
    assert not (first.verdict == "fail" and second.verdict == "pass")
