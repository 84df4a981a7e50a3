"""The release policy of one model: channels, pins, staged rollouts and reverts, as one registry document.

Publishing makes a version available; the policy decides who is offered it (``decide.py``). A model
without a policy document tracks its latest version. The document is JSON at
``release/m-<hash of the model>/policy``; it is read as hostile (another tool, an older release or a
damaged store may have written it): :func:`decode_policy` checks every field's type and bound and
raises ``ReleasePolicyError`` on the first one that is off, never anything else.

Every change goes through :func:`update_policy`: read, apply a pure change, write with
``put_document(if_match=...)``, and on a lost race read again and re-apply, so replicas and the CLI
never overwrite each other's changes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from edgerec.attributes import validate_channel
from edgerec.errors import EdgerecError, RegistryConflictError, ReleasePolicyError
from edgerec.registry import ModelRegistry
from edgerec.registry.base import MAX_DOCUMENT_BYTES, MAX_VERSION
from edgerec.server.release import targeting
from edgerec.server.release.gates import GateValue, check_overrides
from edgerec.tokens import DEVICE_ID_PATTERN

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "GateRecord",
    "LabelPin",
    "ReleasePolicy",
    "Revert",
    "Rollout",
    "RolloutEvent",
    "RolloutState",
    "decode_policy",
    "encode_policy",
    "load_policy",
    "policy_key",
    "update_policy",
]

FORMAT = "edgerec.release-policy/1"
RolloutState = Literal["running", "paused", "awaiting_approval", "halted", "completed"]
ROLLOUT_STATES: tuple[str, ...] = get_args(RolloutState)
ACTIVE_STATES = ("running", "paused", "awaiting_approval")
"""States of a rollout that still moves (the others are where it ended)."""

MAX_CHANNELS = 64
MAX_DEVICE_PINS = 10_000
MAX_LABEL_PINS = 64
MAX_ROLLOUTS = 32
MAX_REVERTS = 32
MAX_WAVES = 16
MAX_EVENTS = 64
MAX_GATE_NUMBERS = 64
MAX_TEXT_CHARS = 512
MAX_UPDATE_ATTEMPTS = 16


@dataclass(frozen=True)
class GateRecord:
    """The latest gate verdict of one wave, with the numbers behind it."""

    wave: int
    verdict: str
    at_unix_s: float
    treatment: int = 0
    control: int = 0
    reasons: tuple[str, ...] = ()
    numbers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutEvent:
    """One transition of a rollout: when, into which state and wave, and why."""

    at_unix_s: float
    state: str
    wave: int
    reason: str


@dataclass(frozen=True)
class Rollout:
    """A staged rollout of ``version`` to the devices of ``channel`` that ``where`` selects.

    Wave ``wave_index`` is current: devices whose cohort bucket (``cohorts.py``, by ``seed``) is below
    ``waves[wave_index]`` percent are offered ``version``; the others stay on ``baseline_version``.
    ``gate_thresholds`` overrides named ``GateThresholds`` fields of the server's for this rollout's gates
    (``gates`` holds the verdicts).
    """

    id: str
    version: int
    baseline_version: int
    channel: str
    seed: str
    waves: tuple[float, ...]
    wave_min_time_s: float
    state: RolloutState
    wave_index: int
    started_unix_s: float
    wave_started_unix_s: float
    where: str = ""
    require_approval: bool = False
    reason: str = ""
    gates: tuple[GateRecord, ...] = ()
    events: tuple[RolloutEvent, ...] = ()
    gate_thresholds: Mapping[str, GateValue] = field(default_factory=dict)

    @property
    def percent(self) -> float:
        """The share of targeted devices the current wave holds."""
        return self.waves[self.wave_index]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def gate(self, wave: int) -> GateRecord | None:
        """The latest gate verdict recorded for ``wave``."""
        return next((g for g in self.gates if g.wave == wave), None)


@dataclass(frozen=True)
class LabelPin:
    """Devices that ``where`` selects are offered ``version``."""

    where: str
    version: int


@dataclass(frozen=True)
class Revert:
    """``version`` republished the bytes of ``to_version``; devices on a ``bad_versions`` get ``version``."""

    version: int
    to_version: int
    bad_versions: tuple[int, ...]
    at_unix_s: float


@dataclass(frozen=True)
class ReleasePolicy:
    """Everything that decides which version a device of ``model`` is offered."""

    model: str
    channels: Mapping[str, int] = field(default_factory=dict)
    device_pins: Mapping[str, int] = field(default_factory=dict)
    label_pins: tuple[LabelPin, ...] = ()
    rollouts: tuple[Rollout, ...] = ()
    reverts: tuple[Revert, ...] = ()

    def rollout(self, rollout_id: str) -> Rollout | None:
        return next((r for r in self.rollouts if r.id == rollout_id), None)

    def with_rollout(self, rollout: Rollout) -> ReleasePolicy:
        """This policy with ``rollout`` replacing the one of its id (or added, the oldest ended ones dropped)."""
        rollouts = [r for r in self.rollouts if r.id != rollout.id]
        if len(rollouts) == len(self.rollouts):
            rollouts.append(rollout)
            while len(rollouts) > MAX_ROLLOUTS:
                ended = next((r for r in rollouts if not r.active), None)
                if ended is None:
                    raise ReleasePolicyError(f"{self.model} has {MAX_ROLLOUTS} rollouts still running")
                rollouts.remove(ended)
        else:
            rollouts = [rollout if r.id == rollout.id else r for r in self.rollouts]
        return replace(self, rollouts=tuple(rollouts))


def policy_key(model: str) -> str:
    """The registry document key of ``model``'s policy (model names may hold capitals: keyed by hash)."""
    return f"release/m-{hashlib.sha256(model.encode()).hexdigest()[:32]}/policy"


