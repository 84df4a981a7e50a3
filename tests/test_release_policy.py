"""The release policy's parts in memory: targeting expressions, sticky cohorts, the policy document read
as hostile, compare-and-swap updates on a real registry folder, and the decision's precedence."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec.errors import InvalidInputError, ReleasePolicyError, TargetingError
from edgerec.registry import Registry
from edgerec.server.release import cohorts, targeting
from edgerec.server.release.decide import Device, decide
from edgerec.server.release.gates import OVERRIDABLE, GateThresholds
from edgerec.server.release.policy import (
    LabelPin,
    ReleasePolicy,
    Revert,
    Rollout,
    decode_policy,
    encode_policy,
    load_policy,
    policy_key,
    update_policy,
)
from edgerec.server.release.rollouts import start_rollout

EU_ORT = targeting.Attributes(
    runtimes=("onnxruntime", "tflite"), recipes=("int8", "fp32"), app_version="5.1", channel="stable",
    labels={"region": "eu", "tier": "gold"},
)  # fmt: skip


# --- targeting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("runtime == 'onnxruntime'", True),
        ("runtime == 'litert'", False),
        ("runtime != 'litert'", True),
        ("runtimes != 'tflite'", False),
        ("region in ('eu', 'us')", True),
        ("region not in ('eu', 'us')", False),
        ("missing == 'x'", False),
        ("missing != 'x'", True),
        ("missing not in ('x',)", True),
        ("runtime == 'onnxruntime' and region in ('eu', 'us')", True),
        ("runtime == 'onnxruntime' and not (region == 'eu' or tier == 'gold')", False),
        ('not not region == "eu"', True),
        ("app_version == '5.1' and channel == 'stable' and recipe in ('int4', 'int8')", True),
        ("region == 'us' or tier == 'gold' and app_version == '9'", False),  # and binds tighter
        ("(region == 'us' or tier == 'gold') and app_version == '5.1'", True),
    ],
)
def test_expressions_select_what_they_say(where: str, expected: bool) -> None:
    assert targeting.parse(where).matches(EU_ORT) is expected


@pytest.mark.parametrize(
    "where",
    [
        "",
        "region",
        "region ==",
        "region == eu",
        "region = 'eu'",
        "region == 'eu' and",
        "(region == 'eu'",
        "region == 'eu')",
        "region in ()",
        "region in 'eu'",
        "__import__('os') == 'x'",
        "region == 'e\\u'",
        "region == 'eu' ; drop",
        "in == 'x'",
        "region == 'eu\x00'",
        "x == '" + "a" * 200 + "'",
        "not " * 40 + "region == 'eu'",
        "(" * 40 + "region == 'eu'" + ")" * 40,
        "a == 'b' or " * 200 + "a == 'b'",
    ],
)
def test_bad_expressions_are_typed_errors(where: str) -> None:
    with pytest.raises(TargetingError):
        targeting.parse(where)
    assert issubclass(TargetingError, InvalidInputError)  # INVALID_ARGUMENT if it ever crosses the wire


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_targeting_error(text: str) -> None:
    try:
        expression = targeting.parse(text)
    except TargetingError:
        return
    assert isinstance(expression.matches(EU_ORT), bool)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["region", "==", "!=", "in", "not", "and", "or", "(", ")", ",", "'eu'", '"us"', "runtime"]),
        max_size=40,
    )
)
def test_token_soup_parses_or_is_a_targeting_error(tokens: list[str]) -> None:
    with contextlib.suppress(TargetingError):
        targeting.parse(" ".join(tokens)).matches(EU_ORT)


# --- cohorts --------------------------------------------------------------------------


def test_cohorts_are_sticky_nested_and_near_their_share() -> None:
    devices = [f"device-{i}" for i in range(20_000)]
    waves = [1.0, 10.0, 50.0, 100.0]
    members = [{d for d in devices if cohorts.in_wave("seed-one", d, w)} for w in waves]
    for smaller, larger in itertools.pairwise(members):
        assert smaller <= larger, "a wider wave only adds devices"
    assert len(members[-1]) == len(devices)
    for wave, share in zip(waves[:-1], members[:-1], strict=True):
        assert abs(len(share) / len(devices) * 100 - wave) < max(0.5, wave * 0.1)
    # The same rule, asked again (another replica, after a halt), gives the same devices.
    assert {d for d in devices if cohorts.in_wave("seed-one", d, 10.0)} == members[1]
    # Another rollout draws afresh.
    other = {d for d in devices if cohorts.in_wave("seed-two", d, 10.0)}
    assert len(other & members[1]) < len(members[1]) / 2


# --- the document, read as hostile -------------------------------------------------------


def _rollout(**changes: object) -> Rollout:
    base = Rollout(
        id="r-1",
        version=3,
        baseline_version=2,
        channel="stable",
        seed="0123456789abcdef",
        waves=(1.0, 10.0, 50.0, 100.0),
        wave_min_time_s=0.0,
        state="running",
        wave_index=0,
        started_unix_s=1000.0,
        wave_started_unix_s=1000.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _policy(**changes: object) -> ReleasePolicy:
    base = ReleasePolicy(
        "ctr",
        channels={"stable": 2, "canary": 3},
        device_pins={"kiosk-1": 1},
        label_pins=(LabelPin("region == 'cn'", 1),),
        rollouts=(_rollout(where="runtime == 'onnxruntime'"),),
        reverts=(Revert(4, 2, (3,), 2000.0),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_policy_round_trips_through_its_document() -> None:
    policy = _policy()
    assert decode_policy(encode_policy(policy), "ctr") == policy


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="edgerec.release-policy/9"),
        lambda d: d.update(model="other"),
        lambda d: d.update(channels={"stable": "2"}),
        lambda d: d.update(channels={"stable": True}),
        lambda d: d.update(channels={"Bad Name": 2}),
        lambda d: d.update(channels={"stable": -1}),
        lambda d: d.update(channels={"stable": 10**30}),
        lambda d: d.update(channels=[1, 2]),
        lambda d: d["pins"].update(devices={"../../etc": 1}),
        lambda d: d["pins"].update(labels=[{"where": "__import__('os')", "version": 1}]),
        lambda d: d["rollouts"][0].update(waves=[50, 10]),
        lambda d: d["rollouts"][0].update(waves=[0, 10]),
        lambda d: d["rollouts"][0].update(waves=[float("nan")]),
        lambda d: d["rollouts"][0].update(wave_index=7),
        lambda d: d["rollouts"][0].update(state="exploded"),
        lambda d: d["rollouts"][0].update(seed="short"),
        lambda d: d["rollouts"][0].update(reason="x" * 10_000),
        lambda d: d["rollouts"][0].update(require_approval="yes"),
        lambda d: d["rollouts"][0].update(gates=[{"wave": 9, "verdict": "pass", "at_unix_s": 1}]),
        lambda d: d.update(rollouts=[{}] * 1000),
        lambda d: d.update(reverts=[{"version": 4}]),
        # A rollout's own gate thresholds: only known names, their types, their ranges, a bounded object.
        lambda d: d["rollouts"][0].update(gate_thresholds=[["max_install_failure_rate", 0.01]]),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_install_failure": 0.01}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"__class__": 1}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_install_failure_rate": "0.01"}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_install_failure_rate": True}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_install_failure_rate": None}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"min_devices": 2.5}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"min_devices": 10.0}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"min_devices": 10**30}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"require_control": 0}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_install_failure_rate": 1.5}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_rollback_rate": -0.1}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"min_devices": 0}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"ctr_alpha": 0}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_p99_ratio": 0.5}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"silent_after_s": float("inf")}),
        lambda d: d["rollouts"][0].update(gate_thresholds={"max_silent_rate": float("nan")}),
        lambda d: d["rollouts"][0].update(gate_thresholds={f"t{i}": 0.1 for i in range(10_000)}),
    ],
)
def test_a_garbled_policy_is_a_typed_error(mutate: object) -> None:
    doc = json.loads(encode_policy(_policy()))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ReleasePolicyError):
        decode_policy(json.dumps(doc).encode(), "ctr")


def test_a_rollouts_gate_thresholds_round_trip_typed() -> None:
    overrides = {"max_install_failure_rate": 0.01, "min_devices": 3, "require_control": False}
    policy = _policy(rollouts=(_rollout(gate_thresholds=overrides),))
    decoded = decode_policy(encode_policy(policy), "ctr")
    assert decoded == policy
    (stored,) = json.loads(encode_policy(policy))["rollouts"]
    assert stored["gate_thresholds"] == overrides
    # An integer written for a rate is read as the float it is; an integer threshold stays an integer.
    stored["gate_thresholds"]["max_install_failure_rate"] = 0
    doc = {**json.loads(encode_policy(policy)), "rollouts": [stored]}
    read = decode_policy(json.dumps(doc).encode(), "ctr").rollouts[0].gate_thresholds
    assert read == {"max_install_failure_rate": 0.0, "min_devices": 3, "require_control": False}
    assert [type(v) for v in read.values()] == [float, int, bool]


def test_a_document_without_gate_thresholds_is_rewritten_byte_identical() -> None:
    data = encode_policy(_policy())
    assert b"gate_thresholds" not in data, "a rollout without overrides is stored as before"
    decoded = decode_policy(data, "ctr")
    assert decoded.rollouts[0].gate_thresholds == {}
    assert encode_policy(decoded) == data
    # The same document with an explicit empty object reads the same and is written without it.
    doc = json.loads(data)
    doc["rollouts"][0]["gate_thresholds"] = {}
    assert encode_policy(decode_policy(json.dumps(doc).encode(), "ctr")) == data


def test_a_rollout_starts_with_checked_gate_thresholds() -> None:
    base = ReleasePolicy("ctr", channels={"stable": 2})
    started = start_rollout(base, version=3, published=[1, 2, 3], now=0.0, gate_thresholds={"min_devices": 4})
    assert started.rollouts[0].gate_thresholds == {"min_devices": 4}
    for bad in ({"nope": 1}, {"min_devices": "4"}, {"max_silent_rate": 2.0}):
        with pytest.raises(ReleasePolicyError, match="gate threshold"):
            start_rollout(base, version=3, published=[1, 2, 3], now=0.0, gate_thresholds=bad)


_gate_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(OVERRIDABLE)), st.text(max_size=8)), _gate_values, max_size=6))
def test_any_gate_thresholds_read_as_valid_thresholds_or_a_typed_error(overrides: dict[str, object]) -> None:
    doc = json.loads(encode_policy(_policy()))
    doc["rollouts"][0]["gate_thresholds"] = overrides
    try:
        policy = decode_policy(json.dumps(doc).encode(), "ctr")
    except ReleasePolicyError:
        return
    read = policy.rollouts[0].gate_thresholds
    assert set(read) == set(overrides) <= set(OVERRIDABLE)
    assert all(type(v) is OVERRIDABLE[k] and v == overrides[k] for k, v in read.items())
    GateThresholds().overridden(read)  # in range, so the controller can apply them
    assert decode_policy(encode_policy(policy), "ctr") == policy


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xfe", b"[]", b"null", b"{" * 100_000, b'{"format": 1}', b"1e999999", b"x" * (1024 * 1024 + 1)]
)
def test_hostile_bytes_are_a_typed_error(data: bytes) -> None:
    with pytest.raises(ReleasePolicyError):
        decode_policy(data, "ctr")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_are_a_typed_error(data: bytes) -> None:
    with contextlib.suppress(ReleasePolicyError):
        decode_policy(data, "ctr")


def test_concurrent_updates_are_never_lost(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    errors: list[BaseException] = []

    def add(name: str) -> Callable[[ReleasePolicy], ReleasePolicy]:
        return lambda p: dataclasses.replace(p, device_pins={**p.device_pins, name: 1})

    def pin(i: int) -> None:
        try:
            for j in range(5):
                update_policy(registry, "ctr", add(f"d-{i}-{j}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pin, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    policy, etag = load_policy(registry, "ctr")
    assert policy is not None and etag is not None
    assert len(policy.device_pins) == 20
    # Model names with capitals or ".." still get a valid document key.
    assert policy_key("CTR..x").startswith("release/m-")


# --- the decision ---------------------------------------------------------------------


def _in_and_out(rollout: Rollout) -> tuple[str, str]:
    ids = [f"dev-{i}" for i in range(2000)]
    inside = next(d for d in ids if cohorts.in_wave(rollout.seed, d, rollout.percent))
    outside = next(d for d in ids if not cohorts.in_wave(rollout.seed, d, rollout.percent))
    return inside, outside


def test_without_a_policy_devices_track_the_latest() -> None:
    assert decide(None, Device("d"), [1, 2, 3], 3).version == 3


def test_precedence_pin_then_rollout_then_channel_then_latest() -> None:
    rollout = _rollout(where="runtime == 'onnxruntime'", waves=(10.0, 100.0))
    policy = _policy(rollouts=(rollout,), reverts=())
    inside, outside = _in_and_out(rollout)
    ort = ("onnxruntime",)
    published = [1, 2, 3]
    assert decide(policy, Device("kiosk-1", runtimes=ort), published, 3).rule == "pin"
    assert decide(policy, Device(inside, labels={"region": "cn"}, runtimes=ort), published, 3).rule == "label-pin"
    assert decide(policy, Device(inside, runtimes=ort), published, 3) == type(decide(None, Device("x"), [], 0))(
        3, "rollout", "r-1"
    )
    held = decide(policy, Device(outside, runtimes=ort), published, 3)
    assert (held.version, held.rule) == (2, "rollout-hold")
    # A new device outside the wave gets the previous release, not the latest.
    assert decide(policy, Device(outside, runtimes=ort, current_version=0), published, 3).version == 2
    # Not targeted: the channel.
    assert decide(policy, Device(inside, runtimes=("litert",)), published, 3).rule == "channel"
    assert decide(policy, Device(inside, channel="canary"), published, 3).version == 3
    # A channel the policy does not name: the latest.
    assert decide(policy, Device(inside, channel="beta"), published, 3).rule == "latest"
    # A halted rollout offers its version to nobody; a device already on it is held there by the planner.
    halted = _policy(rollouts=(dataclasses.replace(rollout, state="halted"),), reverts=())
    assert decide(halted, Device(inside, runtimes=ort), published, 3).version == 2
    # A pin to a version that is not published is skipped.
    gone = _policy(device_pins={"kiosk-1": 9}, rollouts=(), reverts=())
    assert decide(gone, Device("kiosk-1"), published, 3).rule == "channel"


def test_a_revert_moves_the_devices_of_the_bad_version() -> None:
    policy = _policy(rollouts=(), device_pins={}, channels={"stable": 4})
    assert decide(policy, Device("a", current_version=3), [1, 2, 3, 4], 4).version == 4
    policy = _policy(rollouts=(), device_pins={}, channels={"stable": 2})
    decision = decide(policy, Device("a", current_version=3), [1, 2, 3, 4], 4)
    assert (decision.version, decision.rule) == (4, "revert")
    assert decide(policy, Device("b", current_version=2), [1, 2, 3, 4], 4).version == 2


def test_a_stale_policy_is_read_again_by_one_request_while_the_others_keep_theirs(tmp_path: Path) -> None:
    from edgerec.registry import Document
    from edgerec.server.release.policy_cache import PolicyCache

    class HeldRegistry(Registry):
        """Counts document reads; the one after ``hold.set()`` waits for ``release``."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.reads = 0
            self.hold, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

        def get_document(self, key: str) -> Document | None:
            self.reads += 1
            if self.hold.is_set() and not self.entered.is_set():
                self.entered.set()
                self.release.wait(60)
            return super().get_document(key)

    registry = HeldRegistry(tmp_path / "registry")
    now = [0.0]
    cache = PolicyCache(registry, refresh_s=1.0, clock=lambda: now[0])
    assert cache.get("ctr") is None and registry.reads == 1
    now[0] = 5.0  # stale
    registry.hold.set()
    reader = threading.Thread(target=cache.get, args=("ctr",))
    reader.start()
    assert registry.entered.wait(60)
    assert [cache.get("ctr") for _ in range(5)] == [None] * 5 and registry.reads == 2  # kept, not read again
    registry.release.set()
    reader.join(60)
    now[0] = 10.0
    assert cache.get("ctr") is None and registry.reads == 3
