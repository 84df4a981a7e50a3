"""Bytes from the network: manifests, tensors and payload containers parse or fail with a typed error, never
anything else."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.codecs import CODEC_NAMES, apply_patch, get_codec
from edgerec.codecs.container import CODEC_IDS, DEFAULT_MAX_TARGET_SIZE, HEADER_SIZE, MAGIC, TRAILER_SIZE, read_header
from edgerec.errors import IntegrityError, InvalidInputError, ManifestError, PatchError
from edgerec.manifest import (
    FORMAT_VERSION,
    ArtifactFile,
    Manifest,
    SignedManifest,
    make_artifact,
    parse_manifest,
    sign_nothing,
)
from edgerec.tensors import ALLOWED_DTYPES, check_inputs, fill_proto, from_proto, to_proto
from edgerec.v1 import tensor_pb2


def _manifest() -> Manifest:
    files = [ArtifactFile(path="int8/model.onnx", size=10, sha256="a" * 64)]
    return Manifest(
        format_version=FORMAT_VERSION,
        model="ctr",
        version=3,
        created_at="2026-01-01T00:00:00Z",
        artifacts=[make_artifact("int8", "onnxruntime", "int8/model.onnx", files)],
    )


def test_a_valid_manifest_round_trips() -> None:
    assert parse_manifest(sign_nothing(_manifest())) == _manifest()


@given(st.binary(max_size=2048))
def test_arbitrary_manifest_bytes_give_manifest_error_or_a_checked_manifest(data: bytes) -> None:
    try:
        manifest = parse_manifest(SignedManifest(manifest=data))
    except ManifestError:
        return
    assert manifest.version >= 1 and manifest.artifacts


@given(st.integers(0, 2000), st.integers(0, 255))
def test_mutated_manifest_bytes_never_escape_as_other_errors(position: int, flip: int) -> None:
    data = bytearray(sign_nothing(_manifest()).manifest)
    data[position % len(data)] ^= flip
    with contextlib.suppress(ManifestError):
        parse_manifest(SignedManifest(manifest=bytes(data)))


@pytest.mark.parametrize(
    ("path", "ok"),
    [("int8/model.onnx", True), ("../etc/passwd", False), ("/abs", False), ("a//b", False), ("a\\b", False)],
)
def test_artifact_paths_cannot_escape_the_version_folder(path: str, ok: bool) -> None:
    manifest = _manifest()
    del manifest.artifacts[:]
    files = [ArtifactFile(path=path, size=1, sha256="b" * 64)]
    manifest.artifacts.append(make_artifact("int8", "onnxruntime", path, files))
    if ok:
        parse_manifest(sign_nothing(manifest))
    else:
        with pytest.raises(ManifestError):
            parse_manifest(sign_nothing(manifest))


@given(
    st.sampled_from([*sorted(ALLOWED_DTYPES), "object", "complex64", ""]),
    st.lists(st.integers(-3, 1 << 40), max_size=9),
    st.binary(max_size=256),
)
def test_arbitrary_tensors_decode_exactly_or_raise_invalid_input(dtype: str, shape: list[int], data: bytes) -> None:
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    try:
        array = from_proto(tensor)
    except InvalidInputError:
        return
    assert list(array.shape) == shape and array.dtype.name == dtype and array.tobytes() == data


@given(st.sampled_from(sorted(ALLOWED_DTYPES)), st.lists(st.integers(0, 5), max_size=4))
def test_tensor_round_trip(dtype: str, shape: list[int]) -> None:
    array = np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
    np.testing.assert_array_equal(from_proto(to_proto(array)), array)


@given(
    st.sampled_from(sorted(ALLOWED_DTYPES)),
    st.sampled_from(["<", ">"]),
    st.lists(st.integers(0, 4), max_size=3),
    st.booleans(),
)
def test_to_proto_sends_little_endian_c_order_bytes_whatever_the_layout(
    dtype: str, order: Literal["<", ">"], shape: list[int], transpose: bool
) -> None:
    array = np.arange(int(np.prod(shape)) if shape else 1).astype(np.dtype(dtype).newbyteorder(order)).reshape(shape)
    if transpose:
        array = array.T  # not C-contiguous
    tensor = to_proto(array)
    assert tensor.dtype == dtype and list(tensor.shape) == list(array.shape)
    assert tensor.data == np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    filled = tensor_pb2.Tensor()
    fill_proto(filled, array)
    assert filled == tensor


def test_unsupported_dtypes_are_refused_both_ways() -> None:
    with pytest.raises(InvalidInputError, match="complex64"):
        to_proto(np.zeros(2, np.complex64))
    with pytest.raises(InvalidInputError, match="not supported"):
        from_proto(tensor_pb2.Tensor(dtype="complex64", shape=[1], data=b"\0" * 8))


def test_check_inputs_names_what_is_wrong() -> None:
    specs = [("dense", "float32", [-1, 4]), ("ids", "int64", [-1, 3])]
    good: dict[str, np.ndarray] = {"dense": np.zeros((2, 4), np.float32), "ids": np.zeros((2, 3), np.int64)}
    assert list(check_inputs(good, specs)) == ["dense", "ids"]
    with pytest.raises(InvalidInputError, match="missing"):
        check_inputs({"dense": good["dense"]}, specs)
    with pytest.raises(InvalidInputError, match="dtype"):
        check_inputs({**good, "ids": good["ids"].astype(np.int32)}, specs)
    with pytest.raises(InvalidInputError, match="shape"):
        check_inputs({**good, "dense": np.zeros((2, 5), np.float32)}, specs)
    with pytest.raises(InvalidInputError, match="batch"):
        check_inputs({**good, "ids": np.zeros((3, 3), np.int64)}, specs)


# --- payload containers with hostile headers ------------------------------------------------

_FIELDS = struct.Struct("<8sHBB32s32sQQ")
_U64 = st.integers(0, (1 << 64) - 1)


@st.composite
def hostile_containers(draw: st.DrawFn) -> bytes:
    """A container whose every header field may lie: mostly well-formed enough to reach the later checks."""
    body = draw(st.binary(max_size=600))
    fields = _FIELDS.pack(
        draw(st.sampled_from([MAGIC, MAGIC, MAGIC, b"ERPATCH\x01"])),
        draw(st.sampled_from([1, 1, 1, 0, 2])),
        draw(st.sampled_from([*CODEC_IDS.values(), 0, 9, 255])),
        draw(st.sampled_from([0, 0, 0, 1])),
        draw(st.sampled_from([bytes(32), hashlib.sha256(b"old").digest(), bytes(range(32))])),
        draw(st.binary(min_size=32, max_size=32)),
        draw(st.one_of(st.integers(0, 2048), _U64, st.just(1 << 30))),
        draw(st.one_of(st.just(len(body)), st.integers(0, 2048), _U64)),
    )
    crc = zlib.crc32(fields) if draw(st.integers(0, 9)) else draw(st.integers(0, (1 << 32) - 1))
    trailer = hashlib.sha256(body).digest() if draw(st.integers(0, 4)) else draw(st.binary(min_size=32, max_size=32))
    return fields + struct.pack("<I", crc) + body + trailer + draw(st.sampled_from([b"", b"x"]))


@given(hostile_containers())
def test_a_hostile_header_is_refused_or_checked_field_by_field(data: bytes) -> None:
    try:
        header = read_header(io.BytesIO(data))
    except PatchError:
        return
    assert header.body_length == len(data) - HEADER_SIZE - TRAILER_SIZE
    assert header.codec in CODEC_NAMES and header.target_size <= DEFAULT_MAX_TARGET_SIZE


@given(hostile_containers(), st.integers(0, 2048), st.sampled_from([None, *CODEC_NAMES]))
def test_a_hostile_container_never_writes_a_byte_it_was_not_promised(
    data: bytes, expected_size: int, expected_codec: str | None
) -> None:
    """Applied as a device applies a payload (the signed size expected): refused with a typed error before
    a byte is written unless the header promises exactly that size and a body within its codec's bound."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "old.bin").write_bytes(b"old")
        (d / "p.patch").write_bytes(data)
        out = d / "out.bin"
        out.write_bytes(b"before")
        try:
            apply_patch(d / "old.bin", d / "p.patch", out, codec=expected_codec, target_size=expected_size)
        except (PatchError, IntegrityError) as exc:
            assert out.read_bytes() == b"before"
            assert sorted(p.name for p in d.iterdir()) == ["old.bin", "out.bin", "p.patch"]
            with contextlib.suppress(PatchError):
                header = read_header(io.BytesIO(data))
                if expected_codec is not None and header.codec != expected_codec:
                    assert "the plan says" in str(exc)
                elif header.target_size != expected_size:
                    assert isinstance(exc, IntegrityError) and "patch builds" in str(exc)
                elif header.body_length > get_codec(header.codec).max_body_size(expected_size):
                    assert "larger than the" in str(exc)
            return
        assert len(out.read_bytes()) == expected_size