# --- encoding ---------------------------------------------------------------------


def encode_policy(policy: ReleasePolicy) -> bytes:
    """The document bytes of ``policy`` (checked to decode again: nothing unreadable is ever written)."""
    data = json.dumps(_policy_json(policy), sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ReleasePolicyError(f"{policy.model}'s policy would be {len(data)} bytes; at most {MAX_DOCUMENT_BYTES}")
    decode_policy(data, policy.model)
    return data


def policy_json(policy: ReleasePolicy) -> dict[str, Any]:
    """``policy`` as JSON-ready data (what the document, the CLI's ``--json`` and the web page show)."""
    return _policy_json(policy)


def _policy_json(policy: ReleasePolicy) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": policy.model,
        "channels": dict(sorted(policy.channels.items())),
        "pins": {
            "devices": dict(sorted(policy.device_pins.items())),
            "labels": [{"where": p.where, "version": p.version} for p in policy.label_pins],
        },
        "rollouts": [_stored_rollout(r) for r in policy.rollouts],
        "reverts": [revert_json(r) for r in policy.reverts],
    }


def revert_json(r: Revert) -> dict[str, Any]:
    """One revert as the policy document stores it."""
    return {
        "version": r.version,
        "to_version": r.to_version,
        "bad_versions": list(r.bad_versions),
        "at_unix_s": r.at_unix_s,
    }


def _stored_rollout(r: Rollout) -> dict[str, Any]:
    # A rollout without overrides is stored without the key, as before rollouts could set thresholds.
    data = rollout_json(r)
    if not r.gate_thresholds:
        del data["gate_thresholds"]
    return data


def rollout_json(r: Rollout) -> dict[str, Any]:
    """One rollout as JSON-ready data (``gate_thresholds`` always present, ``{}`` without overrides)."""
    return {
        "id": r.id,
        "version": r.version,
        "baseline_version": r.baseline_version,
        "channel": r.channel,
        "seed": r.seed,
        "waves": list(r.waves),
        "wave_min_time_s": r.wave_min_time_s,
        "where": r.where,
        "require_approval": r.require_approval,
        "state": r.state,
        "wave_index": r.wave_index,
        "started_unix_s": r.started_unix_s,
        "wave_started_unix_s": r.wave_started_unix_s,
        "reason": r.reason,
        "gates": [
            {
                "wave": g.wave,
                "verdict": g.verdict,
                "at_unix_s": g.at_unix_s,
                "treatment": g.treatment,
                "control": g.control,
                "reasons": list(g.reasons),
                "numbers": dict(sorted(g.numbers.items())),
            }
            for g in r.gates
        ],
        "events": [{"at_unix_s": e.at_unix_s, "state": e.state, "wave": e.wave, "reason": e.reason} for e in r.events],
        "gate_thresholds": dict(sorted(r.gate_thresholds.items())),
    }


# --- decoding (every byte hostile) ------------------------------------------------


