"""No CheckUpdate waits for a delta: a missing one is queued on a bounded background worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from servertools import registry_server

from edgerec.manifest import find_artifact
from edgerec.registry import PayloadRecord, Registry, copy_registry
from edgerec.server.delta_worker import DeltaJob, DeltaWorker
from edgerec.server.payloads import DELTA_CODECS, FULL, LocalFile, PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.v1 import update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch

DEADLINE_S = 120.0


def _downgrade(registry: Registry) -> update_pb2.CheckUpdateRequest:
    """A device on version 2 asked back to version 1: deltas in that direction are never made at publish."""
    _, manifest = registry.load_manifest("ctr", 2)
    artifact = find_artifact(manifest, "int8")
    assert artifact is not None
    return update_pb2.CheckUpdateRequest(
        model="ctr",
        current_version=2,
        current_recipe="int8",
        current_sha256=artifact.digest,
        target_version=1,
        recipes=["int8"],
        runtimes=["onnxruntime"],
        codecs=[FULL, *DELTA_CODECS],
    )


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _changed(response: update_pb2.CheckUpdateResponse) -> list[update_pb2.Payload]:
    return [p for p in response.payloads if p.codec != "copy"]


@pytest.fixture
def registry_copy(published_registry: Registry, tmp_path: Path) -> Registry:
    copy = tmp_path / "registry"
    copy_registry(published_registry.root, copy)
    return Registry(copy)


def test_check_update_offers_the_full_payload_now_and_the_delta_once_made(registry_copy: Registry) -> None:
    request = _downgrade(registry_copy)
    with registry_server(registry_copy) as address, grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        first = stub.CheckUpdate(request, timeout=30)
        changed = _changed(first)
        assert changed and all(p.codec == FULL for p in changed), [p.codec for p in changed]

        later: list[update_pb2.Payload] = []

        def delta_offered() -> bool:
            later[:] = _changed(stub.CheckUpdate(request, timeout=30))
            return any(p.codec in DELTA_CODECS for p in later)

        _wait_for(delta_offered, "the background delta")
    assert sum(p.size for p in later) < sum(p.size for p in changed)


def test_many_concurrent_check_updates_queue_each_delta_once(registry_copy: Registry) -> None:
    release = threading.Event()
    made: list[str] = []

    class HeldStore(PayloadStore):
        """Makes payloads only once the test lets it, so the jobs stay queued meanwhile."""

        def ensure(
            self,
            model: str,
            codec: str,
            target: LocalFile,
            target_sha256: str,
            base: LocalFile | None = None,
            base_sha256: str = "",
        ) -> PayloadRecord:
            if base is not None:
                assert release.wait(DEADLINE_S), "the test never released the delta worker"
                made.append(codec)
            return super().ensure(model, codec, target, target_sha256, base, base_sha256)

    store = HeldStore(registry_copy)
    worker = DeltaWorker(store, workers=1, max_pending=64)
    planner = UpdatePlanner(registry_copy, store, deltas=worker)
    request = _downgrade(registry_copy)
    try:
        answers: list[update_pb2.CheckUpdateResponse] = []
        threads = [threading.Thread(target=lambda: answers.append(planner.plan(request))) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE_S)
        # Every answer came while the worker was held: none waited for a delta.
        assert len(answers) == 16
        assert all(p.codec == FULL for a in answers for p in _changed(a))
        jobs = worker.pending()
        changed_files = len(_changed(answers[0]))
        assert 1 <= jobs <= changed_files * len(DELTA_CODECS), jobs
        release.set()
        assert worker.wait_idle(DEADLINE_S)
        assert len(made) == jobs, f"{len(made)} deltas made for {jobs} distinct jobs"
        after = _changed(planner.plan(request))
        assert any(p.codec in DELTA_CODECS for p in after)
        assert sum(p.size for p in after) < sum(p.size for p in _changed(answers[0]))
    finally:
        release.set()
        worker.close()


def test_a_full_queue_drops_new_jobs(registry_copy: Registry) -> None:
    release = threading.Event()

    class HeldStore(PayloadStore):
        def ensure(
            self,
            model: str,
            codec: str,
            target: LocalFile,
            target_sha256: str,
            base: LocalFile | None = None,
            base_sha256: str = "",
        ) -> PayloadRecord:
            assert release.wait(DEADLINE_S)
            return super().ensure(model, codec, target, target_sha256, base, base_sha256)

    worker = DeltaWorker(HeldStore(registry_copy), workers=1, max_pending=2)
    unused = registry_copy.root / "unused"
    jobs = [DeltaJob("ctr", "bsdiff4", lambda: unused, f"{i:064x}", lambda: unused, "0" * 64) for i in range(3)]
    try:
        assert worker.submit(jobs[0]) and worker.submit(jobs[1])
        assert worker.submit(jobs[0]), "a job already queued is accepted once, not queued again"
        assert worker.pending() == 2
        assert not worker.submit(jobs[2]), "a full queue must drop a new job"
        assert worker.pending() == 2
    finally:
        release.set()
        worker.close()
