"""TFLite artifacts end to end: publish behind the gate, manifest fixed batches, device choice and run.

Needs the ``tflite`` extra (litert-torch, ai-edge-quantizer, ai-edge-litert): without it the
TFLite tests skip, and publishing a TFLite recipe is refused with the install hint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgerec import tensors  # noqa: E402
from edgerec.device.artifacts import available_runtimes, choose_artifact, open_artifact  # noqa: E402
from edgerec.errors import NoArtifactError, PublishError  # noqa: E402
from edgerec.manifest import Manifest, check_manifest, find_artifact  # noqa: E402
from edgerec.reference.data import ClickGenerator, ReferenceConfig  # noqa: E402
from edgerec.reference.train import build_and_train, export_program  # noqa: E402
from edgerec.registry import Registry  # noqa: E402
from edgerec.server.publish import PublishOptions, publish  # noqa: E402
from edgerec.server.publish.gate import LABELS  # noqa: E402
from edgerec.server.publish.tflite import tflite_missing  # noqa: E402

MISSING = tflite_missing()
needs_tflite = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
CONFIG = ReferenceConfig.tiny()
BATCHES = (1, 8)
TFLITE = ("tflite_fp32", "tflite_wi8")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("tflite")
    generator = ClickGenerator(CONFIG, seed=3)
    model = build_and_train(CONFIG, generator, day=0, num_samples=20_000)
    holdout = generator.day(50, 3_000)
    return export_program(model, root / "ctr.pt2", generator.day(99, 4)), {
        **holdout.inputs(),
        LABELS: holdout.labels,
    }


@pytest.fixture(scope="module")
def published(
    program: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Registry, Manifest]:
    if MISSING is not None:
        pytest.skip(MISSING)
    source, validation = program
    registry = Registry(tmp_path_factory.mktemp("registry"))
    options = PublishOptions(
        recipes=("fp32", "int8", *TFLITE), validation=validation, tflite_batch_sizes=BATCHES, delta_depth=0
    )
    manifest = publish(source, "ctr", registry, options)
    return registry, manifest


@needs_tflite
def test_manifest_declares_tflite_artifacts_and_batches(published: tuple[Registry, Manifest]) -> None:
    _, manifest = published
    check_manifest(manifest)
    for recipe in TFLITE:
        artifact = find_artifact(manifest, recipe)
        assert artifact is not None and artifact.runtime == "litert"
        assert [(e.batch_size, e.path) for e in artifact.fixed_batches] == [
            (n, f"{recipe}/model_b{n}.tflite") for n in BATCHES
        ]
        assert artifact.entrypoint == f"{recipe}/model_b1.tflite"
        assert {f.path for f in artifact.files} == {e.path for e in artifact.fixed_batches}
        drop = float(manifest.annotations[f"edgerec.gate.{recipe}.auc_drop"])
        assert drop <= 0.001
    fp32, wi8 = find_artifact(manifest, "tflite_fp32"), find_artifact(manifest, "tflite_wi8")
    assert fp32 is not None and wi8 is not None
    for float_file, int8_file in zip(fp32.files, wi8.files, strict=True):
        assert int8_file.size < 0.8 * float_file.size  # int8 weights
    assert {case.recipe for case in manifest.golden} == {"fp32", "int8", *TFLITE}


@needs_tflite
def test_device_prefers_litert_where_installed_and_matches_golden(published: tuple[Registry, Manifest]) -> None:
    registry, manifest = published
    assert "litert" in available_runtimes()
    chosen = choose_artifact(manifest, ("tflite_wi8", "int8"))
    assert chosen.recipe == "tflite_wi8"
    assert choose_artifact(manifest, ("tflite_wi8", "int8"), runtimes=("onnxruntime",)).recipe == "int8"
    loaded = open_artifact(manifest, chosen, registry.version_dir("ctr", manifest.version))
    described = loaded.describe()
    assert described["recipe"] == "tflite_wi8" and described["runtime"] == "litert"
    assert described["batch_sizes"] == "1,8"
    [case] = [c for c in manifest.golden if c.recipe == "tflite_wi8"]
    inputs = {name: tensors.from_proto(t) for name, t in case.inputs.items()}
    expected = tensors.from_proto(case.outputs["score"])
    np.testing.assert_allclose(loaded.run(inputs)["score"], expected, atol=1e-6, rtol=0)
    # 1 row, 3 rows (padded to 8), 20 rows (chunks of 8): each row scores as it does alone.
    rows = {name: np.concatenate([a] * 5) for name, a in inputs.items()}
    alone = np.concatenate([loaded.run({n: a[i : i + 1] for n, a in rows.items()})["score"] for i in range(20)])
    for n in (1, 3, 20):
        np.testing.assert_allclose(loaded.run({k: a[:n] for k, a in rows.items()})["score"], alone[:n], atol=1e-6)


@needs_tflite
def test_tflite_batch_runner_refuses_a_mislabelled_file(published: tuple[Registry, Manifest]) -> None:
    from edgerec.errors import ModelRuntimeError
    from edgerec.runtimes.litert import LiteRTBatchRunner

    registry, manifest = published
    folder = registry.version_dir("ctr", manifest.version) / "tflite_fp32"
    with pytest.raises(ModelRuntimeError, match="declared as batch 4"):
        LiteRTBatchRunner({4: folder / "model_b8.tflite"})


def test_device_choice_without_a_fitting_runtime_names_what_was_offered(
    program: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, _ = program
    registry = Registry(tmp_path / "registry")
    manifest = publish(source, "ctr", registry, PublishOptions(recipes=("fp32", "int8"), delta_depth=0, no_gate=True))
    with pytest.raises(NoArtifactError, match=r"offers \['fp32 \(onnxruntime\)', 'int8 \(onnxruntime\)'\]"):
        choose_artifact(manifest, ("tflite_wi8",))
    artifact = choose_artifact(manifest, ("tflite_wi8", "int8"))
    cache = tmp_path / "cache"
    loaded = open_artifact(manifest, artifact, registry.version_dir("ctr", manifest.version), cache_dir=cache)
    assert loaded.describe()["recipe"] == "int8" and loaded.describe()["runtime"] == "onnxruntime"
    assert loaded.describe()["optimized_cache"].startswith(str(cache))
    [case] = [c for c in manifest.golden if c.recipe == "int8"]
    inputs = {name: tensors.from_proto(t) for name, t in case.inputs.items()}
    np.testing.assert_allclose(loaded.run(inputs)["score"], tensors.from_proto(case.outputs["score"]), atol=1e-6)


@pytest.mark.skipif(MISSING is None, reason="the tflite extra is installed: this checks the refusal without it")
def test_tflite_recipes_are_refused_without_the_extra(
    program: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    source, _ = program
    registry = Registry(tmp_path / "registry")
    with pytest.raises(PublishError, match="tflite extra"):
        publish(source, "ctr", registry, PublishOptions(recipes=("fp32", "tflite_wi8")))
    assert registry.versions("ctr") == []
