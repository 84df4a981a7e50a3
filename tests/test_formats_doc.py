"""docs/formats.md is enough to apply every payload: a second decoder written from it alone.

The decoder below imports nothing from edgerec's codecs: only struct, zlib, hashlib, bz2,
zstandard and numpy, following the document's tables and pseudo-code. Each test makes a real
payload with edgerec's encoder and rebuilds the target with this decoder, so a change to a
byte layout that the document does not follow fails here.
"""

from __future__ import annotations

import bz2
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import zstandard

from edgerec.codecs import make_patch

U8 = npt.NDArray[np.uint8]
HEADER = struct.Struct("<8sHBB32s32sQQ")  # formats.md §1: 92 bytes, then the u32 CRC
CODECS = {1: "full", 2: "bsdiff4", 3: "zstd-patch-from", 4: "tensor"}
MiB = 1 << 20


def decode_container(payload: bytes) -> tuple[str, bytes, bytes, int, bytes]:
    """(codec, base sha256, target sha256, target size, body) after every check of formats.md §1."""
    magic, version, codec_id, reserved, base, target, target_size, body_length = HEADER.unpack_from(payload)
    (crc,) = struct.unpack_from("<I", payload, 92)
    assert (magic, version, reserved) == (b"ERPATCH\0", 1, 0)
    assert crc == zlib.crc32(payload[:92])
    assert codec_id in CODECS
    assert len(payload) == 96 + body_length + 32
    body = payload[96 : 96 + body_length]
    assert payload[96 + body_length :] == hashlib.sha256(body).digest()
    assert (base == bytes(32)) == (CODECS[codec_id] == "full")
    return CODECS[codec_id], base, target, target_size, body


def raw_prefix_decompressor(prefix: bytes, window_log: int) -> zstandard.ZstdDecompressor:
    if len(prefix) < 8:  # formats.md §4: too short to be a prefix: no history
        return zstandard.ZstdDecompressor(max_window_size=1 << window_log)
    history = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=history, max_window_size=1 << window_log)


def one_frame(decompressor: zstandard.ZstdDecompressor, frame: bytes, window_log: int) -> bytes:
    params = zstandard.get_frame_parameters(frame)
    assert params.dict_id == 0 and params.window_size <= 1 << window_log
    data: bytes = decompressor.decompress(frame, allow_extra_data=False)
    return data


def sign_magnitude(raw: bytes, offset: int) -> int:
    (value,) = struct.unpack_from("<Q", raw, offset)
    return -(value & ((1 << 63) - 1)) if value >> 63 else int(value)


def apply_bsdiff(body: bytes, old: bytes, target_size: int) -> bytes:
    assert body[:8] == b"BSDIFF40"
    control_length, diff_length, new_size = (sign_magnitude(body, 8 * i) for i in (1, 2, 3))
    assert new_size == target_size
    control = bz2.decompress(body[32 : 32 + control_length])
    diff = bz2.decompress(body[32 + control_length : 32 + control_length + diff_length])
    extra = bz2.decompress(body[32 + control_length + diff_length :])
    assert len(control) % 24 == 0
    new = bytearray()
    old_pos = diff_pos = extra_pos = 0
    for entry in range(0, len(control), 24):
        x, y, z = (sign_magnitude(control, entry + 8 * k) for k in range(3))
        added = np.frombuffer(old, np.uint8, x, old_pos) + np.frombuffer(diff, np.uint8, x, diff_pos)
        new += added.astype(np.uint8).tobytes()
        old_pos += x
        diff_pos += x
        new += extra[extra_pos : extra_pos + y]
        extra_pos += y
        old_pos += z
    return bytes(new)


def from_planes(data: bytes, elem: int) -> U8:
    planes = np.frombuffer(data, np.uint8)
    return planes if elem == 1 else np.ascontiguousarray(planes.reshape(elem, -1).T).reshape(-1)


def untransform(delta: U8, base: U8, elem: int, transform: int) -> U8:
    if transform == 0:
        return delta
    if transform == 1:
        return np.bitwise_xor(delta, base)
    assert transform == 2
    unsigned = np.dtype(f"<u{elem}")
    code = delta.view(unsigned)
    one = unsigned.type(1)
    difference = (code >> one) ^ (-(code & one)).astype(unsigned)
    new: U8 = (base.view(unsigned) + difference).view(np.uint8)
    return new


class OpStream:
    """The decoded op frames of a tensor body, read across frame boundaries."""

    def __init__(self, frames: bytes) -> None:
        decoded = bytearray()
        pos = 0
        while pos < len(frames):
            (size,) = struct.unpack_from("<I", frames, pos)
            assert 0 < size <= 4 * MiB + 65536
            frame = frames[pos + 4 : pos + 4 + size]
            assert 0 < zstandard.get_frame_parameters(frame).content_size <= 4 * MiB
            decoded += one_frame(zstandard.ZstdDecompressor(max_window_size=1 << 25), frame, 25)
            pos += 4 + size
        self.data = bytes(decoded)
        self.pos = 0

    def read(self, length: int) -> bytes:
        chunk = self.data[self.pos : self.pos + length]
        assert len(chunk) == length
        self.pos += length
        return chunk

    def unpack(self, layout: str) -> tuple[int, ...]:
        return struct.unpack(layout, self.read(struct.calcsize(layout)))


