"""ONNX export and per-row int8 quantization: correctness, byte layout, determinism."""

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
torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgerec.errors import PublishError  # noqa: E402
from edgerec.evaluation import roc_auc  # noqa: E402
from edgerec.reference.data import ClickBatch, ClickGenerator, ReferenceConfig  # noqa: E402
from edgerec.reference.model import DLRM  # noqa: E402
from edgerec.reference.train import build_and_train, export_program  # noqa: E402
from edgerec.server.publish.export import EXTERNAL_DATA_THRESHOLD, data_path, to_onnx  # noqa: E402
from edgerec.server.publish.quantize import quantize_int8, quantize_rows  # noqa: E402

log = logging.getLogger(__name__)

CONFIG = ReferenceConfig.tiny()
TABLES = [f"embeddings.{t}.weight" for t in range(CONFIG.num_tables)]


@dataclass(frozen=True)
class Artifacts:
    programs: tuple[Path, Path]  # v1, v2 (.pt2)
    fp32: tuple[Path, Path]
    fp32_again: Path  # v1 exported a second time
    int8: tuple[Path, Path]
    day2: ClickBatch  # what v2 was trained on
    holdout: ClickBatch


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("artifacts")
    generator = ClickGenerator(CONFIG, seed=5)
    v1 = build_and_train(CONFIG, generator, day=1, num_samples=30_000)
    v2 = build_and_train(CONFIG, generator, day=2, num_samples=1_000, base_state=v1.state_dict())
    sample = generator.day(99, 4)
    programs = (export_program(v1, root / "v1.pt2", sample), export_program(v2, root / "v2.pt2", sample))
    fp32 = tuple(to_onnx(p, root / p.stem / "fp32" / "model.onnx") for p in programs)
    int8 = tuple(quantize_int8(f, f.parent.parent / "int8" / "model.onnx") for f in fp32)
    again = to_onnx(programs[0], root / "again" / "model.onnx")
    return Artifacts(programs, (fp32[0], fp32[1]), again, (int8[0], int8[1]), generator.day(2, 1_000),
                     generator.day(100, 20_000))  # fmt: skip


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _score(path: Path, batch: ClickBatch) -> np.ndarray:
    (score,) = _session(path).run(["score"], batch.inputs())
    return np.asarray(score)


