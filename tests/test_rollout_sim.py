"""The rollout simulation (``python -m edgerec.tools.bench.rollout``): its model variants, devices and clicks.

A real server on loopback, a real registry, the real publish pipeline, real onnxruntime; devices are
simulated (:mod:`edgerec.tools.bench.rollout.devices`) but talk gRPC and verify what they are offered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgerec.reference.data import ReferenceConfig  # noqa: E402
from edgerec.tools.bench.rollout.clicks import SlateSettings, draw_candidates, show_and_click  # noqa: E402
from edgerec.tools.bench.rollout.hardware import FLUSH_TO_ZERO, IEEE  # noqa: E402
from edgerec.tools.bench.rollout.variants import Variants, build_variants  # noqa: E402
from edgerec.tools.bench.rollout.world import MODEL, World, WorldSettings  # noqa: E402

SETTINGS = WorldSettings(devices=200)
TRAIN_SAMPLES = 20_000


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Variants:
    config = ReferenceConfig.from_name(SETTINGS.size)
    return build_variants(
        tmp_path_factory.mktemp("variants"), config, SETTINGS.generator(), train_samples=TRAIN_SAMPLES
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path / "world", SETTINGS) as made:
        yield made


def test_worse_variant_is_two_auc_points_lower_and_bad_one_scores_like_good(variants: Variants) -> None:
    auc = variants.auc
    assert auc["good"] - auc["worse"] == pytest.approx(0.02, abs=0.004)
    assert auc["bad"] == pytest.approx(auc["good"], abs=1e-4)
    assert auc["good"] < variants.oracle_auc


def test_population_has_the_asked_share_of_flush_to_zero_devices(world: World) -> None:
    hardware = [device.hardware for device in world.devices]
    assert hardware.count(FLUSH_TO_ZERO) == round(SETTINGS.ftz_fraction * SETTINGS.devices)
    assert {d.labels["cpu"] for d in world.devices if d.hardware == FLUSH_TO_ZERO} == {"armv7"}
    assert len({d.device_id for d in world.devices}) == SETTINGS.devices


def test_bad_variant_fails_the_sdk_health_check_exactly_on_flush_to_zero_devices(
    world: World, variants: Variants
) -> None:
    """Without a release policy every device is offered the latest version: the bad one installs on IEEE
    hardware and fails its golden cases on the rest, which keep v1 and report the failure."""
    first = world.publish(variants.v2).version
    assert world.run_round().installed == SETTINGS.devices
    bad = world.publish(variants.v3["bad"]).version
    stats = world.run_round()
    ftz = [d for d in world.devices if d.hardware == FLUSH_TO_ZERO]
    ieee = [d for d in world.devices if d.hardware == IEEE]
    assert stats.install_failures == len(ftz) and stats.installed == len(ieee) and stats.errors == 0
    assert all(d.active_version == first and d.install_failures[-1][:2] == (bad, "HealthCheckError") for d in ftz)
    assert all(d.active_version == bad and d.active_digest in world.artifact_digests(bad) for d in ieee)
    report = ftz[0].report(MODEL, 0.0)
    assert [(f.version, f.error) for f in report.install_failures] == [(bad, "HealthCheckError")]
    assert [o.version for o in report.outcomes] == [first] and report.outcomes[0].impressions > 0


def test_worse_variant_gets_fewer_clicks_from_the_ground_truth(world: World, variants: Variants) -> None:
    """The same candidates shown by the good and the worse v3: the worse one's shown items are clicked less."""
    good = world.publish(variants.v3["good"])
    worse = world.publish(variants.v3["worse"])
    slates = SlateSettings()
    candidates = draw_candidates(world.generator, 0, 4_000, slates)
    ctr = {}
    for manifest in (good, worse):
        artifact = next(a for a in manifest.artifacts if a.recipe == "int8")
        assert world.library.install(manifest, artifact, IEEE) == ""
        runner = world.library.runner(artifact.digest, IEEE)
        scores = np.asarray(runner.run(candidates.inputs())["score"], dtype=np.float32)
        feedback = show_and_click(scores, candidates.true_prob, slates, np.random.default_rng(0))
        ctr[manifest.version] = sum(f.clicks for f in feedback) / sum(f.impressions for f in feedback)
    assert ctr[worse.version] < ctr[good.version] - 0.01
