"""The "zstd-patch-from" and "tensor" codecs: byte-exact on real ONNX updates, safe on damaged patches."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.torch
pytest.importorskip("onnx")

import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import set_external_data  # noqa: E402
from patchtools import body_of, byte_pairs, reseal  # noqa: E402

from edgerec.codecs import apply_patch, get_codec, make_patch  # noqa: E402
from edgerec.codecs.patch_from import PatchFromCodec  # noqa: E402
from edgerec.codecs.tensor import TensorCodec  # noqa: E402
from edgerec.codecs.tensor import format as fmt  # noqa: E402
from edgerec.codecs.tensor.onnx_layout import locate_tensors  # noqa: E402
from edgerec.errors import IntegrityError, PatchError, WrongBaseError  # noqa: E402

DELTA_CODECS = ("zstd-patch-from", "tensor")
REFUSED = (PatchError, IntegrityError)
PREVIOUS = b"previous contents of out"
SUFFIXES = (".onnx", ".onnx.data")


# --- helpers -------------------------------------------------------------------------


@contextmanager
def workdir() -> Iterator[Path]:
    """A fresh directory per hypothesis example."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def round_trip(codec: str, old: Path, new: Path, d: Path) -> bytes:
    """Make a ``codec`` patch from ``old`` to ``new``, apply it, check the result; return the patch."""
    patch = d / f"{codec}.patch"
    make_patch(codec, old, new, patch)
    out = write(d / "out.bin", PREVIOUS)
    apply_patch(old, patch, out)
    assert out.read_bytes() == new.read_bytes()
    return patch.read_bytes()


def round_trip_bytes(codec: TensorCodec | PatchFromCodec, old: bytes, new: bytes) -> bytes:
    with workdir() as d:
        old_path, new_path, patch = write(d / "old.bin", old), write(d / "new.bin", new), d / "p.patch"
        codec.make(old_path, new_path, patch)
        out = d / "out.bin"
        codec.apply(old_path, patch, out)
        assert out.read_bytes() == new
        return patch.read_bytes()


def assert_refused(patch: bytes, old: bytes, match: str | None = None) -> None:
    """Applying ``patch`` to ``old`` raises PatchError or IntegrityError and leaves no trace."""
    with workdir() as d:
        base, bad = write(d / "old.bin", old), write(d / "bad.patch", patch)
        out = write(d / "out.bin", PREVIOUS)
        with pytest.raises(REFUSED, match=match):
            apply_patch(base, bad, out)
        assert out.read_bytes() == PREVIOUS
        assert sorted(p.name for p in d.iterdir()) == ["bad.patch", "old.bin", "out.bin"]


def refused_or_exact(patch: bytes, old: bytes, new: bytes) -> None:
    """A damaged patch may be accepted only if it still rebuilds exactly ``new``."""
    with workdir() as d:
        base, bad = write(d / "old.bin", old), write(d / "bad.patch", patch)
        out = write(d / "out.bin", PREVIOUS)
        try:
            apply_patch(base, bad, out)
        except REFUSED:
            assert out.read_bytes() == PREVIOUS
        else:
            assert out.read_bytes() == new
        assert sorted(p.name for p in d.iterdir()) == ["bad.patch", "old.bin", "out.bin"]


