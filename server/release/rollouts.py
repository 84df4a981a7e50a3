"""A staged rollout's states and the moves between them: pure functions from a policy to a policy.

States: ``running`` (the gates are checked and the waves advance), ``paused`` (the current wave keeps
its version, nothing advances), ``awaiting_approval`` (the wave passed; an operator's approve starts
the next one), ``halted`` (nobody new is offered the version; devices that installed it keep it until a
revert) and ``completed`` (the last wave passed). ``resume`` takes a paused or halted rollout back to
running at the wave it was in: the cohorts are the same devices as before.

Every move is applied with ``policy.update_policy`` (compare-and-swap), so of two replicas or
operators moving the same rollout at once, one wins and the other re-reads and re-decides.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from edgerec.errors import ReleasePolicyError
from edgerec.server.release import cohorts, targeting
from edgerec.server.release.gates import GateReport, GateValue, check_overrides
from edgerec.server.release.policy import (
    MAX_EVENTS,
    GateRecord,
    ReleasePolicy,
    Rollout,
    RolloutEvent,
    RolloutState,
    check_waves,
)

log = logging.getLogger(__name__)

__all__ = [
    "GATE_RECORD_EVERY_S",
    "approve",
    "find_rollout",
    "gate_overrides",
    "halt",
    "pause",
    "resume",
    "start_rollout",
    "step",
]

GATE_RECORD_EVERY_S = 60.0
"""How often a wave's unchanged verdict is written again with fresh numbers (each write moves the
registry's change stamp, so not on every tick)."""
MAX_REASON_CHARS = 400


def start_rollout(
    policy: ReleasePolicy,
    *,
    version: int,
    published: Sequence[int],
    now: float,
    waves: Sequence[float] = (1.0, 10.0, 50.0, 100.0),
    wave_min_time_s: float = 0.0,
    where: str = "",
    channel: str = "stable",
    require_approval: bool = False,
    seed: str | None = None,
    gate_thresholds: Mapping[str, Any] | None = None,
) -> ReleasePolicy:
    """``policy`` with a new running rollout of ``version`` to ``channel``, in its first wave.

    Its baseline is the channel's version, or the newest published version below ``version`` when the
    channel names none (the channel is then pointed at it, so devices outside the waves stay there).
    ``gate_thresholds`` overrides named gate thresholds of the server's for this rollout (ReleasePolicyError
    on an unknown name, a wrong type or a value out of range).
    """
    if version not in published:
        raise ReleasePolicyError(f"{policy.model} has no version {version} (published: {list(published)[-10:]})")
    check_waves(tuple(waves))
    if not 0 <= wave_min_time_s <= 366 * 24 * 3600:
        raise ReleasePolicyError(f"wave minimum time must be 0..366 days, got {wave_min_time_s} s")
    if where:
        targeting.parse(where)
    overrides = gate_overrides(gate_thresholds or {})
    busy = next((r for r in policy.rollouts if r.active and r.channel == channel), None)
    if busy is not None:
        raise ReleasePolicyError(
            f"rollout {busy.id} of version {busy.version} is still {busy.state} on channel {channel!r}: "
            "halt it or let it complete first"
        )
    baseline = policy.channels.get(channel) or max((v for v in published if v < version), default=0)
    if baseline == 0:
        raise ReleasePolicyError(f"no version of {policy.model} before {version} to keep the other devices on")
    if baseline >= version:
        raise ReleasePolicyError(
            f"channel {channel!r} is at version {baseline}; a rollout offers a newer version than that"
        )
    rollout_seed = seed or cohorts.new_seed()
    rollout = Rollout(
        id=f"r-{version}-{rollout_seed[:8]}",
        version=version,
        baseline_version=baseline,
        channel=channel,
        seed=rollout_seed,
        waves=tuple(float(w) for w in waves),
        wave_min_time_s=float(wave_min_time_s),
        state="running",
        wave_index=0,
        started_unix_s=now,
        wave_started_unix_s=now,
        where=where,
        require_approval=require_approval,
        reason="started",
        events=(RolloutEvent(now, "running", 0, "started"),),
        gate_thresholds=overrides,
    )
    channels = {**policy.channels, channel: baseline}
    return dataclasses.replace(policy, channels=channels).with_rollout(rollout)


def gate_overrides(overrides: Mapping[str, Any]) -> dict[str, GateValue]:
    """``overrides`` of named gate thresholds, checked (``gates.check_overrides``); ReleasePolicyError if not."""
    try:
        return check_overrides(overrides)
    except ValueError as exc:
        raise ReleasePolicyError(f"bad gate thresholds: {exc}") from None


def find_rollout(policy: ReleasePolicy, rollout_id: str = "", *, states: Sequence[str] = ()) -> Rollout:
    """The rollout ``rollout_id`` names, else the newest one in one of ``states``; ReleasePolicyError if none."""
    for rollout in reversed(policy.rollouts):
        if rollout.id == rollout_id if rollout_id else (not states or rollout.state in states):
            return rollout
    wanted = f"rollout {rollout_id!r}" if rollout_id else f"rollout that is {' or '.join(states) or 'known'}"
    raise ReleasePolicyError(f"{policy.model} has no {wanted}")


