"""Devices that ask alike share one plan for a moment; odd offers are planned but never kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.manifest import Manifest, SignedManifest
from edgerec.registry import Registry, copy_registry
from edgerec.server.payloads import PayloadStore
from edgerec.server.planner import MAX_KEPT_OFFER_CHARS, UpdatePlanner
from edgerec.v1 import update_pb2


class CountingRegistry(Registry):
    """A real folder registry that counts the manifests planning reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.manifest_reads = 0

    def load_manifest(self, model: str, version: int) -> tuple[SignedManifest, Manifest]:
        self.manifest_reads += 1
        return super().load_manifest(model, version)


@pytest.fixture
def registry(published_registry: Registry, tmp_path: Path) -> CountingRegistry:
    return CountingRegistry(copy_registry(published_registry.root, tmp_path / "registry"))


def fresh(device: str, recipes: list[str]) -> update_pb2.CheckUpdateRequest:
    return update_pb2.CheckUpdateRequest(model="ctr", device_id=device, recipes=recipes, codecs=["full"])


def test_alike_devices_share_a_plan_and_each_answer_is_its_own(registry: CountingRegistry) -> None:
    planner = UpdatePlanner(registry, PayloadStore(registry))
    first = planner.plan(fresh("a", ["int8", "fp32"]))
    reads = registry.manifest_reads
    second = planner.plan(fresh("b", ["int8", "fp32"]))
    assert registry.manifest_reads == reads  # the kept plan, not a new one
    assert second.payloads == first.payloads and second.manifest == first.manifest
    second.payloads[0].size += 1  # an answer is a copy: changing it changes no other
    assert planner.plan(fresh("c", ["int8", "fp32"])).payloads == first.payloads
    planner.plan(fresh("d", ["fp32"]))  # another offer is another plan
    assert registry.manifest_reads == reads + 1


def test_offers_too_long_to_keep_are_planned_each_time(registry: CountingRegistry) -> None:
    planner = UpdatePlanner(registry, PayloadStore(registry))
    odd = ["x" * 64] * (MAX_KEPT_OFFER_CHARS // 64) + ["int8"]
    before = registry.manifest_reads
    for device in ("a", "b", "c"):
        assert planner.plan(fresh(device, odd)).recipe == "int8"
    assert registry.manifest_reads == before + 3