def split_tensor_body(body: bytes) -> tuple[bytes, bytes]:
    """(header + ranges + remainder frame, decoded op stream) of a tensor body."""
    _, _, _, range_count, frame_size = fmt.HEADER.unpack_from(body)
    pos = fmt.HEADER.size + range_count * fmt.RANGE.size + frame_size
    head, ops = body[:pos], b""
    while pos < len(body):
        (size,) = fmt.FRAME_LENGTH.unpack_from(body, pos)
        ops += zstandard.ZstdDecompressor().decompress(body[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return head, ops


def join_tensor_body(head: bytes, ops: bytes) -> bytes:
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=True)
    frames = [compressor.compress(ops[i : i + fmt.FRAME_SIZE]) for i in range(0, len(ops), fmt.FRAME_SIZE)]
    return head + b"".join(fmt.FRAME_LENGTH.pack(len(f)) + f for f in frames)


def save_model(path: Path, tensors: dict[str, np.ndarray], *, graph_name: str = "g", threshold: int = 64) -> Path:
    """A ModelProto holding ``tensors`` as initializers; those of ``threshold`` bytes or more go to ``X.onnx.data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_file = path.with_name(path.name + ".data")
    initializers, offset = [], 0
    with open(data_file, "wb") as data:
        for name, array in tensors.items():
            tensor = numpy_helper.from_array(array, name)
            if array.nbytes >= threshold:
                data.write(tensor.raw_data)
                set_external_data(tensor, data_file.name, offset=offset, length=array.nbytes)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                offset += array.nbytes
            initializers.append(tensor)
    graph = helper.make_graph([], graph_name, [], [], initializer=initializers)
    onnx.save_model(helper.make_model(graph), str(path))
    return path


# --- reference models ----------------------------------------------------------------


def _grow(model: onnx.ModelProto, rows: int) -> None:
    """Append ``rows`` rows to the first embedding table (and its scales, for int8)."""
    rng = np.random.default_rng(11)
    for tensor in model.graph.initializer:
        if tensor.name.startswith("embeddings.0.weight"):
            array = numpy_helper.to_array(tensor)
            extra = (rng.standard_normal((rows, array.shape[1])) * 20).astype(array.dtype)
            tensor.CopyFrom(numpy_helper.from_array(np.concatenate([array, extra]), tensor.name))


def _add(model: onnx.ModelProto) -> None:
    """Add a large tensor sorting first (every offset in the data file moves) and a small inline one."""
    rng = np.random.default_rng(12)
    big = rng.standard_normal((300, 8)).astype(np.float32)
    model.graph.initializer.extend(
        [numpy_helper.from_array(big, "aaa_extra"), numpy_helper.from_array(np.ones(4, np.float32), "aab_small")]
    )


def _regraph(model: onnx.ModelProto) -> None:
    """Change the graph but no tensor: rename the nodes, add model metadata."""
    for node in model.graph.node:
        node.name = f"{node.name}_renamed"
    helper.set_model_props(model, {"edgerec.note": "graph changed"})


VARIANTS: dict[str, Callable[[onnx.ModelProto], None]] = {
    "grown": lambda m: _grow(m, 50),
    "added": _add,
    "graph": _regraph,
}
PAIRS = [("v1", "v2"), ("v2", "grown"), ("v2", "added"), ("added", "v2"), ("v2", "graph")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_pair: tuple[Path, Path]) -> dict[str, Path]:
    """``.onnx`` paths (each with its ``.onnx.data``) by name: v1, v2 and variants of v2, fp32 and ``_int8``."""
    # mypy cannot follow the package-dir mapping of edgerec.server (see `make typecheck`).
    from edgerec.server.publish.export import load_onnx, save_canonical, to_onnx  # type: ignore[import-not-found]
    from edgerec.server.publish.quantize import quantize_int8  # type: ignore[import-not-found]

    folder = tmp_path_factory.mktemp("onnx")
    paths: dict[str, Path] = {}
    for name, program in zip(("v1", "v2"), model_pair, strict=True):
        # One folder per model, same file name: as a registry stores versions.
        paths[name] = to_onnx(program, folder / name / "model.onnx")
    for name, change in VARIANTS.items():
        model = load_onnx(paths["v2"])
        change(model)
        paths[name] = save_canonical(model, folder / name / "model.onnx")
    for name in ("v1", "v2"):
        paths[f"{name}_int8"] = quantize_int8(paths[name], folder / f"{name}_int8" / "model.onnx")
    for name in VARIANTS:  # the same variants of the quantized v2 (int8 tables and their scales grow)
        model = load_onnx(paths["v2_int8"])
        VARIANTS[name](model)
        paths[f"{name}_int8"] = save_canonical(model, folder / f"{name}_int8" / "model.onnx")
    return paths


def file_of(models: dict[str, Path], name: str, suffix: str) -> Path:
    return models[name].with_name("model" + suffix)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("precision", ["", "_int8"])
@pytest.mark.parametrize(("old", "new"), PAIRS)
@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_reference_updates_round_trip(
    codec: str, old: str, new: str, precision: str, suffix: str, models: dict[str, Path], tmp_path: Path
) -> None:
    old_file = file_of(models, old + precision, suffix)
    new_file = file_of(models, new + precision, suffix)
    assert old_file.read_bytes() != new_file.read_bytes() or (suffix, new) == (".onnx.data", "graph")
    round_trip(codec, old_file, new_file, tmp_path)


@pytest.mark.parametrize("precision", ["", "_int8"])
def test_tensor_beats_generic_diffs_on_a_training_update(
    precision: str, models: dict[str, Path], tmp_path: Path
) -> None:
    old, new = file_of(models, "v1" + precision, ".onnx.data"), file_of(models, "v2" + precision, ".onnx.data")
    sizes = {codec: len(round_trip(codec, old, new, tmp_path)) for codec in ("bsdiff4", "zstd-patch-from", "tensor")}
    assert sizes["tensor"] <= 0.95 * min(sizes["bsdiff4"], sizes["zstd-patch-from"]), sizes


def test_tensor_copies_what_did_not_change(models: dict[str, Path], tmp_path: Path) -> None:
    # The graph changed but no tensor did: the data file's patch is a handful of COPY ops.
    patch = round_trip("tensor", file_of(models, "v2", ".onnx.data"), file_of(models, "graph", ".onnx.data"), tmp_path)
    assert len(patch) < 300
    # A table grew: the rows before the new ones and every other tensor are copied.
    grown = file_of(models, "grown", ".onnx.data")
    patch = round_trip("tensor", file_of(models, "v2", ".onnx.data"), grown, tmp_path)
    assert len(patch) < 50 * 8 * 4 + 600


@pytest.mark.parametrize("name", ["v1", "grown_int8"])
def test_layout_agrees_with_onnx(name: str, models: dict[str, Path]) -> None:
    graph_file = models[name]
    model = onnx.load_model(str(graph_file), load_external_data=False)
    inline = {t.name: t.raw_data for t in model.graph.initializer if t.raw_data}
    external = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}
    graph_bytes = graph_file.read_bytes()
    spans = locate_tensors(graph_file, graph_bytes)
    assert {s.name: graph_bytes[s.offset : s.end] for s in spans} == inline
    data_file = graph_file.with_name(graph_file.name + ".data")
    spans = locate_tensors(data_file, data_file.read_bytes())
    assert {s.name: (str(s.offset), str(s.length)) for s in spans} == {
        n: (e["offset"], e["length"]) for n, e in external.items()
    }
    tables = [s for s in spans if s.name.startswith("embeddings.")]
    assert tables and all(s.rows is not None and s.rows >= 2000 for s in tables)


@given(data=st.data())
def test_layout_of_damaged_models_stays_in_bounds(data: st.DataObject, models: dict[str, Path]) -> None:
    graph = bytearray(models[data.draw(st.sampled_from(["v1", "grown_int8"]))].read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        graph[data.draw(st.integers(0, len(graph) - 1))] = data.draw(st.integers(0, 255))
    graph = graph[: data.draw(st.integers(0, len(graph)))]
    with workdir() as d:
        spans = locate_tensors(write(d / "m.onnx", bytes(graph)), bytes(graph))
        assert all(0 <= s.offset < s.end <= len(graph) for s in spans)
        assert all(a.end <= b.offset for a, b in itertools.pairwise(spans))
        data_file = write(d / "m.onnx.data", bytes(1 << 16))
        assert all(s.end <= 1 << 16 for s in locate_tensors(data_file, data_file.read_bytes()))


# --- synthetic ONNX pairs ------------------------------------------------------------

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int64, np.int32]


@st.composite
def onnx_updates(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """(old tensors, new tensors, new graph name): tables with changed, grown or shrunk rows, added, removed..."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    old: dict[str, np.ndarray] = {}
    for i in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.sampled_from([(40, 4), (3, 2, 5), (17,), (1, 9), (64, 1), (25, 3)]))
        old[f"t{i}"] = (rng.standard_normal(shape) * 50).astype(dtype)
    new: dict[str, np.ndarray] = {}
    for name, array in old.items():
        action = draw(st.sampled_from(["keep", "rows", "all", "grow", "shrink", "retype", "drop"]))
        changed = array.copy()
        if action == "rows":
            rows = rng.random(array.shape[0]) < draw(st.floats(0.0, 1.0))
            changed[rows] = (rng.standard_normal(changed[rows].shape) * 50).astype(array.dtype)
        elif action == "all":
            changed = (array.astype(np.float64) + rng.standard_normal(array.shape)).astype(array.dtype)
        elif action == "grow":
            extra = (rng.standard_normal((3, *array.shape[1:])) * 50).astype(array.dtype)
            changed = np.concatenate([array, extra])
        elif action == "shrink":
            changed = array[: max(1, array.shape[0] // 2)].copy()
        elif action == "retype":
            changed = array.astype(np.float32 if array.dtype != np.float32 else np.int8)
        if action != "drop":
            new[name] = changed
    for i in range(draw(st.integers(0, 2))):
        new[f"added{i}"] = rng.standard_normal((draw(st.integers(1, 30)), 4)).astype(np.float32)
    names = list(new)
    if draw(st.booleans()):
        names.reverse()  # tensors at different offsets
    return old, {name: new[name] for name in names}, draw(st.sampled_from(["g", "g2", "a longer graph name"]))


@given(update=onnx_updates(), threshold=st.sampled_from([1, 64, 1 << 30]))
def test_synthetic_onnx_updates_round_trip(
    update: tuple[dict[str, np.ndarray], dict[str, np.ndarray], str], threshold: int
) -> None:
    old, new, graph_name = update
    with workdir() as d:
        old_model = save_model(d / "old" / "m.onnx", old, threshold=threshold)
        new_model = save_model(d / "new" / "m.onnx", new, graph_name=graph_name, threshold=threshold)
        for suffix in SUFFIXES:
            old_file, new_file = old_model.with_name("m" + suffix), new_model.with_name("m" + suffix)
            round_trip("tensor", old_file, new_file, d)


# --- arbitrary bytes -----------------------------------------------------------------


GENERIC = TensorCodec(remainder_limit=0)  # no remainder frame: the range diff covers the whole file


@given(pair=byte_pairs(max_size=3000))
def test_arbitrary_bytes_round_trip(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    for codec in (PatchFromCodec(), TensorCodec(), GENERIC):
        round_trip_bytes(codec, old, new)


@given(pair=byte_pairs(max_size=3000), name=st.sampled_from(["m.onnx", "m.onnx.data"]))
def test_arbitrary_bytes_named_like_onnx_round_trip(pair: tuple[bytes, bytes], name: str) -> None:
    old, new = pair
    with workdir() as d:
        # A companion that is garbage, or that points at the wrong bytes, must not matter.
        write(d / "old" / "m.onnx", old[:100])
        write(d / "new" / "m.onnx", new[-100:])
        round_trip("tensor", write(d / "old" / name, old), write(d / "new" / name, new), d)


def test_range_diff_finds_moved_and_shifted_blocks() -> None:
    rng = np.random.default_rng(4)
    old = rng.bytes(1 << 20)
    new = old[600_000:] + rng.bytes(1000) + old[:300_000] + old[300_017:600_000]
    patch = round_trip_bytes(GENERIC, old, new)
    assert len(patch) < 2_000


def test_patch_from_reaches_back_across_the_whole_base() -> None:
    # A window of old + new: bytes 12 MiB back are still matched (level 3's own window is 1 MiB).
    rng = np.random.default_rng(5)
    old = rng.bytes(12 << 20)
    new = rng.bytes(1000) + old[: 6 << 20] + b"edit" + old[(6 << 20) + 4 :]
    patch = round_trip_bytes(PatchFromCodec(level=3), old, new)
    assert len(patch) < 10_000


# --- damaged patches -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_patches(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[bytes, bytes, bytes]]:
    """(old, new, patch) by codec and file: v2 -> grown (int8), and v1 -> v2 (fp32, "tensor-v1")."""
    d = tmp_path_factory.mktemp("patches")
    cases = {
        f"{codec}{suffix}": (codec, "v2_int8", "grown_int8", suffix) for codec in DELTA_CODECS for suffix in SUFFIXES
    }
    cases["tensor-v1"] = ("tensor", "v1", "v2", ".onnx.data")
    patches = {}
    for key, (codec, old_name, new_name, suffix) in cases.items():
        old, new = file_of(models, old_name, suffix), file_of(models, new_name, suffix)
        make_patch(codec, old, new, d / f"{key}.patch")
        patches[key] = (old.read_bytes(), new.read_bytes(), (d / f"{key}.patch").read_bytes())
    return patches


PATCH_KEYS = [*(f"{codec}{suffix}" for codec in DELTA_CODECS for suffix in SUFFIXES), "tensor-v1"]
TENSOR_PATCH_KEYS = ["tensor.onnx", "tensor.onnx.data", "tensor-v1"]


@given(data=st.data())
def test_truncated_or_flipped_patches_are_refused(
    data: st.DataObject, real_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    old, _, patch = real_patches[data.draw(st.sampled_from(PATCH_KEYS))]
    if data.draw(st.booleans()):
        damaged = patch[: data.draw(st.integers(0, len(patch) - 1))]
    else:
        flipped = bytearray(patch)
        flipped[data.draw(st.integers(0, len(patch) - 1))] ^= data.draw(st.integers(1, 255))
        damaged = bytes(flipped)
    assert_refused(damaged, old)


@given(data=st.data())
def test_resealed_damaged_bodies_are_refused_or_harmless(
    data: st.DataObject, real_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    old, new, patch = real_patches[data.draw(st.sampled_from(PATCH_KEYS))]
    body = bytearray(body_of(patch))
    damage = data.draw(st.sampled_from(["flip", "cut", "append", "splice"]))
    if damage == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            body[data.draw(st.integers(0, len(body) - 1))] ^= data.draw(st.integers(1, 255))
    elif damage == "cut":
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    elif damage == "append":
        body += data.draw(st.binary(min_size=1, max_size=64))
    else:
        start = data.draw(st.integers(0, len(body)))
        body[start : start + data.draw(st.integers(0, 64))] = data.draw(st.binary(max_size=64))
    refused_or_exact(reseal(patch, bytes(body)), old, new)


@given(data=st.data())
def test_damaged_op_streams_are_refused_or_harmless(
    data: st.DataObject, real_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    """Damage behind valid zstd frames reaches the op parser itself: every bound must hold."""
    old, new, patch = real_patches[data.draw(st.sampled_from(TENSOR_PATCH_KEYS))]
    head, ops = split_tensor_body(body_of(patch))
    mutated = bytearray(ops)
    damage = data.draw(st.sampled_from(["flip", "cut", "append", "splice", "big"]))
    position = data.draw(st.integers(0, len(mutated) - 1))
    if damage == "flip":
        mutated[position] ^= data.draw(st.integers(1, 255))
    elif damage == "cut":
        del mutated[position:]
    elif damage == "append":
        mutated += data.draw(st.binary(min_size=1, max_size=32))
    elif damage == "splice":
        mutated[position : position + data.draw(st.integers(0, 32))] = data.draw(st.binary(max_size=32))
    else:  # a huge or boundary integer over any 8 bytes
        value = data.draw(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]))
        mutated[position : position + 8] = value.to_bytes(8, "little")
    if not mutated:
        mutated = bytearray(b"\x07")
    refused_or_exact(reseal(patch, join_tensor_body(head, bytes(mutated))), old, new)


def malformed_bodies(old_size: int) -> dict[str, tuple[bytes, str]]:
    """Tensor bodies each breaking one rule, with the message that names it."""
    header = fmt.HEADER.pack(fmt.MAGIC, old_size, 0, 0, 0)

    def ops(*parts: bytes) -> bytes:
        return join_tensor_body(header, b"".join(parts))

    return {
        "magic": (b"ERT0" + header[4:], "magic"),
        "old size": (fmt.HEADER.pack(fmt.MAGIC, old_size + 1, 0, 0, 0), "old file of"),
        "ranges": (fmt.HEADER.pack(fmt.MAGIC, old_size, 0, 2**32 - 1, 0), "remainder ranges"),
        "remainder": (fmt.HEADER.pack(fmt.MAGIC, old_size, 1 << 40, 0, 0), "remainder of"),
        "no END": (ops(bytes([fmt.OP_COPY]), fmt.COPY_ARGS.pack(0, 1)), "before its END"),
        "op code": (ops(b"\x09"), "unknown op code 9"),
        "copy past old": (ops(bytes([fmt.OP_COPY]), fmt.COPY_ARGS.pack(old_size - 1, 2), b"\0"), "old file of"),
        "copy past target": (ops(bytes([fmt.OP_COPY]), fmt.COPY_ARGS.pack(0, 2**63), b"\0"), "overruns the target"),
        "literal": (ops(bytes([fmt.OP_LITERAL]), fmt.LENGTH_ARG.pack(2**64 - 1), b"\0"), "overruns the target"),
        "remainder op": (ops(bytes([fmt.OP_REMAINDER]), fmt.LENGTH_ARG.pack(1), b"\0"), "overruns the remainder"),
        "dense size": (ops(bytes([fmt.OP_DENSE]), fmt.DENSE_ARGS.pack(0, 0, 10, 4, 1), b"\0"), "malformed"),
        "dense base": (ops(bytes([fmt.OP_DENSE]), fmt.DENSE_ARGS.pack(0, 9, 8, 4, 1), b"\0"), "malformed"),
        "dense elem": (ops(bytes([fmt.OP_DENSE]), fmt.DENSE_ARGS.pack(0, 0, 8, 3, 1), b"\0"), "element size 3"),
        "transform": (ops(bytes([fmt.OP_DENSE]), fmt.DENSE_ARGS.pack(0, 0, 8, 4, 7), b"\0"), "transform 7"),
        "rows count": (ops(bytes([fmt.OP_ROWS]), fmt.ROWS_ARGS.pack(0, 0, 4, 2, 1, 0, 5), b"\0"), "malformed"),
        "rows past old": (ops(bytes([fmt.OP_ROWS]), fmt.ROWS_ARGS.pack(0, 1, 2, 2, 1, 0, 0), b"\0"), "past the old"),
        "rows order": (
            ops(bytes([fmt.OP_ROWS]), fmt.ROWS_ARGS.pack(0, 0, 2, 1, 1, 0, 2), bytes(8), b"ab", b"\0"),
            "strictly increasing",
        ),
        "after END": (ops(b"\0\0"), "follows the END"),
        "short": (ops(b"\0"), "the header promises"),
    }


@pytest.mark.parametrize("case", list(malformed_bodies(100)))
def test_malformed_tensor_bodies_name_the_problem(case: str) -> None:
    old, new = bytes(range(100)), bytes(range(100, 0, -1)) * 3
    body, message = malformed_bodies(len(old))[case]
    with workdir() as d:
        patch = d / "p.patch"
        make_patch("tensor", write(d / "old.bin", old), write(d / "new.bin", new), patch)
        assert_refused(reseal(patch.read_bytes(), body), old, match=message)


def test_oversized_frames_are_refused() -> None:
    old, new = b"0123456789" * 10, b"x" * 300
    header = fmt.HEADER.pack(fmt.MAGIC, len(old), 0, 0, 0)
    with workdir() as d:
        patch = d / "p.patch"
        make_patch("tensor", write(d / "old.bin", old), write(d / "new.bin", new), patch)
        valid = patch.read_bytes()
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(fmt.FRAME_SIZE + 1))
    too_big = header + fmt.FRAME_LENGTH.pack(len(frame)) + frame
    assert_refused(reseal(valid, too_big), old, match="not 1..")
    assert_refused(reseal(valid, header + fmt.FRAME_LENGTH.pack(2**32 - 1) + b"x"), old, match="does not fit")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0")
    assert_refused(reseal(valid, header + fmt.FRAME_LENGTH.pack(len(unsized)) + unsized), old, match="declares")


def test_patch_from_window_above_the_limit_is_refused() -> None:
    from backports.zstd import CompressionParameter, ZstdCompressor

    old, new = b"0123456789" * 10, b"0123456789" * 11
    compressor = ZstdCompressor(
        options={CompressionParameter.window_log: 27, CompressionParameter.content_size_flag: 0}
    )
    body = compressor.compress(new) + compressor.flush()
    with workdir() as d:
        patch = d / "p.patch"
        make_patch("zstd-patch-from", write(d / "old.bin", old), write(d / "new.bin", new), patch)
        assert_refused(reseal(patch.read_bytes(), body), old, match="needs a window of 134217728 bytes")
    assert PatchFromCodec().window_limit(len(old), len(new)) == 1024


# --- bases and outputs ---------------------------------------------------------------


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_wrong_or_missing_base_is_refused(codec: str, real_patches: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    old, _, patch = real_patches[f"{codec}.onnx.data"]
    with workdir() as d:
        bad = write(d / "p.patch", patch)
        out = write(d / "out.bin", PREVIOUS)
        other = write(d / "other.bin", old[:-1] + bytes([old[-1] ^ 1]))
        with pytest.raises(WrongBaseError, match="applies to a file with sha256"):
            apply_patch(other, bad, out)
        with pytest.raises(WrongBaseError, match="got none"):
            apply_patch(None, bad, out)
        assert out.read_bytes() == PREVIOUS


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_apply_in_place_and_make_needs_a_base(codec: str, real_patches: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    old, new, patch = real_patches[f"{codec}.onnx.data"]
    with workdir() as d:
        target = write(d / "model.onnx.data", old)
        apply_patch(target, write(d / "p.patch", patch), target)  # out is also the base
        assert target.read_bytes() == new
        with pytest.raises(ValueError, match="needs a base"):
            get_codec(codec).make(None, target, d / "q.patch")
        assert not (d / "q.patch").exists()


def test_tensor_apply_streams(tmp_path: Path) -> None:
    """A 40 MB table: apply's Python allocations stay far below the target size (they do not hold it)."""
    rng = np.random.default_rng(6)
    table = rng.standard_normal((655_360, 16)).astype(np.float32)
    old_model = save_model(tmp_path / "old" / "m.onnx", {"table": table, "w": np.ones((64, 64), np.float32)})
    table[rng.random(len(table)) < 0.02] += np.float32(0.5)
    new_model = save_model(tmp_path / "new" / "m.onnx", {"table": table, "w": np.zeros((64, 64), np.float32)})
    old, new = old_model.with_name("m.onnx.data"), new_model.with_name("m.onnx.data")
    patch = tmp_path / "p.patch"
    make_patch("tensor", old, new, patch)
    out = tmp_path / "out.bin"
    tracemalloc.start()
    try:
        apply_patch(old, patch, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(new.read_bytes()).digest()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {table.nbytes / 2**20:.0f} MiB target"
