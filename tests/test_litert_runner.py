"""LiteRTRunner on a real ``.tflite`` file, written here with the flatbuffer schema ai-edge-litert ships.

The model mimics a fixed-batch export of a click model: ``score = sigmoid(dense @ w + b +
sum(bias[ids]))`` with inputs ``dense_features`` float32 [B, 3] and ``sparse_ids`` int32 [B, 2]
(litert-torch turns int64 into int32), so batching, padding, dtype narrowing and output
copying are all exercised without litert-torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgerec.errors import ModelRuntimeError
from edgerec.runtimes.base import ModelRunner
from edgerec.runtimes.litert import LiteRTRunner

BATCH, DENSE, TABLES, ROWS = 4, 3, 2, 50
RNG = np.random.default_rng(7)
WEIGHT = RNG.normal(size=(1, DENSE)).astype(np.float32)
BIAS = np.array([0.25], np.float32)
TABLE = RNG.normal(size=ROWS).astype(np.float32)


def expected(dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    logit = dense @ WEIGHT[0] + BIAS[0] + TABLE[ids].sum(axis=1)
    probability: np.ndarray = (1 / (1 + np.exp(-logit))).astype(np.float32)
    return probability


def write_tflite(path: Path, batch: int = BATCH) -> Path:
    """FULLY_CONNECTED -> RESHAPE, GATHER -> SUM, ADD, LOGISTIC, with a ``serving_default`` signature."""
    import flatbuffers  # type: ignore[import-untyped, import-not-found]
    from ai_edge_litert import schema_py_generated as s  # type: ignore[import-untyped, import-not-found]

    buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel

    def buffer(data: bytes = b"") -> int:
        buffers.append(data)
        return len(buffers) - 1

    tensors: list[s.TensorT] = []

    def tensor(name: str, shape: list[int], kind: int, data: bytes = b"") -> int:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, kind, buffer(data)
        tensors.append(t)
        return len(tensors) - 1

    f32, i32 = s.TensorType.FLOAT32, s.TensorType.INT32
    dense = tensor("dense_features", [batch, DENSE], f32)
    ids = tensor("sparse_ids", [batch, TABLES], i32)
    weight = tensor("w", [1, DENSE], f32, WEIGHT.tobytes())
    bias = tensor("b", [1], f32, BIAS.tobytes())
    table = tensor("table", [ROWS], f32, TABLE.tobytes())
    new_shape = tensor("new_shape", [1], i32, np.array([batch], np.int32).tobytes())
    axis = tensor("axis", [1], i32, np.array([1], np.int32).tobytes())
    fc, fc_flat = tensor("fc", [batch, 1], f32), tensor("fc_flat", [batch], f32)
    looked_up, summed = tensor("looked_up", [batch, TABLES], f32), tensor("summed", [batch], f32)
    logit, score = tensor("logit", [batch], f32), tensor("score", [batch], f32)

    codes: list[int] = []

    def op(code: int, inputs: list[int], outputs: list[int], kind: int = 0, options: object = None) -> s.OperatorT:
        if code not in codes:
            codes.append(code)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = kind, options
        return o

    ops, opts = s.BuiltinOperator, s.BuiltinOptions
    reshape, gather, reducer = s.ReshapeOptionsT(), s.GatherOptionsT(), s.ReducerOptionsT()
    reshape.newShape = [batch]
    operators = [
        op(ops.FULLY_CONNECTED, [dense, weight, bias], [fc], opts.FullyConnectedOptions, s.FullyConnectedOptionsT()),
        op(ops.RESHAPE, [fc, new_shape], [fc_flat], opts.ReshapeOptions, reshape),
        op(ops.GATHER, [table, ids], [looked_up], opts.GatherOptions, gather),
        op(ops.SUM, [looked_up, axis], [summed], opts.ReducerOptions, reducer),
        op(ops.ADD, [fc_flat, summed], [logit], opts.AddOptions, s.AddOptionsT()),
        op(ops.LOGISTIC, [logit], [score]),
    ]

    def tensor_map(name: str, index: int) -> s.TensorMapT:
        m = s.TensorMapT()
        m.name, m.tensorIndex = name, index
        return m

    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [dense, ids], [score], operators
    signature = s.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [tensor_map("dense_features", dense), tensor_map("sparse_ids", ids)]
    signature.outputs = [tensor_map("score", score)]
    model = s.ModelT()
    model.version, model.description, model.subgraphs, model.signatureDefs = 3, "edgerec test", [graph], [signature]
    model.operatorCodes = []
    for code in codes:
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        model.operatorCodes.append(c)
    model.buffers = []
    for data in buffers:
        b = s.BufferT()
        b.data = list(data) if data else None
        model.buffers.append(b)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (edgerec[tflite]) is not installed")
    return write_tflite(tmp_path_factory.mktemp("litert") / "model.tflite")


def _inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense_features": rng.normal(size=(rows, DENSE)).astype(np.float32),
        "sparse_ids": rng.integers(0, ROWS, size=(rows, TABLES), dtype=np.int64),
    }


@pytest.mark.parametrize("rows", [1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 2])
def test_any_number_of_rows_matches_the_math(model_path: Path, rows: int) -> None:
    runner: ModelRunner = LiteRTRunner(model_path)
    inputs = _inputs(rows, seed=rows)
    (score,) = runner.run(inputs).values()
    assert runner.output_names == ["score"]
    assert score.shape == (rows,) and score.dtype == np.float32
    np.testing.assert_allclose(score, expected(inputs["dense_features"], inputs["sparse_ids"]), rtol=1e-5, atol=1e-6)


def test_fixed_batch_is_read_and_outputs_are_copies(model_path: Path) -> None:
    runner = LiteRTRunner(model_path, threads=1)
    assert runner.batch == BATCH
    first = runner.run(_inputs(BATCH, seed=1))["score"]
    kept = first.copy()
    runner.run(_inputs(BATCH, seed=2))
    np.testing.assert_array_equal(first, kept)  # the next call did not overwrite the earlier result


def test_zero_rows_and_renamed_io(model_path: Path) -> None:
    runner = LiteRTRunner(model_path, input_names=["dense", "ids"], output_names=["p"])
    inputs = _inputs(0)
    out = runner.run({"dense": inputs["dense_features"], "ids": inputs["sparse_ids"]})
    assert list(out) == ["p"] and out["p"].shape == (0,)


def test_inputs_that_do_not_fit_raise_model_runtime_error(model_path: Path) -> None:
    runner = LiteRTRunner(model_path)
    good = _inputs(2)
    with pytest.raises(ModelRuntimeError, match="inputs are"):
        runner.run({"dense_features": good["dense_features"]})
    with pytest.raises(ModelRuntimeError, match="outside int32"):
        runner.run({**good, "sparse_ids": good["sparse_ids"] + 2**40})
    with pytest.raises(ModelRuntimeError, match="dtype float64"):
        runner.run({**good, "dense_features": good["dense_features"].astype(np.float64)})
    with pytest.raises(ModelRuntimeError, match="shape"):
        runner.run({**good, "dense_features": good["dense_features"][:, :2]})
    with pytest.raises(ModelRuntimeError, match="disagree"):
        runner.run({**good, "sparse_ids": good["sparse_ids"][:1]})


def test_unloadable_models_raise_model_runtime_error(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (edgerec[tflite]) is not installed")
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelRuntimeError, match="cannot load"):
        LiteRTRunner(broken)
    with pytest.raises(ModelRuntimeError, match="cannot load"):
        LiteRTRunner(tmp_path / "missing.tflite")


def test_missing_litert_raises_model_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # what an install without the extra sees
    with pytest.raises(ModelRuntimeError, match=r"edgerec\[tflite\]"):
        LiteRTRunner(tmp_path / "model.tflite")
