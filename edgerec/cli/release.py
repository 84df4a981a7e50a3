"""``edgerec rollout|channel|pin|revert``: who is offered which version (the model's release policy).

Every change is a compare-and-swap on the policy document in the registry, so it never overwrites a
change made meanwhile by a server replica or another operator.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from edgerec.cli.output import emit_json, print_table
from edgerec.cli.registry_option import open_cli_registry, registry_options
from edgerec.errors import ReleasePolicyError
from edgerec.registry import ModelRegistry
from edgerec.server.release import rollouts as moves
from edgerec.server.release import targeting
from edgerec.server.release.gates import OVERRIDABLE, GateValue, check_overrides
from edgerec.server.release.policy import LabelPin, ReleasePolicy, load_policy, rollout_json, update_policy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h or 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_waves(text: str) -> tuple[float, ...]:
    """Percentages in ``1,10,50,100``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of percentages such as 1,10,50,100") from None


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_gates(items: tuple[str, ...]) -> dict[str, GateValue]:
    """Gate thresholds in ``NAME=VALUE`` items (``--gate``), checked as the policy document checks them."""
    known = ", ".join(OVERRIDABLE)
    raw: dict[str, GateValue] = {}
    for item in items:
        name, sep, text = (part.strip() for part in item.partition("="))
        kind = OVERRIDABLE.get(name)
        if not sep or kind is None:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE with NAME one of: {known}", param_hint="'--gate'")
        if name in raw:
            raise click.BadParameter(f"{name} is given twice", param_hint="'--gate'")
        try:
            if kind is bool:
                raw[name] = _BOOLS[text.lower()]
            else:
                raw[name] = int(text) if kind is int else float(text)
        except (KeyError, ValueError):
            wanted = {bool: "true or false", int: "an integer", float: "a number"}[kind]
            raise click.BadParameter(f"{name} must be {wanted}, got {text[:40]!r}", param_hint="'--gate'") from None
    try:
        return check_overrides(raw)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--gate'") from None


def _gates_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the server's"


def _model_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--model", required=True, help="Model name.")(func)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _open(registry_spec: str, s3_endpoint: str | None, model: str) -> ModelRegistry:
    registry = open_cli_registry(registry_spec, s3_endpoint, must_exist=True)
    if not registry.versions(model):
        raise click.ClickException(f"no model named {model!r} in {registry_spec}")
    return registry


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if unix_s else "-"


def _print_rollout(model: str, rollout: dict[str, Any]) -> None:
    waves = ", ".join(f"{w:g}%" for w in rollout["waves"])
    rows = [
        ("rollout", rollout["id"]),
        ("model", model),
        ("version", f"{rollout['version']} (baseline {rollout['baseline_version']})"),
        ("channel", rollout["channel"]),
        ("where", rollout["where"] or "(every device)"),
        ("state", rollout["state"]),
        ("wave", f"{rollout['wave_index'] + 1} of {len(rollout['waves'])} ({waves})"),
        ("wave started", _when(rollout["wave_started_unix_s"])),
        ("wave min time", f"{rollout['wave_min_time_s']:g} s"),
        ("gate thresholds", _gates_text(rollout["gate_thresholds"])),
        ("reason", rollout["reason"]),
    ]
    print_table(f"Rollout of {model} version {rollout['version']}", ["field", "value"], rows)


# --- rollout ------------------------------------------------------------------------


@click.group()
def rollout() -> None:
    """Staged rollouts: start, pause, resume, halt, approve, status."""