def apply_tensor(body: bytes, old: bytes, target_size: int) -> tuple[bytes, list[int]]:
    """The target and the op codes run, by formats.md §5.5."""
    magic, old_size, remainder_size, range_count, frame_size = struct.unpack_from("<4sQQIQ", body)
    assert magic == b"ERT1" and old_size == len(old)
    assert remainder_size <= min(8 * MiB, target_size) and (remainder_size == 0) == (frame_size == 0)
    ranges = [struct.unpack_from("<QQ", body, 32 + 16 * i) for i in range(range_count)]
    pos = 32 + 16 * range_count
    remainder = b""
    if frame_size:
        prefix = b"".join(old[offset : offset + length] for offset, length in ranges)
        remainder = one_frame(raw_prefix_decompressor(prefix, 25), body[pos : pos + frame_size], 25)
        assert len(remainder) == remainder_size
    ops = OpStream(body[pos + frame_size :])
    out = bytearray()
    used = 0
    codes = []
    while (code := ops.read(1)[0]) != 0:
        codes.append(code)
        if code == 1:
            offset, length = ops.unpack("<QQ")
            out += old[offset : offset + length]
        elif code == 2:
            (length,) = ops.unpack("<Q")
            out += ops.read(length)
        elif code == 3:
            (length,) = ops.unpack("<Q")
            out += remainder[used : used + length]
            used += length
        elif code == 4:
            old_offset, old_length, length, elem, transform = ops.unpack("<QQQBB")
            base = np.zeros(length, np.uint8)
            base[:old_length] = np.frombuffer(old, np.uint8, old_length, old_offset)
            out += untransform(from_planes(ops.read(length), elem), base, elem, transform).tobytes()
        else:
            assert code == 5, f"unknown op {code}"
            old_offset, old_rows, new_rows, row_bytes, elem, transform, count = ops.unpack("<QQQQBBQ")
            indices = np.cumsum(from_planes(ops.read(4 * count), 4).view("<u4").astype(np.int64))
            deltas = from_planes(ops.read(count * row_bytes), elem).reshape(count, row_bytes)
            table = np.zeros((new_rows, row_bytes), np.uint8)
            table[:old_rows] = np.frombuffer(old, np.uint8, old_rows * row_bytes, old_offset).reshape(-1, row_bytes)
            for k, row in enumerate(indices):
                table[row] = untransform(deltas[k].copy(), table[row].copy(), elem, transform)
            out += table.tobytes()
    assert ops.pos == len(ops.data) and used == remainder_size
    return bytes(out), codes


def rebuild(payload: Path, old: bytes) -> tuple[str, list[int]]:
    """Apply ``payload`` to ``old`` with this decoder; check the result against the header."""
    codec, base, target, target_size, body = decode_container(payload.read_bytes())
    codes: list[int] = []
    if codec == "full":
        new = one_frame(zstandard.ZstdDecompressor(max_window_size=1 << 27), body, 27)
    else:
        assert base == hashlib.sha256(old).digest()
        if codec == "bsdiff4":
            new = apply_bsdiff(body, old, target_size)
        elif codec == "zstd-patch-from":
            window_log = min(30, max(10, (len(old) + target_size - 1).bit_length()))
            new = one_frame(raw_prefix_decompressor(old, window_log), body, window_log)
        else:
            new, codes = apply_tensor(body, old, target_size)
    assert len(new) == target_size and hashlib.sha256(new).digest() == target
    return codec, codes


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    old = rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    new = old[25_000:] + old[:10_000] + b"inserted bytes " * 40 + old[10_000:25_000]  # moves: negative seeks
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    return tmp_path / "old.bin", tmp_path / "new.bin"


@pytest.mark.parametrize("codec", ["full", "bsdiff4", "zstd-patch-from", "tensor"])
def test_payload_of_any_file_is_applied_from_the_document(codec: str, tmp_path: Path) -> None:
    old, new = _files(tmp_path)
    make_patch(codec, None if codec == "full" else old, new, tmp_path / "payload")
    assert rebuild(tmp_path / "payload", old.read_bytes())[0] == codec


def test_tensor_payload_of_an_onnx_table_is_applied_from_the_document(tmp_path: Path) -> None:
    """Changed and added rows of an inline table: ROWS, COPY and REMAINDER ops with prefix ranges."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    table = rng.standard_normal((40_000, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    grown = np.concatenate([table, rng.standard_normal((5, 8)).astype(np.float32)])
    grown[7] = 0
    for name, emb, graph in (("old.onnx", table, "g"), ("new.onnx", grown, "renamed")):
        inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(bias, "bias")]
        onnx.save_model(helper.make_model(helper.make_graph([], graph, [], [], initializer=inits)), tmp_path / name)
    make_patch("tensor", tmp_path / "old.onnx", tmp_path / "new.onnx", tmp_path / "payload")
    codec, codes = rebuild(tmp_path / "payload", (tmp_path / "old.onnx").read_bytes())
    assert codec == "tensor" and 5 in codes
