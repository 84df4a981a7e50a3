"""A rollout's last wave holds every targeted device: no control cohort is left to compare with, so the
controller judges it by the treatment's own health instead of waiting for a control forever."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgerec.registry import Registry
from edgerec.server.release.controller import RolloutController
from edgerec.server.release.fleet_store import RegistryFleet
from edgerec.server.release.gates import GateThresholds, evaluate_wave
from edgerec.server.release.policy import Rollout
from edgerec.server.release.records import DeviceRecord, VersionRecord

NEW, OLD = 3, 2
T0 = 1_000_000.0


def _rollout(wave_index: int) -> Rollout:
    return Rollout(
        id="r-3-test",
        version=NEW,
        baseline_version=OLD,
        channel="stable",
        seed="seed",
        waves=(1.0, 10.0, 50.0, 100.0),
        wave_min_time_s=0.0,
        state="running",
        wave_index=wave_index,
        started_unix_s=T0,
        wave_started_unix_s=T0,
    )


def _device(i: int, *, install_failed: bool = False) -> DeviceRecord:
    active = OLD if install_failed else NEW
    outcomes = VersionRecord(active, predictions=500, p99_s=0.001, impressions=200, clicks=80, score_sum=80.0)
    return DeviceRecord(
        device_id=f"d{i}",
        model="m",
        offered_version=NEW,
        offered_since_unix_s=T0,
        last_check_unix_s=T0,
        last_report_unix_s=T0 + 60,
        active_version=active,
        install_failures=((NEW, "HealthCheckError"),) if install_failed else (),
        versions=(outcomes,),
    )


def test_the_last_wave_is_judged_without_a_control(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    fleet = RegistryFleet(registry)
    try:
        controller = RolloutController(registry, fleet, thresholds=GateThresholds())
        assert controller.wave_thresholds(_rollout(2)).require_control
        last = controller.wave_thresholds(_rollout(3))
    finally:
        fleet.stop()
    healthy = [_device(i) for i in range(50)]
    common = {"version": NEW, "baseline_version": OLD, "control": (), "wave_started_unix_s": T0, "now_unix_s": T0 + 120}
    assert evaluate_wave(treatment=healthy, thresholds=GateThresholds(), **common).verdict == "wait"  # type: ignore[arg-type]
    assert evaluate_wave(treatment=healthy, thresholds=last, **common).verdict == "pass"  # type: ignore[arg-type]
    failing = healthy[:40] + [_device(i, install_failed=True) for i in range(40, 50)]
    assert evaluate_wave(treatment=failing, thresholds=last, **common).verdict == "fail"  # type: ignore[arg-type]


def test_a_rollouts_own_thresholds_replace_the_servers_and_the_last_wave_rule_holds(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    fleet = RegistryFleet(registry)
    try:
        server = GateThresholds(min_devices=20, max_install_failure_rate=0.1)
        controller = RolloutController(registry, fleet, thresholds=server)
        overrides = {"max_install_failure_rate": 0.01, "require_control": True}
        middle = controller.wave_thresholds(dataclasses.replace(_rollout(2), gate_thresholds=overrides))
        last = controller.wave_thresholds(dataclasses.replace(_rollout(3), gate_thresholds=overrides))
    finally:
        fleet.stop()
    assert middle == dataclasses.replace(server, max_install_failure_rate=0.01)
    assert last == dataclasses.replace(server, max_install_failure_rate=0.01, require_control=False)
    assert controller.wave_thresholds(_rollout(1)) == server