def _move(rollout: Rollout, state: RolloutState, now: float, reason: str, wave_index: int | None = None) -> Rollout:
    reason = reason[:MAX_REASON_CHARS]
    wave = rollout.wave_index if wave_index is None else wave_index
    events = (*rollout.events, RolloutEvent(now, state, wave, reason))[-MAX_EVENTS:]
    started = now if wave != rollout.wave_index else rollout.wave_started_unix_s
    return dataclasses.replace(
        rollout, state=state, wave_index=wave, wave_started_unix_s=started, reason=reason, events=events
    )


def _operator_move(policy: ReleasePolicy, rollout_id: str, allowed: Sequence[str], verb: str) -> Rollout:
    rollout = find_rollout(policy, rollout_id, states=allowed)
    if rollout.state not in allowed:
        raise ReleasePolicyError(f"rollout {rollout.id} is {rollout.state}: cannot {verb} it")
    return rollout


def pause(policy: ReleasePolicy, rollout_id: str, now: float, reason: str = "paused by operator") -> ReleasePolicy:
    """Stop the waves where they are (the current wave keeps being offered the version)."""
    rollout = _operator_move(policy, rollout_id, ("running", "awaiting_approval"), "pause")
    return policy.with_rollout(_move(rollout, "paused", now, reason))


def resume(policy: ReleasePolicy, rollout_id: str, now: float, reason: str = "resumed by operator") -> ReleasePolicy:
    """A paused or halted rollout runs again from the wave it was in, with the same cohorts."""
    rollout = _operator_move(policy, rollout_id, ("paused", "halted"), "resume")
    busy = next((r for r in policy.rollouts if r.active and r.channel == rollout.channel and r.id != rollout.id), None)
    if busy is not None:
        raise ReleasePolicyError(f"rollout {busy.id} is {busy.state} on channel {rollout.channel!r}")
    return policy.with_rollout(_move(rollout, "running", now, reason))


def halt(policy: ReleasePolicy, rollout_id: str, now: float, reason: str = "halted by operator") -> ReleasePolicy:
    """Nobody new is offered the version (devices that run it keep it until a revert)."""
    rollout = _operator_move(policy, rollout_id, ("running", "paused", "awaiting_approval"), "halt")
    return policy.with_rollout(_move(rollout, "halted", now, reason))


def approve(policy: ReleasePolicy, rollout_id: str, now: float, reason: str = "approved by operator") -> ReleasePolicy:
    """Start the next wave of a rollout that waits for approval (or complete it after its last wave)."""
    rollout = _operator_move(policy, rollout_id, ("awaiting_approval",), "approve")
    return _next_wave(policy, rollout, now, reason)


def _next_wave(policy: ReleasePolicy, rollout: Rollout, now: float, reason: str) -> ReleasePolicy:
    if rollout.wave_index + 1 < len(rollout.waves):
        return policy.with_rollout(_move(rollout, "running", now, reason, rollout.wave_index + 1))
    done = policy.with_rollout(_move(rollout, "completed", now, reason))
    if not rollout.where and rollout.waves[-1] >= 100:
        # Every device of the channel runs it now: the channel moves, and later rollouts start from it.
        done = dataclasses.replace(done, channels={**done.channels, rollout.channel: rollout.version})
    return done


def step(
    policy: ReleasePolicy, rollout_id: str, report: GateReport, now: float, *, treatment: int, control: int
) -> ReleasePolicy:
    """The controller's move of a running rollout given its current wave's gate ``report``.

    Fail: halted. Pass once the wave's minimum time has passed: the next wave (or awaiting approval,
    or completed). Otherwise the verdict is recorded when it changed or went stale, and nothing moves.
    """
    rollout = policy.rollout(rollout_id)
    if rollout is None or rollout.state != "running":
        return policy
    wave = rollout.wave_index
    previous = rollout.gate(wave)
    record = GateRecord(
        wave=wave,
        verdict=report.verdict,
        at_unix_s=now,
        treatment=treatment,
        control=control,
        reasons=tuple(r[:MAX_REASON_CHARS] for r in report.reasons[:16]),
        numbers=dict(list(report.numbers.items())[:64]),
    )
    gated = dataclasses.replace(rollout, gates=(*(g for g in rollout.gates if g.wave != wave), record))
    percent = f"wave {wave + 1} ({rollout.percent:g}%)"
    if report.verdict == "fail":
        why = "; ".join(report.reasons) or "an error condition tripped"
        log.warning("rollout %s of %s v%d halted in %s: %s", rollout.id, policy.model, rollout.version, percent, why)
        return policy.with_rollout(_move(gated, "halted", now, f"gate failed in {percent}: {why}"))
    if report.verdict == "pass" and now - rollout.wave_started_unix_s >= rollout.wave_min_time_s:
        log.info("rollout %s of %s v%d passed %s", rollout.id, policy.model, rollout.version, percent)
        moved = policy.with_rollout(gated)
        if rollout.require_approval:
            return moved.with_rollout(_move(gated, "awaiting_approval", now, f"{percent} passed; waiting for approval"))
        return _next_wave(moved, gated, now, f"{percent} passed")
    if previous is not None and previous.verdict == report.verdict and now - previous.at_unix_s < GATE_RECORD_EVERY_S:
        return policy
    return policy.with_rollout(gated)
