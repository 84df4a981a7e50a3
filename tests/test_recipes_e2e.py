"""Each recipe round-trips publish -> sync -> predict, matching the server's evaluation to 1e-6.

One real registry holds a version of the tiny reference model with every recipe (the TFLite ones
only where the ``tflite`` extra is installed); a real server serves it on loopback; for each recipe a
real EdgeClient that allows only that recipe syncs it, loads it with its runtime and predicts
locally at batch 1 and at batches that the LiteRT fixed-batch files must pad (3 -> 4) and split
(6 -> 4 + 4). Its scores must equal, to 1e-6, the server side's evaluation of that very artifact:
the server's ``Inference.Predict`` for that version and recipe (onnxruntime recipes), and the
runtime run on the registry's own files (every recipe; for LiteRT recipes it is the only server-side
evaluation, as in the publish gate and the golden cases).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from servertools import registry_server  # noqa: E402

from edgerec import tensors  # noqa: E402
from edgerec.device import EdgeClient  # noqa: E402
from edgerec.device.artifacts import LITERT, ONNXRUNTIME, open_artifact  # noqa: E402
from edgerec.manifest import Manifest, find_artifact  # noqa: E402
from edgerec.reference.data import ClickGenerator  # noqa: E402
from edgerec.registry import Registry  # noqa: E402
from edgerec.server.publish.tflite import tflite_missing  # noqa: E402
from edgerec.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402

MODEL = "ctr"
ONNX_RECIPES = ("fp32", "int8", "int4")
TFLITE_RECIPES = ("tflite_fp32", "tflite_wi8")
TFLITE_MISSING = tflite_missing()
BATCH_SIZES = (1, 4)  # the TFLite files: a batch of 3 is padded to 4, a batch of 6 is split into 4 + 4
ROWS = (1, 3, 6)
TOLERANCE = 1e-6


def _recipe_param(recipe: str) -> object:
    if recipe in ONNX_RECIPES:
        return pytest.param(recipe, id=recipe)
    return pytest.param(
        recipe,
        id=recipe,
        marks=pytest.mark.skipif(TFLITE_MISSING is not None, reason=f"LiteRT recipe: {TFLITE_MISSING}"),
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, reference_generator: ClickGenerator) -> Registry:
    """One version of the tiny reference model with every recipe this machine can build."""
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.publish import PublishOptions, publish

    root = tmp_path_factory.mktemp("recipes")
    model = build_and_train(reference_generator.config, reference_generator, day=0, num_samples=4_000, epochs=1)
    source = export_program(model, root / "ctr.pt2", reference_generator.day(99, 4))
    recipes = ONNX_RECIPES + (TFLITE_RECIPES if TFLITE_MISSING is None else ())
    options = PublishOptions(recipes=recipes, delta_depth=0, tflite_batch_sizes=BATCH_SIZES, no_gate=True)
    registry = Registry(root / "registry")
    publish(source, MODEL, registry, options)
    return registry


@pytest.fixture(scope="module")
def address(published: Registry) -> Iterator[str]:
    with registry_server(published) as address:
        yield address


@pytest.fixture(scope="module")
def requests(reference_generator: ClickGenerator) -> list[dict[str, np.ndarray]]:
    return [reference_generator.day(20 + rows, rows).inputs() for rows in ROWS]


def _server_predict(address: str, version: int, recipe: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The server's own Predict of ``recipe`` at ``version`` (its registry copy, its runtime)."""
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        response = stub.Predict(
            inference_pb2.PredictRequest(
                model=MODEL,
                version=version,
                recipe=recipe,
                inputs={name: tensors.to_proto(array) for name, array in inputs.items()},
            ),
            timeout=30,
        )
    assert (response.version, response.recipe) == (version, recipe)
    return np.asarray(response.scores, dtype=np.float32)


