"""Which version a device is offered: a pure function of the policy, what the device said, and the versions.

Precedence, first that applies:

1. a pin of the device's id, then the first label pin whose ``where`` selects it;
2. the newest rollout of the device's channel that is not halted and whose ``where`` selects it:
   inside the current wave, the rollout's version; outside it, the rollout's baseline (the previous
   release), or the version the device runs when that is newer;
3. the device's channel, when the policy points it at a version;
4. the latest version.

Then reverts: a device running a version a revert named bad is offered the revert's version. A
decided version that is not published is skipped (the next rule decides). The planner never offers a
version below the one a device runs (the device would refuse it): it keeps the device where it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgerec.attributes import channel_or_default, validate_labels
from edgerec.server.release import cohorts, targeting
from edgerec.server.release.policy import ReleasePolicy, Rollout
from edgerec.v1 import update_pb2

__all__ = ["Decision", "Device", "decide", "device_of_request", "in_rollout_wave", "targets"]


@dataclass(frozen=True)
class Device:
    """What a device said about itself in a CheckUpdate (unsigned: it decides an offer, never trust)."""

    device_id: str
    channel: str = "stable"
    current_version: int = 0
    runtimes: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ()
    app_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def attributes(self) -> targeting.Attributes:
        return targeting.Attributes(self.runtimes, self.recipes, self.app_version, self.channel, self.labels)


@dataclass(frozen=True)
class Decision:
    """The version to offer and the rule that chose it (``pin``, ``label-pin``, ``rollout``,
    ``rollout-hold``, ``channel``, ``latest``, ``revert``); ``rollout_id`` when a rollout did."""

    version: int
    rule: str
    rollout_id: str = ""


def device_of_request(request: update_pb2.CheckUpdateRequest) -> Device:
    """The device a CheckUpdate describes (channel and labels checked: InvalidInputError when off bounds)."""
    return Device(
        device_id=request.device_id,
        channel=channel_or_default(request.channel),
        current_version=request.current_version,
        runtimes=tuple(request.runtimes),
        recipes=tuple(request.recipes),
        app_version=request.app_version,
        labels=validate_labels(request.labels),
    )


def targets(rollout: Rollout, attributes: targeting.Attributes) -> bool:
    """Whether ``rollout`` applies to a device of ``attributes`` (its channel and its ``where``)."""
    return attributes.channel == rollout.channel and targeting.matches(rollout.where, attributes)


def in_rollout_wave(rollout: Rollout, device_id: str) -> bool:
    """Whether the device's cohort falls in ``rollout``'s current wave."""
    return cohorts.in_wave(rollout.seed, device_id, rollout.percent)


def decide(policy: ReleasePolicy | None, device: Device, published: Sequence[int], latest: int) -> Decision:
    """The version ``device`` is offered (see the module's precedence); ``latest`` is the newest full version."""
    if policy is None:
        return Decision(latest, "latest")
    valid = set(published)
    current = device.current_version if device.current_version in valid else 0
    decision = _decide(policy, device, valid, current, latest)
    for revert in reversed(policy.reverts):
        if current in revert.bad_versions and revert.version in valid and decision.version <= current:
            return Decision(revert.version, "revert")
    return decision


def _decide(policy: ReleasePolicy, device: Device, valid: set[int], current: int, latest: int) -> Decision:
    pinned = policy.device_pins.get(device.device_id)
    if pinned in valid and pinned is not None:
        return Decision(pinned, "pin")
    attributes = device.attributes()
    for pin in policy.label_pins:
        if pin.version in valid and targeting.matches(pin.where, attributes):
            return Decision(pin.version, "label-pin")
    for rollout in reversed(policy.rollouts):
        if rollout.state == "halted" or not targets(rollout, attributes):
            continue
        if rollout.version in valid and in_rollout_wave(rollout, device.device_id):
            return Decision(rollout.version, "rollout", rollout.id)
        if rollout.baseline_version in valid:
            return Decision(max(rollout.baseline_version, current), "rollout-hold", rollout.id)
    channel_version = policy.channels.get(device.channel)
    if channel_version is not None and channel_version in valid:
        return Decision(channel_version, "channel")
    return Decision(latest, "latest")
