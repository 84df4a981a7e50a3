"""The operator's side on a real server: `edgerec channel|pin|rollout|revert` (tables and --json), a
device that goes silent failing its wave's gate, and a revert that brings a verifying device that ran the
bad version back to the good bytes (a new version, so its anti-rollback floor stays intact)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from test_release_server import MODEL, _serve, copy_of, offered, publish_three

from edgerec.cli.main import cli
from edgerec.device import EdgeClient
from edgerec.registry import Registry
from edgerec.server.release import cohorts
from edgerec.server.release.controller import split_cohorts
from edgerec.server.release.gates import GateThresholds, evaluate_wave
from edgerec.server.release.policy import load_policy
from edgerec.signing import generate_keypair
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return publish_three(tmp_path_factory.mktemp("release-cli"))


@pytest.fixture
def registry(published: Registry, tmp_path: Path) -> Registry:
    return copy_of(published, tmp_path)


def run(registry: Registry, *args: str) -> Any:
    """``edgerec ARGS --registry R --model M --json``, parsed; a failed command fails the test."""
    result = CliRunner().invoke(cli, [*args, "--registry", str(registry.root), "--model", MODEL, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_commands_change_the_policy_and_print_consistent_json(registry: Registry) -> None:
    assert run(registry, "channel", "set", "--version", "2") == {"model": MODEL, "channels": {"stable": 2}}
    started = run(registry, "rollout", "start", "--version", "3", "--waves", "1,10,50,100", "--wave-min-time", "2h")
    rollout = started["rollout"]
    assert (rollout["state"], rollout["wave_index"], rollout["waves"]) == ("running", 0, [1.0, 10.0, 50.0, 100.0])
    assert rollout["wave_min_time_s"] == 7200.0 and rollout["baseline_version"] == 2
    types = {k: type(v).__name__ for k, v in rollout.items()}
    for verb, state in (("pause", "paused"), ("resume", "running"), ("halt", "halted"), ("resume", "running")):
        moved = run(registry, "rollout", verb)["rollout"]
        assert moved["state"] == state and moved["id"] == rollout["id"]
        assert {k: type(v).__name__ for k, v in moved.items()} == types, "the same types whatever the state"
    status = run(registry, "rollout", "status")
    (shown,) = status["rollouts"]
    assert [w["percent"] for w in shown["wave_table"]] == [1.0, 10.0, 50.0, 100.0]
    assert shown["current_wave"] == 1 and shown["wave_table"][0]["status"] == "running"
    assert run(registry, "pin", "set", "--device", "kiosk-1", "--version", "1")["devices"] == [
        {"device": "kiosk-1", "version": 1}
    ]
    pins = run(registry, "pin", "set", "--where", "region == 'cn'", "--version", "1")
    assert pins["labels"] == [{"where": "region == 'cn'", "version": 1}]
    assert run(registry, "pin", "clear", "--device", "kiosk-1")["devices"] == []
    # Refusals are one line and exit 1, never a traceback.
    for bad in (
        ["rollout", "start", "--version", "3"],  # one is running on the channel already
        ["rollout", "approve"],  # nothing waits for approval
        ["pin", "set", "--where", "region = 'eu'", "--version", "1"],
        ["rollout", "start", "--version", "9"],
    ):
        result = CliRunner().invoke(cli, [*bad, "--registry", str(registry.root), "--model", MODEL])
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    # The human form prints tables.
    table = CliRunner().invoke(cli, ["rollout", "status", "--registry", str(registry.root), "--model", MODEL])
    assert table.exit_code == 0 and "Waves" in table.output and rollout["id"] in table.output


def test_devices_that_go_silent_fail_the_wave(registry: Registry) -> None:
    run(registry, "channel", "set", "--version", "2")
    rollout = run(registry, "rollout", "start", "--version", "3", "--waves", "50,100")["rollout"]
    server = _serve(registry)
    try:
        assert server.rollouts is not None and server.fleet is not None
        server.rollouts.thresholds = GateThresholds(min_devices=5, silent_after_s=600)
        ids = [f"quiet-{i}" for i in range(40)]
        offers = {d: offered(server, d, current=2) for d in ids}
        inside = [d for d in ids if cohorts.in_wave(rollout["seed"], d, 50)]
        assert {offers[d] for d in inside} == {3} and len(inside) >= 5
        server.fleet.flush()
        assert server.rollouts.tick(now=time.time() + 60) == [], "offered a minute ago: not silent yet"
        (move,) = server.rollouts.tick(now=time.time() + 3600)
        assert move.after == ("halted", 0)
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        halted = policy.rollouts[-1]
        assert "silent" in halted.reason
        gate = halted.gate(0)
        assert gate is not None and gate.verdict == "fail" and gate.treatment == len(inside)
        assert any("silent" in name for name in gate.numbers)
    finally:
        server.stop(grace=0)


def test_gate_options_are_checked_before_anything_is_written(registry: Registry) -> None:
    run(registry, "channel", "set", "--version", "2")
    for bad, says in (
        ("max_install_failure=0.01", "max_install_failure_rate"),  # unknown: the known names are listed
        ("max_install_failure_rate", "NAME=VALUE"),
        ("max_install_failure_rate=lots", "a number"),
        ("max_install_failure_rate=1.5", "0..1"),
        ("min_devices=2.5", "an integer"),
        ("min_devices=0", ">= 1"),
        ("require_control=maybe", "true or false"),
        ("silent_after_s=inf", "finite"),
    ):
        args = ["rollout", "start", "--version", "3", "--gate", bad, "--registry", str(registry.root)]
        result = CliRunner().invoke(cli, [*args, "--model", MODEL])
        assert result.exit_code == 2 and "--gate" in result.output and says in result.output, (bad, result.output)
        assert "Traceback" not in result.output
    twice = ["--gate", "min_devices=3", "--gate", "min_devices=4"]
    result = CliRunner().invoke(
        cli, ["rollout", "start", "--version", "3", *twice, "--registry", str(registry.root), "--model", MODEL]
    )
    assert result.exit_code == 2 and "twice" in result.output
    policy, _ = load_policy(registry, MODEL)
    assert policy is not None and policy.rollouts == (), "a refused start writes nothing"
    started = run(
        registry, "rollout", "start", "--version", "3", "--gate", "max_install_failure_rate=0.01",
        "--gate", "min_devices=20", "--gate", "require_control=false",
    )["rollout"]  # fmt: skip
    expected = {"max_install_failure_rate": 0.01, "min_devices": 20, "require_control": False}
    assert started["gate_thresholds"] == expected
    assert [type(v) for v in started["gate_thresholds"].values()] == [float, int, bool]
    (shown,) = run(registry, "rollout", "status")["rollouts"]
    assert shown["gate_thresholds"] == expected
    table = CliRunner().invoke(cli, ["rollout", "status", "--registry", str(registry.root), "--model", MODEL])
    assert table.exit_code == 0 and "max_install_failure_rate=0.01" in table.output, table.output


def test_a_rollouts_strict_install_failure_bound_halts_what_the_servers_would_pass(registry: Registry) -> None:
    run(registry, "channel", "set", "--version", "2")
    # Every targeted device is in the one wave: no control is needed, the treatment's health decides.
    run(registry, "rollout", "start", "--version", "3", "--waves", "100", "--gate", "max_install_failure_rate=0.01")
    server = _serve(registry)
    try:
        assert server.rollouts is not None and server.fleet is not None
        ids = [f"strict-{i}" for i in range(20)]
        assert {offered(server, d, current=2) for d in ids} == {3}
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = telemetry_pb2_grpc.TelemetryStub(channel)  # type: ignore[no-untyped-call]
            for i, device_id in enumerate(ids):
                failed = i == 0  # 1 of 20 (5%): within the server's 5%, above the rollout's 1%
                active = 2 if failed else 3
                stub.ReportStatus(
                    telemetry_pb2.StatusReport(
                        device_id=device_id,
                        model=MODEL,
                        active_version=active,
                        install_failures=[telemetry_pb2.InstallFailure(version=3, error="HealthCheckError")]
                        if failed
                        else [],
                        outcomes=[telemetry_pb2.VersionOutcomes(version=active, predictions=50)],
                    ),
                    timeout=30,
                )
        server.fleet.flush()
        now = time.time() + 1
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        running = policy.rollouts[-1]
        wave = split_cohorts(running, server.fleet.devices(MODEL))
        assert len(wave.treatment) == len(ids)

        def verdict(thresholds: GateThresholds) -> str:
            return evaluate_wave(
                version=3,
                baseline_version=2,
                treatment=wave.treatment,
                control=wave.control,
                wave_started_unix_s=running.wave_started_unix_s,
                now_unix_s=now,
                thresholds=thresholds,
            ).verdict

        servers = server.rollouts.wave_thresholds(dataclasses.replace(running, gate_thresholds={}))
        assert verdict(servers) == "pass", "the server's own thresholds pass this wave"
        assert verdict(server.rollouts.wave_thresholds(running)) == "fail"
        (move,) = server.rollouts.tick(now=now)
        assert move.after == ("halted", 0)
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        halted = policy.rollouts[-1]
        assert "install_failure_rate" in halted.reason and "1.0%" in halted.reason, halted.reason
        gate = halted.gate(0)
        assert gate is not None and gate.verdict == "fail" and gate.numbers["install_failure_rate"] == 0.05
    finally:
        server.stop(grace=0)


def test_revert_brings_devices_that_ran_the_bad_version_back_to_the_good_bytes(
    registry: Registry, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_keypair(keys / "server.pem", keys / "server.pub")
    run(registry, "channel", "set", "--version", "2")
    run(registry, "rollout", "start", "--version", "3", "--waves", "100")
    server = _serve(registry, signing_key=keys / "server.pem")
    try:
        address = f"127.0.0.1:{server.port}"
        trusted = [keys / "server.pub"]
        with EdgeClient(address, MODEL, tmp_path / "bad", device_id="ran-bad", trusted_keys=trusted) as device:
            device.sync()
            assert device.active_version == 3
            reverted = run(registry, "revert", "--to", "2")
            assert (
                reverted["version"] == 4 and reverted["bad_versions"] == [3] and len(reverted["halted_rollouts"]) == 1
            )
            assert device.sync().updated and device.active_version == 4
        _, good = registry.load_manifest(MODEL, 2)
        _, back = registry.load_manifest(MODEL, 4)
        assert [a.digest for a in back.artifacts] == [a.digest for a in good.artifacts], "version 2's exact bytes"
        # A device on the good version gets a copy (no payload bytes); a new one gets the new version.
        assert offered(server, "on-good", current=2) == 4
        assert offered(server, "new-device") == 4
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None and policy.channels == {"stable": 4}
        assert policy.rollouts[-1].state == "halted"
    finally:
        server.stop(grace=0)


def test_edgerec_sync_sends_its_channel_and_labels(registry: Registry, tmp_path: Path) -> None:
    run(registry, "channel", "set", "--channel", "canary", "--version", "3")
    run(registry, "channel", "set", "--version", "1")
    run(registry, "pin", "set", "--where", "region == 'eu'", "--version", "2")
    server = _serve(registry)
    try:
        address = f"127.0.0.1:{server.port}"

        def sync(folder: str, *extra: str) -> int:
            args = ["sync", "--server", address, "--model", MODEL, "--data-dir", str(tmp_path / folder)]
            result = CliRunner().invoke(cli, [*args, "--insecure-skip-verify", "--json", *extra])
            assert result.exit_code == 0, result.output
            return int(json.loads(result.output)["version"])

        assert sync("plain") == 1
        assert sync("canary", "--channel", "canary") == 3
        assert sync("eu", "--channel", "canary", "--label", "region=eu", "--app-version", "5.1") == 2
        bad = CliRunner().invoke(cli, ["sync", "--server", address, "--model", MODEL, "--data-dir", str(tmp_path / "x"),
                                       "--insecure-skip-verify", "--label", "no-equals"])  # fmt: skip
        assert bad.exit_code != 0 and "KEY=VALUE" in bad.output
    finally:
        server.stop(grace=0)