@rollout.command("start")
@registry_options
@_model_option
@click.option("--version", type=int, required=True, help="The published version to roll out.")
@click.option("--waves", default="1,10,50,100", show_default=True, help="Rising percentages of the targeted devices.")
@click.option("--wave-min-time", default="0", show_default=True, help="Least time per wave (90s, 30m, 2h, 1d).")
@click.option(
    "--where", default="", help="Targeting expression, e.g. \"runtime == 'onnxruntime' and region in ('eu', 'us')\"."
)
@click.option("--channel", default="stable", show_default=True, help="The channel rolled out to.")
@click.option("--require-approval", is_flag=True, help="Wait for `rollout approve` after each passed wave.")
@click.option(
    "--gate",
    "gates",
    multiple=True,
    metavar="NAME=VALUE",
    help="This rollout's own gate threshold in place of the server's, e.g. max_install_failure_rate=0.01 "
    f"(repeatable; names: {', '.join(OVERRIDABLE)}).",
)
@_json_option
def start(
    registry_spec: str,
    s3_endpoint: str | None,
    model: str,
    version: int,
    waves: str,
    wave_min_time: str,
    where: str,
    channel: str,
    require_approval: bool,
    gates: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start a staged rollout of VERSION; the devices outside its waves stay on the channel's version."""
    wave_list = parse_waves(waves)
    min_time = parse_duration(wave_min_time)
    overrides = parse_gates(gates)
    if where:
        targeting.parse(where)
    registry = _open(registry_spec, s3_endpoint, model)
    published = registry.versions(model)
    policy = update_policy(
        registry,
        model,
        lambda p: moves.start_rollout(
            p,
            version=version,
            published=published,
            now=time.time(),
            waves=wave_list,
            wave_min_time_s=min_time,
            where=where,
            channel=channel,
            require_approval=require_approval,
            gate_thresholds=overrides,
        ),
    )
    started = moves.find_rollout(policy, states=("running",))
    _report(model, rollout_json(started), as_json)


def _report(model: str, rollout_data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json({"model": model, "rollout": rollout_data})
    else:
        _print_rollout(model, rollout_data)


_PAST = {"pause": "paused", "resume": "resumed", "halt": "halted", "approve": "approved"}


def _operator_command(
    name: str, move: Callable[[ReleasePolicy, str, float, str], ReleasePolicy], help_text: str
) -> click.Command:
    @rollout.command(name, help=help_text)
    @registry_options
    @_model_option
    @click.option("--id", "rollout_id", default="", help="The rollout (default: the newest one this applies to).")
    @click.option("--reason", default=_PAST[name] + " by operator", show_default=True, help="Recorded with the move.")
    @_json_option
    def command(
        registry_spec: str, s3_endpoint: str | None, model: str, rollout_id: str, reason: str, as_json: bool
    ) -> None:
        registry = _open(registry_spec, s3_endpoint, model)
        moved: list[str] = []

        def change(policy: ReleasePolicy) -> ReleasePolicy:
            after = move(policy, rollout_id, time.time(), reason)
            moved[:] = [r.id for r in after.rollouts if policy.rollout(r.id) != r]
            return after

        policy = update_policy(registry, model, change)
        changed = policy.rollout(moved[0]) if moved else None
        if changed is None:
            raise ReleasePolicyError(f"{model}: nothing to {name}")
        _report(model, rollout_json(changed), as_json)

    return command


_operator_command("pause", moves.pause, "Pause a rollout: its current wave keeps the version, nothing advances.")
_operator_command("resume", moves.resume, "Resume a paused or halted rollout at its wave, with the same devices.")
_operator_command("halt", moves.halt, "Halt a rollout: nobody new is offered its version (see `edgerec revert`).")
_operator_command("approve", moves.approve, "Approve a rollout waiting after a passed wave: start its next wave.")


@rollout.command("status")
@registry_options
@_model_option
@_json_option
def status(registry_spec: str, s3_endpoint: str | None, model: str, as_json: bool) -> None:
    """Each rollout of MODEL: state, waves, devices per wave (from the fleet records), gate numbers."""
    from edgerec.server.release.fleet_store import RegistryFleet
    from edgerec.server.release.view import policy_view

    registry = _open(registry_spec, s3_endpoint, model)
    policy, _ = load_policy(registry, model)
    devices = RegistryFleet(registry, replica_id="cli-status").devices(model)
    view = policy_view(policy or ReleasePolicy(model), devices)
    if as_json:
        emit_json(view)
        return
    if not view["rollouts"]:
        click.echo(f"{model} has no rollouts; channels: {view['channels'] or 'none (every device tracks the latest)'}")
        return
    for r in view["rollouts"]:
        _print_rollout(model, r)
        rows = [
            (w["wave"], f"{w['percent']:g}%", w["devices"], w["on_version"], w["status"], w["verdict"] or "-")
            for w in r["wave_table"]
        ]
        print_table("Waves", ["wave", "share", "devices", f"on v{r['version']}", "status", "gate"], rows)
        for gate in r["gates"]:
            numbers = ", ".join(f"{k}={v:.4g}" for k, v in gate["numbers"].items())
            click.echo(
                f"  wave {gate['wave'] + 1}: {gate['verdict']} ({gate['treatment']} vs {gate['control']}) {numbers}"
            )
            for reason in gate["reasons"]:
                click.echo(f"    - {reason}")


# --- channels -----------------------------------------------------------------------


@click.group()
def channel() -> None:
    """Channels: which version the devices of a channel track (none set: the latest)."""


@channel.command("set")
@registry_options
@_model_option
@click.option("--channel", "name", default="stable", show_default=True, help="Channel name.")
@click.option("--version", type=int, required=True, help="Published version; 0 removes the channel (latest).")
@_json_option
def channel_set(
    registry_spec: str, s3_endpoint: str | None, model: str, name: str, version: int, as_json: bool
) -> None:
    """Point a channel at a version."""
    from edgerec.attributes import validate_channel

    validate_channel(name)
    registry = _open(registry_spec, s3_endpoint, model)
    if version and version not in registry.versions(model):
        raise click.ClickException(f"{model} has no version {version}")

    def change(policy: ReleasePolicy) -> ReleasePolicy:
        channels = {k: v for k, v in policy.channels.items() if k != name}
        if version:
            channels[name] = version
        return dataclasses.replace(policy, channels=channels)

    policy = update_policy(registry, model, change)
    _channels_out(model, policy, as_json)


@channel.command("ls")
@registry_options
@_model_option
@_json_option
def channel_ls(registry_spec: str, s3_endpoint: str | None, model: str, as_json: bool) -> None:
    """List a model's channels."""
    registry = _open(registry_spec, s3_endpoint, model)
    policy, _ = load_policy(registry, model)
    _channels_out(model, policy or ReleasePolicy(model), as_json)


def _channels_out(model: str, policy: ReleasePolicy, as_json: bool) -> None:
    if as_json:
        emit_json({"model": model, "channels": dict(sorted(policy.channels.items()))})
    else:
        rows = sorted(policy.channels.items())
        print_table(f"Channels of {model}", ["channel", "version"], rows, caption="others track the latest version")


# --- pins ---------------------------------------------------------------------------


@click.group()
def pin() -> None:
    """Pins: a device, or the devices a --where expression selects, get one version."""


def _pin_target(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--where", default="", help="Targeting expression selecting the devices.")(func)
    return click.option("--device", "device_id", default="", help="Device id.")(func)


def _one_target(device_id: str, where: str) -> None:
    if bool(device_id) == bool(where):
        raise click.UsageError("give exactly one of --device and --where")
    if where:
        targeting.parse(where)
    if device_id:
        from edgerec.tokens import DEVICE_ID_PATTERN

        if not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise click.BadParameter(f"{device_id!r} is not a device id")


@pin.command("set")
@registry_options
@_model_option
@_pin_target
@click.option("--version", type=int, required=True, help="Published version.")
@_json_option
def pin_set(
    registry_spec: str, s3_endpoint: str | None, model: str, device_id: str, where: str, version: int, as_json: bool
) -> None:
    """Pin a device (--device) or a labelled group (--where) to a version."""
    _one_target(device_id, where)
    registry = _open(registry_spec, s3_endpoint, model)
    if version not in registry.versions(model):
        raise click.ClickException(f"{model} has no version {version}")

    def change(policy: ReleasePolicy) -> ReleasePolicy:
        if device_id:
            return dataclasses.replace(policy, device_pins={**policy.device_pins, device_id: version})
        pins = (*tuple(p for p in policy.label_pins if p.where != where), LabelPin(where, version))
        return dataclasses.replace(policy, label_pins=pins)

    _pins_out(model, update_policy(registry, model, change), as_json)


@pin.command("clear")
@registry_options
@_model_option
@_pin_target
@_json_option
def pin_clear(
    registry_spec: str, s3_endpoint: str | None, model: str, device_id: str, where: str, as_json: bool
) -> None:
    """Remove a device's pin or a --where pin."""
    _one_target(device_id, where)
    registry = _open(registry_spec, s3_endpoint, model)

    def change(policy: ReleasePolicy) -> ReleasePolicy:
        return dataclasses.replace(
            policy,
            device_pins={k: v for k, v in policy.device_pins.items() if k != device_id},
            label_pins=tuple(p for p in policy.label_pins if p.where != where or not where),
        )

    _pins_out(model, update_policy(registry, model, change), as_json)


@pin.command("ls")
@registry_options
@_model_option
@_json_option
def pin_ls(registry_spec: str, s3_endpoint: str | None, model: str, as_json: bool) -> None:
    """List a model's pins."""
    registry = _open(registry_spec, s3_endpoint, model)
    policy, _ = load_policy(registry, model)
    _pins_out(model, policy or ReleasePolicy(model), as_json)


def _pins_out(model: str, policy: ReleasePolicy, as_json: bool) -> None:
    devices = [{"device": k, "version": v} for k, v in sorted(policy.device_pins.items())]
    labels = [{"where": p.where, "version": p.version} for p in policy.label_pins]
    if as_json:
        emit_json({"model": model, "devices": devices, "labels": labels})
        return
    rows = [("device", d["device"], d["version"]) for d in devices] + [
        ("where", p["where"], p["version"]) for p in labels
    ]
    print_table(f"Pins of {model}", ["kind", "selects", "version"], rows)


# --- revert -------------------------------------------------------------------------


@click.command("revert")
@registry_options
@_model_option
@click.option("--to", "to_version", type=int, required=True, help="The good version whose bytes come back.")
@_json_option
def revert(registry_spec: str, s3_endpoint: str | None, model: str, to_version: int, as_json: bool) -> None:
    """Publish version --to's bytes as a new version and offer it to every device that ran a newer one."""
    from edgerec.server.release.revert import revert as do_revert

    registry = _open(registry_spec, s3_endpoint, model)
    result = do_revert(registry, model, to_version)
    if as_json:
        emit_json(result.as_json())
        return
    click.echo(
        f"{model}: version {result.version} carries version {result.to_version}'s bytes; devices on "
        f"{', '.join(map(str, result.bad_versions))} are offered it"
        + (f"; halted {', '.join(result.halted)}" if result.halted else "")
    )
