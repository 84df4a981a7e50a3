"""The release policy on a real server on loopback: what CheckUpdate offers under channels, pins,
targeting and staged rollouts; cohorts across halts and resumes; late devices; two replicas agreeing;
a verifying device held below the latest. The controller is driven by explicit ticks, never by time.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from onnxtools import linear_model

from edgerec.device import EdgeClient
from edgerec.manifest import parse_manifest
from edgerec.registry import Registry
from edgerec.server.app import RunningServer, ServerConfig, start_server
from edgerec.server.release import cohorts, rollouts
from edgerec.server.release.gates import GateReport
from edgerec.server.release.policy import LabelPin, load_policy, update_policy
from edgerec.signing import generate_keypair
from edgerec.v1 import update_pb2, update_pb2_grpc

pytest.importorskip("onnx")

MODEL = "ctr-rel"


def publish_three(folder: Path) -> Registry:
    """A registry in ``folder`` with versions 1, 2 and 3 of MODEL (small linear models)."""
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(folder / "registry")
    for scale in (1.0, 2.0, 3.0):
        model = linear_model(folder / f"v{scale}.onnx", [scale * w for w in (0.1, 0.2, 0.3, 0.4)])
        publish(model, MODEL, registry, PublishOptions(no_gate=True))
    assert registry.versions(MODEL) == [1, 2, 3]
    return registry


def copy_of(registry: Registry, folder: Path) -> Registry:
    shutil.copytree(registry.root, folder / "registry")
    return Registry(folder / "registry")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return publish_three(tmp_path_factory.mktemp("release"))


@pytest.fixture
def registry(published: Registry, tmp_path: Path) -> Registry:
    return copy_of(published, tmp_path)


def _serve(registry: Registry, **settings: Any) -> RunningServer:
    return start_server(
        ServerConfig(registry=registry.root, listen="127.0.0.1:0", policy_refresh_s=0, rollout_tick_s=None, **settings)
    )


@pytest.fixture
def server(registry: Registry) -> Iterator[RunningServer]:
    running = _serve(registry)
    try:
        yield running
    finally:
        running.stop(grace=0)


_stubs: dict[tuple[int, int], Any] = {}


def offered(server: RunningServer, device_id: str, *, current: int = 0, channel: str = "", **labels: str) -> int:
    """The version a CheckUpdate of this device is told to run (its current one when nothing is offered)."""
    key = (id(server), server.port)
    if key not in _stubs:
        _stubs[key] = update_pb2_grpc.ModelUpdateStub(  # type: ignore[no-untyped-call]
            grpc.insecure_channel(f"127.0.0.1:{server.port}")
        )
    request = update_pb2.CheckUpdateRequest(
        model=MODEL, device_id=device_id, channel=channel, labels=labels, runtimes=["onnxruntime"]
    )
    if current:
        # A device that runs ``current``: the request names its artifact exactly.
        _, manifest = server_registry(server).load_manifest(MODEL, current)
        artifact = manifest.artifacts[0]
        request.current_version, request.current_recipe, request.current_sha256 = (
            current,
            artifact.recipe,
            artifact.digest,
        )
    response = _stubs[key].CheckUpdate(request, timeout=30)
    if not response.update_available:
        return current
    return parse_manifest(response.manifest).version


def server_registry(server: RunningServer) -> Registry:
    registry = server.rollouts.registry if server.rollouts is not None else None
    assert isinstance(registry, Registry)
    return registry


def _split(seed: str, ids: list[str], percent: float) -> tuple[list[str], list[str]]:
    inside = [d for d in ids if cohorts.in_wave(seed, d, percent)]
    return inside, [d for d in ids if d not in inside]


def test_without_a_policy_every_device_gets_the_latest(server: RunningServer) -> None:
    assert {offered(server, f"d{i}") for i in range(5)} == {3}


def test_channels_pins_and_targeting(server: RunningServer, registry: Registry) -> None:
    update_policy(
        registry,
        MODEL,
        lambda p: dataclasses.replace(
            p,
            channels={"stable": 2, "canary": 3},
            device_pins={"kiosk-1": 1},
            label_pins=(LabelPin("region == 'cn' and runtime == 'onnxruntime'", 1),),
        ),
    )
    assert offered(server, "phone-1") == 2
    assert offered(server, "phone-1", channel="canary") == 3
    assert offered(server, "kiosk-1", channel="canary") == 1, "a device pin wins over its channel"
    assert offered(server, "phone-2", region="cn") == 1
    assert offered(server, "phone-2", region="eu") == 2
    # A device pinned below what it runs is kept where it is (it would refuse the older version).
    assert offered(server, "kiosk-1", current=3) == 3
    # A channel name out of bounds is the caller's error.
    with pytest.raises(grpc.RpcError) as refused:
        offered(server, "phone-3", channel="Not A Channel")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cohorts_hold_across_halt_and_resume_and_late_devices_join(server: RunningServer, registry: Registry) -> None:
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    policy = update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(
            p, version=3, published=[1, 2, 3], now=1000.0, waves=(20, 50, 100), where="region in ('eu', 'us')"
        ),
    )
    rollout = policy.rollouts[-1]
    ids = [f"phone-{i}" for i in range(150)]
    inside, outside = _split(rollout.seed, ids, 20)
    assert 10 <= len(inside) <= 60
    assert {offered(server, d, region="eu") for d in inside} == {3}
    assert {offered(server, d, region="us") for d in outside} == {2}, "outside the wave: the previous release"
    assert {offered(server, d, region="cn") for d in inside} == {2}, "not targeted: the channel"

    update_policy(registry, MODEL, lambda p: rollouts.halt(p, "", 1001.0))
    assert {offered(server, d, region="eu") for d in inside} == {2}, "halted: nobody new gets it"
    assert {offered(server, d, current=3, region="eu") for d in inside[:3]} == {3}, "who runs it keeps it"
    update_policy(registry, MODEL, lambda p: rollouts.resume(p, "", 1002.0))
    assert {offered(server, d, region="eu") for d in inside} == {3}, "resumed: the very same devices"

    late = [f"late-{i}" for i in range(100)]
    late_inside, late_outside = _split(rollout.seed, late, 20)
    assert {offered(server, d, region="eu") for d in late_inside} == {3}
    assert {offered(server, d, region="eu") for d in late_outside} == {2}


def _verdict(verdict: str) -> Any:
    def evaluate(**_: object) -> GateReport:
        return GateReport(verdict, (f"said {verdict}",), {"treatment.failure_rate": 0.0})  # type: ignore[arg-type]

    return evaluate


def test_two_replicas_advance_a_wave_once_and_agree_on_every_device(registry: Registry) -> None:
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(p, version=3, published=[1, 2, 3], now=0.0, waves=(5, 50, 100)),
    )
    a, b = _serve(registry), _serve(registry)
    try:
        assert a.rollouts is not None and b.rollouts is not None
        for controller in (a.rollouts, b.rollouts):
            controller.evaluate = _verdict("pass")
        barrier = threading.Barrier(2)
        moved: list[int] = []

        def tick(controller: Any) -> None:
            barrier.wait(timeout=30)
            moved.append(len(controller.tick(now=10.0)))

        threads = [threading.Thread(target=tick, args=(c,)) for c in (a.rollouts, b.rollouts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        (rollout,) = policy.rollouts
        assert (rollout.state, rollout.wave_index) == ("running", 1), "one wave forward, not two"
        assert sorted(moved) == [0, 1], "exactly one replica's move was written"
        ids = [f"tablet-{i}" for i in range(60)]
        assert [offered(a, d) for d in ids] == [offered(b, d) for d in ids]
        inside, _ = _split(rollout.seed, ids, 50)
        assert {offered(a, d) for d in inside} == {3}
    finally:
        a.stop(grace=0)
        b.stop(grace=0)


def test_the_controller_moves_waves_waits_for_approval_and_halts(server: RunningServer, registry: Registry) -> None:
    controller = server.rollouts
    assert controller is not None
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(
            p, version=3, published=[1, 2, 3], now=0.0, waves=(1, 100), wave_min_time_s=3600, require_approval=True
        ),
    )

    def state() -> tuple[str, int]:
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        return policy.rollouts[-1].state, policy.rollouts[-1].wave_index

    controller.evaluate = _verdict("pass")
    controller.tick(now=60.0)
    assert state() == ("running", 0), "passing, but the wave's minimum time has not passed"
    controller.tick(now=3600.0)
    assert state() == ("awaiting_approval", 0)
    controller.tick(now=7200.0)
    assert state() == ("awaiting_approval", 0), "nothing moves without the approval"
    update_policy(registry, MODEL, lambda p: rollouts.approve(p, "", 7300.0))
    assert state() == ("running", 1)
    controller.evaluate = _verdict("fail")
    controller.tick(now=7400.0)
    assert state() == ("halted", 1)
    policy, _ = load_policy(registry, MODEL)
    assert policy is not None
    gate = policy.rollouts[-1].gate(1)
    assert gate is not None and gate.verdict == "fail" and "said fail" in policy.rollouts[-1].reason
    assert policy.channels["stable"] == 2


def test_a_verifying_device_accepts_being_held_below_the_latest(registry: Registry, tmp_path: Path) -> None:
    keys = registry.root.parent / "keys"
    keys.mkdir()
    generate_keypair(keys / "server.pem", keys / "server.pub")
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    running = _serve(registry, signing_key=keys / "server.pem")
    try:
        address = f"127.0.0.1:{running.port}"
        with EdgeClient(address, MODEL, tmp_path / "dev", device_id="held-1", trusted_keys=[keys / "server.pub"]) as c:
            assert c.sync().updated
            assert c.sync().updated is False
            assert c.active_version == 2
    finally:
        running.stop(grace=0)


def test_an_unreadable_policy_is_unavailable_never_a_guess(server: RunningServer, registry: Registry) -> None:
    from edgerec.server.release.policy import policy_key

    registry.put_document(policy_key(MODEL), b'{"format": "garbage"}', if_match=None)
    with pytest.raises(grpc.RpcError) as refused:
        offered(server, "phone-1")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