def _external(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (offset, length) of every initializer stored in the data file."""
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            assert info["location"] == path.name + ".data"
            out[tensor.name] = (int(info["offset"]), int(info["length"]))
    return out


def _tensor_bytes(path: Path, name: str) -> bytes:
    offset, length = _external(path)[name]
    with open(data_path(path), "rb") as data:
        data.seek(offset)
        return data.read(length)


def _files(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), data_path(path).read_bytes()


def _touched(batch: ClickBatch, table: int) -> np.ndarray:
    touched = np.zeros(CONFIG.rows_per_table, dtype=bool)
    touched[np.unique(batch.sparse_ids[:, table])] = True
    return touched


# --- export ----------------------------------------------------------------------------


def test_fp32_model_is_valid_with_named_dynamic_io(artifacts: Artifacts) -> None:
    path = artifacts.fp32[0]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in model.graph.input] == [
        ("dense_features", ["batch", CONFIG.num_dense]),
        ("sparse_ids", ["batch", CONFIG.num_tables]),
    ]
    assert [(v.name, dims(v)) for v in model.graph.output] == [("score", ["batch"])]


def test_onnxruntime_matches_the_torch_program(artifacts: Artifacts) -> None:
    program = torch.export.load(artifacts.programs[0]).module()
    session = _session(artifacts.fp32[0])
    for n in (1, 2, 500):
        batch = artifacts.holdout
        inputs = {name: array[:n] for name, array in batch.inputs().items()}
        with torch.no_grad():
            expected = program(*(torch.from_numpy(a) for a in inputs.values())).numpy()
        (got,) = session.run(["score"], inputs)
        assert got.shape == (n,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_large_tensors_are_external_in_one_data_file(artifacts: Artifacts) -> None:
    for path in (*artifacts.fp32, *artifacts.int8):
        model = onnx.load(str(path), load_external_data=False)
        external = _external(path)
        for tensor in model.graph.initializer:
            if tensor.name not in external:
                assert len(tensor.raw_data) < EXTERNAL_DATA_THRESHOLD, tensor.name
        assert all(name in external for name in TABLES) or path in artifacts.int8
        spans = sorted(external.values())
        assert spans[0][0] == 0 and sum(length for _, length in spans) == data_path(path).stat().st_size
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_export_is_deterministic_and_free_of_source_paths(artifacts: Artifacts) -> None:
    assert _files(artifacts.fp32_again) == _files(artifacts.fp32[0])
    model_bytes = artifacts.fp32[0].read_bytes()
    for needle in (b"edgerec.reference", b"test_export", b".py", b"pkg.torch"):
        assert needle not in model_bytes
    model = onnx.load(str(artifacts.fp32[0]), load_external_data=False)
    assert not any(node.metadata_props or node.doc_string for node in model.graph.node)


def test_versions_share_the_layout_and_untouched_rows_keep_their_bytes(artifacts: Artifacts) -> None:
    v1, v2 = artifacts.fp32
    assert _external(v1) == _external(v2)  # every tensor at the same offset
    row_bytes = CONFIG.embedding_dim * 4
    for table, name in enumerate(TABLES):
        old, new = _tensor_bytes(v1, name), _tensor_bytes(v2, name)
        touched = _touched(artifacts.day2, table)
        for row in range(CONFIG.rows_per_table):
            same = old[row * row_bytes : (row + 1) * row_bytes] == new[row * row_bytes : (row + 1) * row_bytes]
            assert same != touched[row], (name, row)


def test_onnx_sources_inline_or_external_give_the_same_artifact(artifacts: Artifacts, tmp_path: Path) -> None:
    reference = _files(artifacts.fp32[0])
    model = onnx.load(str(artifacts.fp32[0]))
    inline = tmp_path / "inline.onnx"
    onnx.save_model(model, str(inline))
    elsewhere = tmp_path / "elsewhere" / "src.onnx"
    elsewhere.parent.mkdir()
    onnx.save_model(model, str(elsewhere), save_as_external_data=True, location="weights.bin")
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    data_path(out).write_bytes(b"stale" * 100_000)  # must be replaced, not appended to
    for source in (inline, elsewhere, artifacts.fp32[0]):
        assert _files(to_onnx(source, out)) == reference
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_onnx_source_is_canonicalised(tmp_path: Path) -> None:
    """Typed-field tensors become raw data, a big Constant an external initializer, doc strings go."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(32, 16)).astype(np.float32)
    offset = rng.normal(size=(64, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["offset"], value=numpy_helper.from_array(offset, "offset")),
            helper.make_node("MatMul", ["x", "w"], ["xw"], doc_string="/home/me/train.py:12"),
            helper.make_node("Add", ["xw", "offset"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 16])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="by me")
    source = tmp_path / "src.onnx"
    onnx.save_model(model, str(source))
    out = to_onnx(source, tmp_path / "out" / "model.onnx")
    assert set(_external(out)) == {"offset", "w"}
    saved = onnx.load(str(out), load_external_data=False)
    assert saved.doc_string == "" and all(not n.doc_string for n in saved.graph.node)
    assert [n.op_type for n in saved.graph.node] == ["MatMul", "Add"]
    x = rng.normal(size=(64, 32)).astype(np.float32)
    (y,) = _session(out).run(["y"], {"x": x})
    np.testing.assert_allclose(y, x @ weight + offset, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("content", [b"not a model", b""])
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_unreadable_sources_raise_publish_error(tmp_path: Path, suffix: str, content: bytes) -> None:
    source = tmp_path / f"broken{suffix}"
    source.write_bytes(content)
    with pytest.raises(PublishError, match="cannot read"):
        to_onnx(source, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_unsupported_sources_raise_publish_error(tmp_path: Path, artifacts: Artifacts) -> None:
    with pytest.raises(PublishError, match="does not exist"):
        to_onnx(tmp_path / "missing.pt2", tmp_path / "model.onnx")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(PublishError, match="unsupported model source"):
        to_onnx(other, tmp_path / "model.onnx")
    with pytest.raises(PublishError, match="output_names"):
        to_onnx(artifacts.fp32[0], tmp_path / "model.onnx", output_names=["p"])


def test_a_fixed_batch_dimension_is_refused_with_how_to_export_it(tmp_path: Path) -> None:
    import torch

    program = torch.export.export(torch.nn.Linear(4, 1).eval(), (torch.zeros(8, 4),))  # batch fixed at 8
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(program, fixed)
    with pytest.raises(PublishError, match=r"batch dimension is fixed.*batch 8.*dynamic_shapes"):
        to_onnx(fixed, tmp_path / "out" / "model.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "x.onnx"))
    with pytest.raises(PublishError, match=r"batch dimension is fixed.*dynamic_axes"):
        to_onnx(tmp_path / "x.onnx", tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out" / "model.onnx").exists()


# --- int8 ------------------------------------------------------------------------------


def test_int8_is_accurate_small_and_valid(artifacts: Artifacts) -> None:
    fp32, int8 = artifacts.fp32[0], artifacts.int8[0]
    onnx.checker.check_model(str(int8), full_check=True)
    model = onnx.load(str(int8), load_external_data=False)
    kinds = {t.name: (t.data_type, list(t.dims)) for t in model.graph.initializer}
    for name in TABLES:
        assert name not in kinds
        assert kinds[name + "_int8"] == (TensorProto.INT8, [CONFIG.rows_per_table, CONFIG.embedding_dim])
        assert kinds[name + "_scale"] == (TensorProto.FLOAT16, [CONFIG.rows_per_table, 1])
    holdout = artifacts.holdout
    p32, p8 = _score(fp32, holdout), _score(int8, holdout)
    max_dp = float(np.abs(p32 - p8).max())
    auc32, auc8 = roc_auc(holdout.labels, p32), roc_auc(holdout.labels, p8)
    log.info("int8: max |dp| %.2e, AUC %.5f -> %.5f", max_dp, auc32, auc8)
    assert max_dp <= 1e-2
    assert abs(auc32 - auc8) < 2e-3
    assert _files(quantize_int8(fp32, int8.parent.parent / "int8-again" / "model.onnx")) == _files(int8)


def test_int8_untouched_rows_keep_bytes_and_scales(artifacts: Artifacts) -> None:
    v1, v2 = artifacts.int8
    assert _external(v1) == _external(v2)
    dim = CONFIG.embedding_dim
    for table, name in enumerate(TABLES):
        q1 = np.frombuffer(_tensor_bytes(v1, name + "_int8"), np.int8).reshape(-1, dim)
        q2 = np.frombuffer(_tensor_bytes(v2, name + "_int8"), np.int8).reshape(-1, dim)
        s1 = np.frombuffer(_tensor_bytes(v1, name + "_scale"), np.uint16)
        s2 = np.frombuffer(_tensor_bytes(v2, name + "_scale"), np.uint16)
        touched = _touched(artifacts.day2, table)
        np.testing.assert_array_equal(q1[~touched], q2[~touched])
        np.testing.assert_array_equal(s1[~touched], s2[~touched])
        moved = (q1[touched] != q2[touched]).any(axis=1) | (s1[touched] != s2[touched])
        assert moved.mean() > 0.9  # tiny steps may round to the same int8 row


def test_small_preset_int8_is_under_0_30x_of_fp32(tmp_path: Path) -> None:
    config = ReferenceConfig.small()
    sample = ClickGenerator(config, seed=0).day(0, 4)
    fp32 = to_onnx(export_program(DLRM(config), tmp_path / "small.pt2", sample), tmp_path / "fp32" / "m.onnx")
    int8 = quantize_int8(fp32, tmp_path / "int8" / "m.onnx")

    def size(path: Path) -> int:
        return int(path.stat().st_size + data_path(path).stat().st_size)

    ratio = size(int8) / size(fp32)
    log.info("small preset: fp32 %d B, int8 %d B (%.3fx)", size(fp32), size(int8), ratio)
    # 16 int8 values + a float16 scale per 64-byte fp32 row: 18 / 64 = 0.281, plus the dense layers.
    assert 0.27 < ratio <= 0.30


def _lookup_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Hand-made graph: a table shared by two lookups, plus tables quantization must skip."""
    rng = np.random.default_rng(1)
    tables = {
        "shared": rng.normal(size=(50, 8)).astype(np.float32),
        "tied": rng.normal(size=(40, 8)).astype(np.float32),  # also the weight of a Gemm
        "columns": rng.normal(size=(8, 40)).astype(np.float32),  # Gather on axis 1
    }
    tables["shared"][3] = 0.0  # an all-zero row
    ids = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["shared", "a"], ["ea"]),
            helper.make_node("Gather", ["shared", "b"], ["eb"], name="second"),
            helper.make_node("Gather", ["tied", "a"], ["et"]),
            helper.make_node("Gemm", ["et", "tied"], ["logits"], transB=1),
            helper.make_node("Gather", ["columns", "a"], ["ec"], axis=1),
            helper.make_node("Add", ["ea", "eb"], ["sum"]),
        ],
        "lookups",
        [ids("a", TensorProto.INT64, ["n"]), ids("b", TensorProto.INT64, ["n"])],
        [
            ids("sum", TensorProto.FLOAT, ["n", 8]),
            ids("logits", TensorProto.FLOAT, ["n", 40]),
            ids("ec", TensorProto.FLOAT, [8, "n"]),
        ],
        [numpy_helper.from_array(value, name) for name, value in tables.items()],
    )
    path = tmp_path / "lookups.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, tables


def test_shared_tables_are_quantized_once_and_others_skipped(tmp_path: Path) -> None:
    source, tables = _lookup_model(tmp_path)
    out = quantize_int8(source, tmp_path / "q" / "model.onnx")
    model = onnx.load(str(out))
    names = sorted(t.name for t in model.graph.initializer)
    assert names == ["columns", "shared_int8", "shared_scale", "tied"]
    assert [n.op_type for n in model.graph.node].count("Cast") == 4  # int8 rows and float16 scales, per lookup
    a, b = np.array([0, 3, 39, 3]), np.array([3, 1, 49, -1])
    got_sum, got_logits, got_ec = _session(out).run(["sum", "logits", "ec"], {"a": a, "b": b})
    q, scale = quantize_rows(tables["shared"])
    dequantized = q.astype(np.float32) * scale.astype(np.float32)
    np.testing.assert_array_equal(got_sum, dequantized[a] + dequantized[b])
    np.testing.assert_allclose(got_sum, tables["shared"][a] + tables["shared"][b], atol=0.05)
    np.testing.assert_allclose(got_logits, tables["tied"][a] @ tables["tied"].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_ec, tables["columns"][:, a])


def test_model_without_lookups_is_copied_in_the_canonical_layout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(weight, "w")],
    )
    source = tmp_path / "dense.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    with caplog.at_level(logging.INFO, logger="edgerec.server.publish.quantize"):
        out = quantize_int8(source, tmp_path / "int8" / "model.onnx")
    assert "no embedding Gather" in caplog.text
    assert _files(out) == _files(to_onnx(source, tmp_path / "fp32" / "model.onnx"))


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
                  elements=st.floats(-1e3, 1e3, width=32)))  # fmt: skip
def test_quantize_rows_is_a_bounded_per_row_function(table: np.ndarray) -> None:
    q, scale = quantize_rows(table)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == (table.shape[0], 1)
    assert np.abs(q).max(initial=0) <= 127
    step = scale.astype(np.float32)
    exact = np.abs(table).max(axis=1, keepdims=True, initial=0) / 127
    assert (step >= exact).all()  # rounded up: the largest value is never clipped
    # Within a float16 rounding of the exact scale (or the smallest subnormal, for tiny rows).
    assert (step <= exact * (1 + 2**-10) + 6e-8).all()
    # Half a step of rounding (plus float32 slack).
    assert (np.abs(q * step - table) <= step / 2 * 1.001 + 1e-36).all()
    for row in range(table.shape[0]):  # each row alone quantizes to the same bytes
        q_row, scale_row = quantize_rows(table[row : row + 1])
        assert q_row.tobytes() == q[row].tobytes() and scale_row.tobytes() == scale[row].tobytes()


def test_quantize_rows_refuses_non_finite_values() -> None:
    with pytest.raises(PublishError, match="NaN or infinite"):
        quantize_rows(np.array([[1.0, np.inf]], dtype=np.float32))


def test_scales_beyond_float16_stay_float32(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = np.array([[1e7, -2.0], [0.5, 0.25]], np.float32)
    with pytest.raises(OverflowError):
        quantize_rows(table)
    q, scale = quantize_rows(table, np.float32)
    assert scale.dtype == np.float32 and q[0, 0] == 127
    graph = helper.make_graph(
        [helper.make_node("Gather", ["big", "ids"], ["rows"])],
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(np.tile(table, (300, 1)), "big")],
    )
    source = tmp_path / "big.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    with caplog.at_level(logging.WARNING, logger="edgerec.server.publish.quantize"):
        out = quantize_int8(source, tmp_path / "int8" / "model.onnx")
    assert "scales stay float32" in caplog.text
    model = onnx.load(str(out))
    assert {t.name: t.data_type for t in model.graph.initializer}["big_scale"] == TensorProto.FLOAT
    (rows,) = _session(out).run(["rows"], {"ids": np.array([0, 1, 3])})
    assert (np.abs(rows - table[[0, 1, 1]]) <= scale[[0, 1, 1]] / 2 * 1.001).all()
