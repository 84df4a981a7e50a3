"""OnnxRunner's optimized-model cache: saved once per artifact, reused, damaged or replaced entries rebuilt.

Also which run failures are the request's fault rather than the model's.
"""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxtools import linear_model

from edgerec.errors import InvalidInputError, ModelRuntimeError
from edgerec.runtimes import OnnxRunner
from edgerec.runtimes.onnx import cache_key_of_files
from edgerec.server.publish.export import save_canonical

RNG = np.random.default_rng(3)
TABLE = RNG.normal(size=(500, 8)).astype(np.float32)
WEIGHT = RNG.normal(size=(8, 4)).astype(np.float32)
BIAS = RNG.normal(size=4).astype(np.float32)


def _model(path: Path, table: np.ndarray = TABLE) -> Path:
    """Gather -> MatMul -> Add -> Relu: EXTENDED optimization fuses MatMul + Add into a Gemm-like op."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("MatMul", ["rows", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["out"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(a, n) for n, a in (("table", table), ("w", WEIGHT), ("b", BIAS))],
    )
    return save_canonical(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


IDS = {"ids": np.array([0, 7, 499, 7])}


def _expected(table: np.ndarray = TABLE) -> np.ndarray:
    result: np.ndarray = np.maximum(table[IDS["ids"]] @ WEIGHT + BIAS, 0)
    return result


def test_optimized_model_is_saved_once_and_reused(tmp_path: Path) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    cache = tmp_path / "cache"
    first = OnnxRunner(model, cache_dir=cache, cache_key="digest-a")
    assert first.optimized_from_cache and first.cache_path is not None and first.cache_path.is_file()
    saved = onnx.load(str(first.cache_path), load_external_data=False)
    assert [n.op_type for n in saved.graph.node] != ["Gather", "MatMul", "Add", "Relu"]  # it was optimized
    mtime = first.cache_path.stat().st_mtime_ns
    second = OnnxRunner(model, cache_dir=cache, cache_key="digest-a")
    assert second.optimized_from_cache and second.cache_path == first.cache_path
    assert first.cache_path.stat().st_mtime_ns == mtime  # read, not rewritten
    plain = OnnxRunner(model)
    assert not plain.optimized_from_cache and plain.describe()["optimized_cache"] == "off"
    for runner in (first, second, plain):
        np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)
    assert second.describe() == {
        "runtime": "onnxruntime",
        "model": str(model),
        "optimization": "extended",
        "optimized_cache": str(first.cache_path),
    }
    assert len(list(cache.iterdir())) == 1  # no staging folder left behind


def test_each_artifact_gets_its_own_entry(tmp_path: Path) -> None:
    """Two versions of one architecture have identical graph files: the key must name the weights."""
    other_table = TABLE + 1
    a = _model(tmp_path / "a" / "model.onnx")
    b = _model(tmp_path / "b" / "model.onnx", other_table)
    assert a.read_bytes() == b.read_bytes() and cache_key_of_files(a) != cache_key_of_files(b)
    cache = tmp_path / "cache"
    run_a, run_b = OnnxRunner(a, cache_dir=cache), OnnxRunner(b, cache_dir=cache)
    assert run_a.cache_path != run_b.cache_path
    np.testing.assert_allclose(run_b.run(IDS)["out"], _expected(other_table), rtol=1e-6, atol=1e-6)


def test_damaged_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    cache = tmp_path / "cache"
    path = OnnxRunner(model, cache_dir=cache, cache_key="k").cache_path
    assert path is not None
    path.write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"):
        runner = OnnxRunner(model, cache_dir=cache, cache_key="k")
    assert "model.onnx differs from its digest record" in caplog.text
    assert runner.optimized_from_cache and path.read_bytes() != b"not an onnx model"
    np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)


def _swap_in_other_model(entry: Path, other: Path) -> None:
    """Replace the entry's files by another valid optimized model's (same signature, other weights)."""
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(other / name, entry / name)


@pytest.mark.parametrize(
    "attack",
    ["swap the files", "swap the files and drop the record", "move another artifact's entry in"],
)
def test_a_replaced_cache_entry_never_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture, attack: str) -> None:
    genuine = _model(tmp_path / "a" / "model.onnx")
    other_table = TABLE * 3
    other = _model(tmp_path / "b" / "model.onnx", other_table)
    cache = tmp_path / "cache"
    entry_path = OnnxRunner(genuine, cache_dir=cache, cache_key="digest-a").cache_path
    other_path = OnnxRunner(other, cache_dir=cache, cache_key="digest-b").cache_path
    assert entry_path is not None and other_path is not None
    entry, other_entry = entry_path.parent, other_path.parent
    if attack == "move another artifact's entry in":
        shutil.rmtree(entry)
        shutil.copytree(other_entry, entry)  # files and digest record agree, but name artifact b
    else:
        _swap_in_other_model(entry, other_entry)
        if attack == "swap the files and drop the record":
            (entry / "digests.json").unlink()
    with caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"):
        runner = OnnxRunner(genuine, cache_dir=cache, cache_key="digest-a")
    assert "rebuilding the optimized model" in caplog.text
    assert runner.optimized_from_cache and runner.cache_path == entry_path
    np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(_expected(other_table), _expected()), "the attack would have changed the scores"


def test_cache_entries_are_private(tmp_path: Path) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    path = OnnxRunner(model, cache_dir=tmp_path / "cache", cache_key="k").cache_path
    assert path is not None
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["digests.json", "model.onnx", "model.onnx.data"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()} == {0o600}


def test_out_of_range_ids_are_the_requests_fault_other_failures_the_models(tmp_path: Path) -> None:
    runner = OnnxRunner(_model(tmp_path / "a" / "model.onnx"))
    for ids in (np.array([0, 500]), np.array([-501])):
        with pytest.raises(InvalidInputError, match="outside the model's table"):
            runner.run({"ids": ids})
        with pytest.raises(InvalidInputError, match="outside the model's table"):
            runner.score({"ids": ids})
    fragile = OnnxRunner(linear_model(tmp_path / "fragile.onnx", [0.1, 0.2, 0.3, 0.4], odd_batches_fail=True))
    odd = {"x": np.ones((3, 4), dtype=np.float32)}  # its graph cannot reshape an odd batch: the model's fault
    for run in (fragile.run, fragile.score):
        with pytest.raises(ModelRuntimeError) as caught:
            run(odd)
        assert not isinstance(caught.value, InvalidInputError)


def test_unwritable_cache_is_bypassed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"):
        runner = OnnxRunner(model, cache_dir=blocker)
    assert "cache bypassed" in caplog.text and not runner.optimized_from_cache
    np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)
