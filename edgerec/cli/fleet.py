"""``edgerec fleet ls|status``: the devices of a model as every server replica recorded them."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import click

from edgerec.cli.output import console, emit_json, print_table
from edgerec.cli.registry_option import open_cli_registry, registry_options
from edgerec.manifest import validate_model_name


@click.group()
def fleet() -> None:
    """See the devices of a model: versions, channels, rollout waves, last seen, fallback and error rates."""


def _read(registry_spec: str, s3_endpoint: str | None, model: str) -> tuple[list[Any], Any]:
    from edgerec.server.release.fleet_store import RegistryFleet
    from edgerec.server.release.fleet_view import active_rollout
    from edgerec.server.release.policy import load_policy

    validate_model_name(model)
    registry = open_cli_registry(registry_spec, s3_endpoint, must_exist=True)
    reading = console.status(f"reading the fleet records of {model}") if console.is_terminal else nullcontext()
    with reading:
        records = list(RegistryFleet(registry, replica_id="cli-reader").devices(model))
        policy, _ = load_policy(registry, model)
    return records, active_rollout(policy)


def _ago(unix_s: float | None, now: float) -> str:
    if not unix_s:
        return "-"
    seconds = max(0.0, now - unix_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _rollout_json(rollout: Any) -> dict[str, Any] | None:
    if rollout is None:
        return None
    return {
        "id": rollout.id,
        "version": rollout.version,
        "baseline_version": rollout.baseline_version,
        "state": rollout.state,
        "wave": rollout.wave_index + 1,
        "waves": list(rollout.waves),
    }


@fleet.command("ls")
@registry_options
@click.option("--model", required=True, help="Model name.")
@click.option("--version", "version", type=int, default=None, help="Only devices running this version.")
@click.option("--channel", default=None, help="Only devices of this channel.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="Most devices listed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls(
    registry_spec: str,
    s3_endpoint: str | None,
    model: str,
    version: int | None,
    channel: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """One row per device, most recently seen first."""
    from edgerec.server.release.fleet_view import device_rows

    records, rollout = _read(registry_spec, s3_endpoint, model)
    rows = [
        r
        for r in device_rows(records, rollout)
        if (version is None or r["version"] == version) and (channel is None or r["channel"] == channel)
    ]
    if as_json:
        emit_json({"model": model, "rollout": _rollout_json(rollout), "total": len(rows), "devices": rows[:limit]})
        return
    now = time.time()
    print_table(
        f"{model}: {len(rows)} devices" + (f" (first {limit})" if len(rows) > limit else ""),
        ["device", "channel", "version", "offered", "wave", "last seen", "fallback", "local errors", "ctr", "labels"],
        [
            [
                r["device_id"],
                r["channel"],
                _dash(r["version"]),
                _dash(r["offered_version"]),
                _dash(r["wave"]),
                _ago(r["last_seen_unix_s"], now),
                _pct(r["fallback_rate"]),
                _pct(r["local_error_rate"]),
                _pct(r["ctr"]),
                ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
            ]
            for r in rows[:limit]
        ],
        caption=_caption(rollout),
    )


@fleet.command("status")
@registry_options
@click.option("--model", required=True, help="Model name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(registry_spec: str, s3_endpoint: str | None, model: str, as_json: bool) -> None:
    """Devices by running version, channel and rollout wave."""
    from edgerec.server.release.fleet_view import status_groups

    records, rollout = _read(registry_spec, s3_endpoint, model)
    groups = status_groups(records, rollout)
    if as_json:
        emit_json({"model": model, "rollout": _rollout_json(rollout), "devices": len(records), "groups": groups})
        return
    now = time.time()
    print_table(
        f"{model}: {len(records)} devices",
        ["version", "channel", "wave", "devices", "offered other", "last seen", "fallback", "local errors", "ctr"],
        [
            [
                _dash(g["version"]),
                g["channel"],
                _dash(g["wave"]),
                g["devices"],
                g["offered_other"],
                _ago(g["last_seen_unix_s"], now),
                _pct(g["fallback_rate"]),
                _pct(g["local_error_rate"]),
                _pct(g["ctr"]),
            ]
            for g in groups
        ],
        caption=_caption(rollout),
    )


def _caption(rollout: Any) -> str | None:
    if rollout is None:
        return "no active rollout"
    return (
        f"rollout {rollout.id}: version {rollout.version} over {rollout.baseline_version}, {rollout.state}, "
        f"wave {rollout.wave_index + 1} of {len(rollout.waves)} ({rollout.percent:g}%)"
    )