def _registry_scores(registry: Registry, manifest: Manifest, recipe: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The published artifact run from the registry's files with its runtime (the server side's runner)."""
    artifact = find_artifact(manifest, recipe)
    assert artifact is not None
    loaded = open_artifact(manifest, artifact, registry.version_dir(MODEL, manifest.version))
    return np.asarray(loaded.run(inputs)[manifest.outputs[0].name], dtype=np.float32).ravel()


@pytest.mark.parametrize("recipe", [_recipe_param(r) for r in ONNX_RECIPES + TFLITE_RECIPES])
def test_recipe_round_trips_and_matches_the_server(
    recipe: str,
    published: Registry,
    address: str,
    requests: list[dict[str, np.ndarray]],
    tmp_path: Path,
) -> None:
    version = published.resolve_version(MODEL, 0)
    _, manifest = published.load_manifest(MODEL, version)
    with EdgeClient(
        server=address, model=MODEL, data_dir=tmp_path, recipes=(recipe,), cache_entries=0, insecure=True
    ) as client:
        synced = client.sync()
        assert (synced.version, synced.recipe) == (version, recipe)
        info = client.runtime_info()
        expected_runtime = LITERT if recipe in TFLITE_RECIPES else ONNXRUNTIME
        assert (info["version"], info["recipe"], info["runtime"]) == (str(version), recipe, expected_runtime)
        if expected_runtime == LITERT:
            assert info["batch_sizes"] == ",".join(map(str, BATCH_SIZES))
        else:
            assert info["optimized_cache"].startswith(str(tmp_path)), info  # the data dir's optimized-model cache
        assert client.status_report().recipe == recipe

        for inputs in requests:
            rows = len(inputs["sparse_ids"])
            answer = client.predict(inputs)
            assert answer.source == "local", answer.fallback_reason
            assert answer.version == version and answer.scores.shape == (rows,)
            server_side = _registry_scores(published, manifest, recipe, inputs)
            np.testing.assert_allclose(answer.scores, server_side, rtol=0, atol=TOLERANCE, err_msg=f"{rows} rows")
            if expected_runtime == ONNXRUNTIME:
                served = _server_predict(address, version, recipe, inputs)
                np.testing.assert_allclose(answer.scores, served, rtol=0, atol=TOLERANCE, err_msg=f"{rows} rows")
        # Recipes really differ: the quantized artifacts are not the fp32 one under another name.
        if recipe not in ("fp32", "tflite_fp32"):
            fp32 = _registry_scores(published, manifest, "fp32", requests[-1])
            assert not np.array_equal(client.predict(requests[-1]).scores, fp32)


# --- the same through the command line: a device picks its recipes, predict says what runs ---------------


def test_cli_sync_allows_only_the_given_recipes_and_predict_says_what_runs(
    published: Registry, address: str, requests: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from edgerec.cli.main import cli

    runner = CliRunner()
    device = ["--model", MODEL, "--data-dir", str(tmp_path)]
    synced = runner.invoke(
        cli, ["sync", "--server", address, *device, "--recipes", "int4, fp32", "--insecure-skip-verify", "--json"]
    )
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["recipe"] == "int4"
    request = tmp_path / "request.npz"
    np.savez(request, **requests[1])  # type: ignore[arg-type]  # numpy stubs reject **arrays
    predicted = runner.invoke(cli, ["predict", *device, "--input", str(request), "--json"])
    assert predicted.exit_code == 0, predicted.output
    answer = json.loads(predicted.output)
    assert answer["source"] == "local" and len(answer["scores"]) == len(requests[1]["sparse_ids"])
    assert (answer["runtime"]["recipe"], answer["runtime"]["runtime"]) == ("int4", ONNXRUNTIME)

    refused = runner.invoke(cli, ["sync", "--server", address, *device, "--recipes", " , ", "--json"])
    assert refused.exit_code == 2 and "--recipes needs at least one recipe" in refused.output


def test_cli_publish_checks_recipes_and_batch_sizes_before_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import edgerec.server.publish.tflite as tflite
    from edgerec.cli.main import cli

    source = tmp_path / "model.pt2"
    source.write_bytes(b"never read: every case below is refused before export")
    registry = tmp_path / "registry"
    base = ["publish", str(source), "--name", MODEL, "--registry", str(registry)]
    runner = CliRunner()

    unknown = runner.invoke(cli, [*base, "--recipe", "int8,int3"])
    assert unknown.exit_code == 2 and "unknown recipe 'int3'" in unknown.output
    stray = runner.invoke(cli, [*base, "--recipe", "fp32", "--batch-sizes", "1,8"])
    assert stray.exit_code == 2 and "TFLite recipes" in stray.output
    bad_sizes = runner.invoke(cli, [*base, "--recipe", "tflite_fp32", "--batch-sizes", "0,8"])
    assert bad_sizes.exit_code == 2 and "positive integers" in bad_sizes.output

    if TFLITE_MISSING is None:  # this machine has the extra: make it look missing (CI runs the real case)
        monkeypatch.setattr(tflite, "tflite_missing", lambda: "TFLite recipes need the tflite extra: pip install x")
    missing = runner.invoke(cli, [*base, "--recipe", "fp32,tflite_wi8"])
    assert missing.exit_code == 1
    assert "cannot build tflite_wi8" in missing.output and "pip install" in missing.output
    assert not registry.exists(), "refused before the registry is touched"
