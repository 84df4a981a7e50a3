"""The release policy over the object-store registry (real SeaweedFS): two replicas on one bucket
advance a wave once and offer every device the same version; concurrent policy changes are all kept."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3, seaweed_s3
from test_release_server import MODEL, offered, publish_three_to

from edgerec.registry import ModelRegistry, open_registry
from edgerec.server.app import ServerConfig, start_server
from edgerec.server.release import cohorts, rollouts
from edgerec.server.release.gates import GateReport
from edgerec.server.release.policy import ReleasePolicy, load_policy, update_policy

pytest.importorskip("boto3")
pytest.importorskip("onnx")

BUCKET = "release"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def bucket(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = f"s3://{BUCKET}/r-{uuid.uuid4().hex[:12]}"
    publish_three_to(open_registry(url, cache_dir=tmp_path / "publisher"), tmp_path)
    return url


def _pass(**_: object) -> GateReport:
    return GateReport("pass", ("fine",), {})


def test_two_replicas_on_one_bucket_agree(bucket: str, tmp_path: Path) -> None:
    registry = open_registry(bucket, cache_dir=tmp_path / "cli")
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(p, version=3, published=[1, 2, 3], now=0.0, waves=(5, 50, 100)),
    )
    replicas = [
        start_server(
            ServerConfig(
                registry=bucket,
                listen="127.0.0.1:0",
                registry_cache_dir=tmp_path / f"cache-{name}",
                policy_refresh_s=0,
                rollout_tick_s=None,
                fleet_replica_id=name,
            )
        )
        for name in ("replica-a", "replica-b")
    ]
    try:
        controllers = [r.rollouts for r in replicas]
        barrier = threading.Barrier(2)
        moved: list[int] = []

        def tick(controller: Any) -> None:
            controller.evaluate = _pass
            barrier.wait(timeout=60)
            moved.append(len(controller.tick(now=10.0)))

        threads = [threading.Thread(target=tick, args=(c,)) for c in controllers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(moved) == [0, 1], "exactly one replica's move was written"
        policy, _ = load_policy(registry, MODEL)
        assert policy is not None
        (rollout,) = policy.rollouts
        assert (rollout.state, rollout.wave_index) == ("running", 1)
        ids = [f"car-{i}" for i in range(40)]
        answers = [[offered(r, d) for d in ids] for r in replicas]
        assert answers[0] == answers[1]
        assert answers[0] == [3 if cohorts.in_wave(rollout.seed, d, 50) else 2 for d in ids]
    finally:
        for r in replicas:
            r.stop(grace=0)


def test_concurrent_changes_on_one_bucket_are_all_kept(bucket: str, tmp_path: Path) -> None:
    registries: list[ModelRegistry] = [open_registry(bucket, cache_dir=tmp_path / f"c{i}") for i in range(3)]
    errors: list[BaseException] = []

    def add(name: str) -> Callable[[ReleasePolicy], ReleasePolicy]:
        return lambda p: dataclasses.replace(p, device_pins={**p.device_pins, name: 1})

    def pin(i: int) -> None:
        try:
            for j in range(4):
                update_policy(registries[i], MODEL, add(f"d-{i}-{j}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pin, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    policy, _ = load_policy(registries[0], MODEL)
    assert policy is not None and len(policy.device_pins) == 12
