"""Per-row int4 embeddings (round trip, graph, row stability) and the accuracy gate on real sessions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgerec.errors import AccuracyGateError, PublishError  # noqa: E402
from edgerec.reference.data import DENSE_INPUT, SPARSE_INPUT, ClickBatch, ClickGenerator, ReferenceConfig  # noqa: E402
from edgerec.reference.train import build_and_train, export_program  # noqa: E402
from edgerec.runtimes import OnnxRunner  # noqa: E402
from edgerec.server.publish.export import data_path, load_onnx, save_canonical, to_onnx  # noqa: E402
from edgerec.server.publish.gate import LABELS, check_gate, evaluate  # noqa: E402
from edgerec.server.publish.quantize import quantize_int8  # noqa: E402
from edgerec.server.publish.quantize_int4 import (  # noqa: E402
    PACKED_SUFFIX,
    SCALE_SUFFIX,
    ZERO_SUFFIX,
    dequantize_rows_int4,
    quantize_int4,
    quantize_rows_int4,
)

log = logging.getLogger(__name__)

CONFIG = ReferenceConfig.tiny()
TABLES = [f"embeddings.{t}.weight" for t in range(CONFIG.num_tables)]


def break_scales(model: Path, out_path: Path, factor: float = 3.0) -> Path:
    """A deliberately wrong quantization: every per-row scale (int8 or int4) multiplied by ``factor``."""
    proto = load_onnx(model)
    broken = 0
    for tensor in proto.graph.initializer:
        if tensor.name.endswith("_scale"):
            array = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), tensor.name))
            broken += 1
    assert broken, f"{model} has no per-row scales"
    return save_canonical(proto, out_path)


def validation_of(batch: ClickBatch) -> dict[str, np.ndarray]:
    return {**batch.inputs(), LABELS: batch.labels}


@dataclass(frozen=True)
class Versions:
    fp32: tuple[Path, Path]
    int8: Path
    int4: tuple[Path, Path]
    day2: ClickBatch  # what v2 was trained on
    holdout: ClickBatch


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("int4")
    generator = ClickGenerator(CONFIG, seed=11)
    v1 = build_and_train(CONFIG, generator, day=1, num_samples=30_000)
    v2 = build_and_train(CONFIG, generator, day=2, num_samples=1_000, base_state=v1.state_dict())
    sample = generator.day(99, 4)
    fp32 = tuple(
        to_onnx(export_program(model, root / f"{name}.pt2", sample), root / name / "fp32" / "model.onnx")
        for name, model in (("v1", v1), ("v2", v2))
    )
    int4 = tuple(quantize_int4(path, path.parent.parent / "int4" / "model.onnx") for path in fp32)
    int8 = quantize_int8(fp32[0], fp32[0].parent.parent / "int8" / "model.onnx")
    return Versions((fp32[0], fp32[1]), int8, (int4[0], int4[1]), generator.day(2, 1_000), generator.day(100, 20_000))


def _initializer_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in load_onnx(path).graph.initializer}


def _size(path: Path) -> int:
    return path.stat().st_size + data_path(path).stat().st_size


# --- rows ---------------------------------------------------------------------------------


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9),
                  elements=st.floats(-1e3, 1e3, width=32)))  # fmt: skip
def test_rows_round_trip_within_half_a_step_and_depend_on_their_row_only(table: np.ndarray) -> None:
    packed, scale, zero = quantize_rows_int4(table)
    rows, dim = table.shape
    assert packed.shape == (rows, (dim + 1) // 2) and packed.dtype == np.uint8
    assert scale.shape == (rows,) and scale.dtype == np.float16 and zero.shape == (rows,) and zero.max(initial=0) <= 15
    step = scale.astype(np.float32)[:, None]
    error = np.abs(dequantize_rows_int4(packed, scale, zero, dim) - table)
    assert (error <= step / 2 * 1.001 + 1e-6).all()
    for row in range(rows):
        alone = quantize_rows_int4(table[row : row + 1])
        assert [a.tobytes() for a in alone] == [packed[row].tobytes(), scale[row].tobytes(), zero[row].tobytes()]


def test_rows_edge_cases() -> None:
    table = np.array([[0, 0, 0], [1, 2, 3], [-3, -2, -1], [5e-9, -5e-9, 0]], np.float32)
    packed, scale, zero = quantize_rows_int4(table)
    assert scale[0] == 0 and not packed[0].any()  # an all-zero row
    np.testing.assert_allclose(dequantize_rows_int4(packed, scale, zero, 3), table, atol=0.11)
    assert (scale[1:] > 0).all()  # even a tiny row keeps a non-zero (subnormal) scale
    with pytest.raises(PublishError, match="NaN or infinite"):
        quantize_rows_int4(np.array([[np.nan, 1]], np.float32))
    with pytest.raises(PublishError, match="float16"):
        quantize_rows_int4(np.array([[-1e6, 1e6]], np.float32))


# --- the graph ----------------------------------------------------------------------------


def _lookup_model(tmp_path: Path, opset: int) -> tuple[Path, dict[str, np.ndarray]]:
    """A table shared by two lookups (1-D and 2-D ids), an odd-width table, and one quantization skips."""
    rng = np.random.default_rng(opset)
    tables = {
        "shared": rng.normal(size=(50, 8)).astype(np.float32),
        "odd": rng.normal(size=(30, 5)).astype(np.float32),
        "tied": rng.normal(size=(40, 8)).astype(np.float32),  # also a Gemm weight: stays float32
    }
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["shared", "a"], ["ea"]),
            helper.make_node("Gather", ["shared", "grid"], ["eg"]),
            helper.make_node("Gather", ["odd", "a"], ["eo"]),
            helper.make_node("Gather", ["tied", "a"], ["et"]),
            helper.make_node("Gemm", ["et", "tied"], ["logits"], transB=1),
        ],
        "lookups",
        [value("a", TensorProto.INT64, ["n"]), value("grid", TensorProto.INT64, ["n", 3])],
        [
            value("ea", TensorProto.FLOAT, ["n", 8]),
            value("eg", TensorProto.FLOAT, ["n", 3, 8]),
            value("eo", TensorProto.FLOAT, ["n", 5]),
            value("logits", TensorProto.FLOAT, ["n", 40]),
        ],
        [numpy_helper.from_array(array, name) for name, array in tables.items()],
    )
    path = tmp_path / f"lookups-{opset}.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path, tables


@pytest.mark.parametrize("opset", [13, 17, 20])  # BitwiseAnd from opset 18, Mod before
def test_lookups_decode_exactly_what_the_rows_hold(tmp_path: Path, opset: int) -> None:
    source, tables = _lookup_model(tmp_path, opset)
    out = quantize_int4(source, tmp_path / "int4" / "model.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    names = {t.name: t.data_type for t in onnx.load(str(out)).graph.initializer}
    for table in ("shared", "odd"):
        assert table not in names
        assert names[table + PACKED_SUFFIX] == TensorProto.UINT8
        assert names[table + SCALE_SUFFIX] == TensorProto.FLOAT16
        assert names[table + ZERO_SUFFIX] == TensorProto.UINT8
    assert names["tied"] == TensorProto.FLOAT
    a, grid = np.array([0, 3, 29, -1]), np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 49]])
    got = OnnxRunner(out).run({"a": a, "grid": grid})
    shared = dequantize_rows_int4(*quantize_rows_int4(tables["shared"]), 8)
    odd = dequantize_rows_int4(*quantize_rows_int4(tables["odd"]), 5)
    np.testing.assert_array_equal(got["ea"], shared[a])
    np.testing.assert_array_equal(got["eg"], shared[grid])
    np.testing.assert_array_equal(got["eo"], odd[a])
    np.testing.assert_allclose(got["logits"], tables["tied"][a] @ tables["tied"].T, rtol=1e-5, atol=1e-5)


def test_old_opsets_are_refused(tmp_path: Path) -> None:
    source, _ = _lookup_model(tmp_path, 12)
    with pytest.raises(PublishError, match="opset >= 13"):
        quantize_int4(source, tmp_path / "int4" / "model.onnx")


# --- the reference model ---------------------------------------------------------------------


def test_int4_reference_model_is_small_accurate_and_deterministic(versions: Versions) -> None:
    fp32, int4 = versions.fp32[0], versions.int4[0]
    onnx.checker.check_model(str(int4), full_check=True)
    ratio = _size(int4) / _size(fp32)
    metrics = evaluate(fp32, int4, validation_of(versions.holdout))
    log.info("tiny int4: %.3fx fp32; %s", ratio, metrics.summary())
    assert ratio < 0.3  # tiny rows are 8 wide: 4 B of codes + 3 B of scale and zero point vs 32 B, plus the MLPs
    assert metrics.recipe == "int4" and metrics.rows == len(versions.holdout)
    assert metrics.auc_drop < 0.002 and metrics.max_abs_dp < 0.05
    again = quantize_int4(fp32, fp32.parent.parent / "int4-again" / "model.onnx")
    assert again.read_bytes() == int4.read_bytes()
    assert data_path(again).read_bytes() == data_path(int4).read_bytes()


def test_int4_untouched_rows_keep_their_bytes_across_versions(versions: Versions) -> None:
    old, new = (_initializer_bytes(path) for path in versions.int4)
    assert sorted(old) == sorted(new)
    half = (CONFIG.embedding_dim + 1) // 2
    for table, name in enumerate(TABLES):
        touched = np.zeros(CONFIG.rows_per_table, dtype=bool)
        touched[np.unique(versions.day2.sparse_ids[:, table])] = True
        rows = []
        for suffix, width in ((PACKED_SUFFIX, half), (SCALE_SUFFIX, 2), (ZERO_SUFFIX, 1)):
            before = np.frombuffer(old[name + suffix], np.uint8).reshape(CONFIG.rows_per_table, width)
            after = np.frombuffer(new[name + suffix], np.uint8).reshape(CONFIG.rows_per_table, width)
            np.testing.assert_array_equal(before[~touched], after[~touched])
            rows.append((before[touched] != after[touched]).any(axis=1))
        assert np.logical_or.reduce(rows).mean() > 0.5  # 4-bit codes absorb some small steps


# --- the gate ----------------------------------------------------------------------------------


def test_gate_passes_good_quantizations_and_records_annotations(versions: Versions) -> None:
    validation = validation_of(versions.holdout)
    for candidate, recipe in ((versions.int8, "int8"), (versions.int4[0], "int4")):
        metrics = evaluate(versions.fp32[0], candidate, validation)
        log.info("%s", metrics.summary())
        check_gate(metrics)
        annotations = metrics.annotations(max_auc_drop=0.001)
        assert float(annotations[f"edgerec.gate.{recipe}.auc_drop"]) == pytest.approx(metrics.auc_drop, abs=1e-6)
        assert annotations[f"edgerec.gate.{recipe}.rows"] == str(len(versions.holdout))
        assert {key.rsplit(".", 1)[1] for key in annotations} == {
            "rows", "auc_fp32", "auc", "auc_drop", "log_loss_fp32", "log_loss", "max_abs_dp", "p99_abs_dp",
            "max_auc_drop",
        }  # fmt: skip


@pytest.mark.parametrize("recipe", ["int8", "int4"])
def test_gate_refuses_a_broken_quantization_with_a_clear_message(
    versions: Versions, tmp_path: Path, recipe: str
) -> None:
    good = versions.int8 if recipe == "int8" else versions.int4[0]
    broken = break_scales(good, tmp_path / recipe / "model.onnx")
    metrics = evaluate(versions.fp32[0], broken, validation_of(versions.holdout))
    log.info("broken %s: %s", recipe, metrics.summary())
    with pytest.raises(
        AccuracyGateError, match=rf"recipe '{recipe}' refused by the accuracy gate: its AUC drop"
    ) as info:
        check_gate(metrics)
    assert "exceeds the limit 0.001" in str(info.value) and "validation rows" in str(info.value)
    assert isinstance(info.value, PublishError)


def test_gate_needs_labelled_validation_data(versions: Versions) -> None:
    inputs = versions.holdout.inputs()
    fp32, int8 = versions.fp32[0], versions.int8
    with pytest.raises(PublishError, match="needs 'labels'"):
        evaluate(fp32, int8, inputs)
    with pytest.raises(PublishError, match="both clicks and non-clicks"):
        evaluate(fp32, int8, {**inputs, LABELS: np.zeros(len(versions.holdout))})
    with pytest.raises(PublishError, match="lacks model inputs"):
        evaluate(fp32, int8, {DENSE_INPUT: inputs[DENSE_INPUT], LABELS: versions.holdout.labels})
    with pytest.raises(PublishError, match="one row per label"):
        evaluate(fp32, int8, {**inputs, SPARSE_INPUT: inputs[SPARSE_INPUT][:10], LABELS: versions.holdout.labels})
