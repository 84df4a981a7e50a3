"""OnnxRunner's optimized-model cache: saved once per artifact, reused, damaged entries rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
from onnx import TensorProto, helper, numpy_helper

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


def test_damaged_entry_is_bypassed_then_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    cache = tmp_path / "cache"
    path = OnnxRunner(model, cache_dir=cache, cache_key="k").cache_path
    assert path is not None
    path.write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"):
        runner = OnnxRunner(model, cache_dir=cache, cache_key="k")
    assert "dropping unreadable cached model" in caplog.text
    assert not runner.optimized_from_cache
    np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)
    rebuilt = OnnxRunner(model, cache_dir=cache, cache_key="k")
    assert rebuilt.optimized_from_cache
    np.testing.assert_allclose(rebuilt.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)


def test_unwritable_cache_is_bypassed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path / "a" / "model.onnx")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"):
        runner = OnnxRunner(model, cache_dir=blocker)
    assert "cache bypassed" in caplog.text and not runner.optimized_from_cache
    np.testing.assert_allclose(runner.run(IDS)["out"], _expected(), rtol=1e-6, atol=1e-6)
