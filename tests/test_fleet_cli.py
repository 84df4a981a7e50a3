"""``edgerec fleet ls|status``: tables and JSON from the fleet records every replica wrote to a registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerec.cli.main import cli
from edgerec.registry import Registry
from edgerec.server.release import cohorts
from edgerec.server.release.fleet_store import RegistryFleet
from edgerec.server.release.policy import update_policy
from edgerec.server.release.rollouts import start_rollout
from edgerec.v1 import telemetry_pb2, update_pb2

MODEL = "Ctr.v2"  # capitals and dots: the documents are keyed by the name's hash


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry")
    now = time.time()
    for replica, devices in (("a", range(0, 3)), ("b", range(3, 5))):
        fleet = RegistryFleet(registry, replica_id=replica)
        for i in devices:
            fleet.checked(
                update_pb2.CheckUpdateRequest(
                    model=MODEL, device_id=f"dev-{i}", channel="canary" if i == 4 else "", labels={"region": "eu"}
                ),
                2,
                now - 60 * i,
            )
            if i < 4:
                outcome = telemetry_pb2.VersionOutcomes(
                    version=2, predictions=100, fallbacks=i, local_errors=1, impressions=50, clicks=5
                )
                fleet.reported(
                    telemetry_pb2.StatusReport(device_id=f"dev-{i}", model=MODEL, active_version=2, outcomes=[outcome]),
                    now - 60 * i + 1,
                )
        fleet.flush()
    return registry


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_ls_json_lists_every_device_with_consistent_types(registry: Registry) -> None:
    out = json.loads(_run("fleet", "ls", "--registry", str(registry.root), "--model", MODEL, "--json"))
    assert out["model"] == MODEL and out["rollout"] is None and out["total"] == 5
    devices = out["devices"]
    assert [d["device_id"] for d in devices] == [f"dev-{i}" for i in range(5)]  # most recently seen first
    first = devices[0]
    assert (first["version"], first["offered_version"], first["channel"], first["labels"]) == (
        2,
        2,
        "stable",
        {"region": "eu"},
    )
    assert first["fallback_rate"] == 0.0 and devices[1]["fallback_rate"] == 0.01 and first["ctr"] == 0.1
    assert first["wave"] is None and isinstance(first["last_seen_unix_s"], float)
    silent = devices[4]
    assert (silent["channel"], silent["version"], silent["fallback_rate"], silent["ctr"]) == (
        "canary",
        None,
        None,
        None,
    )
    canary = json.loads(
        _run("fleet", "ls", "--registry", str(registry.root), "--model", MODEL, "--channel", "canary", "--json")
    )
    assert [d["device_id"] for d in canary["devices"]] == ["dev-4"]


def test_status_groups_by_version_channel_and_wave(registry: Registry) -> None:
    seed = "fixed-seed"
    update_policy(
        registry,
        MODEL,
        lambda p: start_rollout(p, version=2, published=[1, 2], now=time.time(), waves=(50.0, 100.0), seed=seed),
    )
    out = json.loads(_run("fleet", "status", "--registry", str(registry.root), "--model", MODEL, "--json"))
    assert out["rollout"]["version"] == 2 and out["rollout"]["wave"] == 1 and out["devices"] == 5
    stable = [g for g in out["groups"] if g["channel"] == "stable"]
    in_first = sum(1 for i in range(4) if cohorts.in_wave(seed, f"dev-{i}", 50.0))
    assert {g["wave"]: g["devices"] for g in stable} == {w: n for w, n in ((1, in_first), (2, 4 - in_first)) if n}
    assert sum(g["predictions"] for g in stable) == 400
    canary = next(g for g in out["groups"] if g["channel"] == "canary")
    assert (canary["version"], canary["wave"], canary["offered_other"], canary["fallback_rate"]) == (
        None,
        None,
        1,
        None,
    )


def test_tables_for_people(registry: Registry) -> None:
    table = _run("fleet", "status", "--registry", str(registry.root), "--model", MODEL)
    assert "5 devices" in table and "canary" in table and "no active rollout" in table
    listing = _run("fleet", "ls", "--registry", str(registry.root), "--model", MODEL, "--limit", "2")
    assert "dev-0" in listing and "dev-4" not in listing and "first 2" in listing


def test_an_unknown_registry_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fleet", "ls", "--registry", str(tmp_path / "none"), "--model", MODEL])
    assert result.exit_code != 0 and "no registry folder" in result.output