def decode_policy(data: bytes, model: str) -> ReleasePolicy:
    """The policy in ``data``; ReleasePolicyError when it is not a well-formed policy of ``model``."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ReleasePolicyError(f"{model}'s policy document is {len(data)} bytes; at most {MAX_DOCUMENT_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
        return _decode(doc, model)
    except ReleasePolicyError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, EdgerecError) as exc:
        raise ReleasePolicyError(f"{model}'s release policy is unreadable: {str(exc)[:300]}") from None


def _decode(doc: Any, model: str) -> ReleasePolicy:
    obj = _object(doc, "policy")
    if obj.get("format") != FORMAT:
        raise ValueError(f"format is {str(obj.get('format'))[:80]!r}, not {FORMAT!r}")
    if obj.get("model") != model:
        raise ValueError(f"the document names model {str(obj.get('model'))[:80]!r}")
    channels = _object(obj.get("channels", {}), "channels")
    _bound(channels, MAX_CHANNELS, "channels")
    pins = _object(obj.get("pins", {}), "pins")
    devices = _object(pins.get("devices", {}), "pins.devices")
    _bound(devices, MAX_DEVICE_PINS, "device pins")
    for device_id in devices:
        if not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise ValueError(f"pinned device id {device_id[:80]!r} is not a device id")
    label_pins = _list(pins.get("labels", []), MAX_LABEL_PINS, "pins.labels")
    rollouts = _list(obj.get("rollouts", []), MAX_ROLLOUTS, "rollouts")
    reverts = _list(obj.get("reverts", []), MAX_REVERTS, "reverts")
    return ReleasePolicy(
        model=model,
        channels={_channel(k): _version(v, f"channel {k}") for k, v in channels.items()},
        device_pins={k: _version(v, f"pin of {k}") for k, v in devices.items()},
        label_pins=tuple(
            LabelPin(_where(p.get("where")), _version(p.get("version"), "label pin"))
            for p in (_object(x, "label pin") for x in label_pins)
        ),
        rollouts=tuple(_rollout(_object(x, "rollout")) for x in rollouts),
        reverts=tuple(_revert(_object(x, "revert")) for x in reverts),
    )


def _rollout(obj: dict[str, Any]) -> Rollout:
    waves = tuple(_number(w, "wave") for w in _list(obj.get("waves"), MAX_WAVES, "waves"))
    check_waves(waves, ValueError)
    state = _text(obj.get("state"), "state")
    if state not in ROLLOUT_STATES:
        raise ValueError(f"rollout state {state[:40]!r} is not one of {ROLLOUT_STATES}")
    wave_index = _int(obj.get("wave_index"), "wave_index", 0, len(waves) - 1)
    gates = tuple(_gate(_object(g, "gate"), len(waves)) for g in _list(obj.get("gates", []), MAX_WAVES, "gates"))
    events = tuple(
        RolloutEvent(
            _time(e.get("at_unix_s")),
            _text(e.get("state"), "event state"),
            _int(e.get("wave"), "event wave", 0, MAX_WAVES),
            _text(e.get("reason", ""), "event reason"),
        )
        for e in (_object(x, "event") for x in _list(obj.get("events", []), MAX_EVENTS, "events"))
    )
    seed = _text(obj.get("seed"), "seed")
    if not 8 <= len(seed) <= 64:
        raise ValueError("rollout seed must be 8..64 characters")
    rollout_id = _text(obj.get("id"), "id")
    if not 1 <= len(rollout_id) <= 64 or not rollout_id.replace("-", "").isalnum():
        raise ValueError(f"rollout id {rollout_id[:80]!r} is not an id")
    require_approval = obj.get("require_approval", False)
    if not isinstance(require_approval, bool):
        raise ValueError("require_approval must be true or false")
    return Rollout(
        id=rollout_id,
        version=_version(obj.get("version"), "rollout version"),
        baseline_version=_version(obj.get("baseline_version"), "baseline version", allow_zero=True),
        channel=_channel(obj.get("channel")),
        seed=seed,
        waves=waves,
        wave_min_time_s=_number(obj.get("wave_min_time_s"), "wave_min_time_s", 0, 366 * 24 * 3600),
        state=cast(RolloutState, state),
        wave_index=wave_index,
        started_unix_s=_time(obj.get("started_unix_s")),
        wave_started_unix_s=_time(obj.get("wave_started_unix_s")),
        where=_where(obj.get("where", "")),
        require_approval=require_approval,
        reason=_text(obj.get("reason", ""), "reason"),
        gates=gates,
        events=events,
        gate_thresholds=check_overrides(_object(obj.get("gate_thresholds", {}), "gate_thresholds")),
    )


def _gate(obj: dict[str, Any], waves: int) -> GateRecord:
    numbers = _object(obj.get("numbers", {}), "gate numbers")
    _bound(numbers, MAX_GATE_NUMBERS, "gate numbers")
    return GateRecord(
        wave=_int(obj.get("wave"), "gate wave", 0, waves - 1),
        verdict=_text(obj.get("verdict"), "verdict"),
        at_unix_s=_time(obj.get("at_unix_s")),
        treatment=_int(obj.get("treatment", 0), "treatment", 0, 2**53),
        control=_int(obj.get("control", 0), "control", 0, 2**53),
        reasons=tuple(_text(x, "gate reason") for x in _list(obj.get("reasons", []), 16, "gate reasons")),
        numbers={
            _text(k, "gate number name")[:64]: _number(v, "gate number", -math.inf, math.inf)
            for k, v in numbers.items()
        },
    )


def _revert(obj: dict[str, Any]) -> Revert:
    return Revert(
        version=_version(obj.get("version"), "revert version"),
        to_version=_version(obj.get("to_version"), "revert target"),
        bad_versions=tuple(_version(v, "bad version") for v in _list(obj.get("bad_versions"), 64, "bad versions")),
        at_unix_s=_time(obj.get("at_unix_s")),
    )


def check_waves(waves: tuple[float, ...], error: type[Exception] = ReleasePolicyError) -> None:
    """Waves are 1..16 strictly rising percentages in (0, 100]."""
    if not 1 <= len(waves) <= MAX_WAVES:
        raise error(f"a rollout has 1..{MAX_WAVES} waves, got {len(waves)}")
    if any(not 0 < w <= 100 for w in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
        raise error(f"waves must be rising percentages in (0, 100], got {list(waves)}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} must be an object")
    return value


def _list(value: Any, bound: int, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    if len(value) > bound:
        raise ValueError(f"{what} has {len(value)} entries; at most {bound}")
    return value


def _bound(value: Mapping[str, Any], bound: int, what: str) -> None:
    if len(value) > bound:
        raise ValueError(f"{len(value)} {what}; at most {bound}")


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}, got {str(value)[:40]}")
    return value


def _version(value: Any, what: str, *, allow_zero: bool = False) -> int:
    return _int(value, what, 0 if allow_zero else 1, MAX_VERSION)


def _number(value: Any, what: str, low: float = 0.0, high: float = 100.0) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{what} must be a finite number in [{low}, {high}], got {str(value)[:40]}")
    return float(value)


def _time(value: Any) -> float:
    return _number(value, "time", 0.0, 1e11)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} must be text of at most {MAX_TEXT_CHARS} characters")
    return value


def _channel(value: Any) -> str:
    name = _text(value, "channel")
    if not name:
        raise ValueError("empty channel name")
    return validate_channel(name)


def _where(value: Any) -> str:
    text = _text(value if value is not None else "", "where")
    if text:
        targeting.parse(text)
    return text


# --- reading and changing it in the registry -------------------------------------


def load_policy(registry: ModelRegistry, model: str) -> tuple[ReleasePolicy | None, str | None]:
    """``model``'s policy and its etag; (None, None) when it has none. ReleasePolicyError when unreadable."""
    document = registry.get_document(policy_key(model))
    if document is None:
        return None, None
    return decode_policy(document.data, model), document.etag


def update_policy(
    registry: ModelRegistry, model: str, change: Callable[[ReleasePolicy], ReleasePolicy | None]
) -> ReleasePolicy:
    """Apply ``change`` to ``model``'s policy (an empty one when it has none) and write it if it changed.

    ``change`` is pure and may run several times: on a lost race the policy is read again and the
    change re-applied. It returns None (or the same policy) to write nothing. Returns the policy
    as stored afterwards.
    """
    for _ in range(MAX_UPDATE_ATTEMPTS):
        current, etag = load_policy(registry, model)
        base = current if current is not None else ReleasePolicy(model)
        changed = change(base)
        if changed is None or changed == base:
            return base
        try:
            registry.put_document(policy_key(model), encode_policy(changed), if_match=etag)
        except RegistryConflictError:
            log.info("release policy of %s changed meanwhile; applying the change again", model)
            continue
        return changed
    raise ReleasePolicyError(f"{model}'s release policy kept changing under {MAX_UPDATE_ATTEMPTS} attempts; try again")
