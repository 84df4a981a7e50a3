"""Apply the body of a "tensor" patch (device side): see :mod:`edgerec.codecs.tensor.format`.

Format-agnostic and streaming: the old file is read by seeking to the ranges the ops name,
the output is written front to back, and the op stream is decoded one frame (at most
FRAME_SIZE bytes) at a time. Memory stays near the remainder (at most MAX_REMAINDER, part of
the target) plus a few buffers of at most MAX_OP_PAYLOAD bytes, whatever the file sizes.

Every count, offset and length read from the body is checked before it is used: against the
old file's size, what is left of the target, what is left of the body and the fixed limits.
Any violation is a :class:`~edgerec.errors.PatchError`.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

import numpy as np
import zstandard

from edgerec.codecs.patch_from import check_frame, prefix_decompressor
from edgerec.codecs.tensor import format as fmt
from edgerec.errors import PatchError
from edgerec.hashing import HashingWriter

logger = logging.getLogger(__name__)

_COPY_STEP = 1 << 20
_MAX_WINDOW = 1 << fmt.MAX_WINDOW_LOG


def _read_exact(f: BinaryIO, length: int, what: str) -> bytes:
    data = f.read(length)
    if len(data) != length:
        raise PatchError(f"{what}: {len(data)} of {length} bytes")
    return data


def _read_old(old: BinaryIO, offset: int, length: int) -> bytes:
    old.seek(offset)
    return _read_exact(old, length, f"old file ended early at {offset}")


class _OpStream:
    """The decoded op stream, pulled one zstd frame at a time from the rest of the body."""

    def __init__(self, body: BinaryIO, length: int) -> None:
        self._body = body
        self._left = length
        self._buffer = b""
        self._pos = 0
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)

    def read(self, length: int) -> bytes:
        """Exactly ``length`` bytes of the op stream (callers keep ``length`` bounded)."""
        parts: list[bytes] = []
        while length:
            if self._pos == len(self._buffer):
                self._next_frame()
            take = min(length, len(self._buffer) - self._pos)
            parts.append(self._buffer[self._pos : self._pos + take])
            self._pos += take
            length -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def u8(self) -> int:
        return self.read(1)[0]

    def finished(self) -> bool:
        """Whether every byte of every frame has been read and no frame follows."""
        return self._pos == len(self._buffer) and self._left == 0

    def _next_frame(self) -> None:
        if self._left < fmt.FRAME_LENGTH.size:
            raise PatchError("op stream ends before its END op")
        (size,) = fmt.FRAME_LENGTH.unpack(_read_exact(self._body, fmt.FRAME_LENGTH.size, "op frame length"))
        self._left -= fmt.FRAME_LENGTH.size
        if not 0 < size <= min(self._left, fmt.FRAME_SIZE + fmt.MAX_FRAME_OVERHEAD):
            raise PatchError(f"op frame of {size} bytes does not fit: {self._left} body bytes left")
        frame = _read_exact(self._body, size, "op frame")
        self._left -= size
        params = check_frame(frame, _MAX_WINDOW, "op frame")
        if not 0 < params.content_size <= fmt.FRAME_SIZE:
            raise PatchError(f"op frame declares {params.content_size} bytes, not 1..{fmt.FRAME_SIZE}")
        try:
            self._buffer = self._decompressor.decompress(frame, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise PatchError(f"op frame is corrupt: {e}") from e
        self._pos = 0


class _Applier:
    """Runs the op stream, writing the target through ``writer``."""

    def __init__(self, old: BinaryIO, old_size: int, writer: HashingWriter, target_size: int) -> None:
        self.old = old
        self.old_size = old_size
        self.writer = writer
        self.target_size = target_size
        self.remainder = b""
        self.remainder_pos = 0

    @property
    def left(self) -> int:
        return self.target_size - self.writer.size

    def run(self, ops: _OpStream) -> None:
        handlers = {
            fmt.OP_COPY: self._copy,
            fmt.OP_LITERAL: self._literal,
            fmt.OP_REMAINDER: self._remainder,
            fmt.OP_DENSE: self._dense,
            fmt.OP_ROWS: self._rows,
        }
        while (code := ops.u8()) != fmt.OP_END:
            handler = handlers.get(code)
            if handler is None:
                raise PatchError(f"unknown op code {code}")
            handler(ops)
        if not ops.finished():
            raise PatchError("data follows the END op")
        if self.remainder_pos != len(self.remainder):
            raise PatchError(f"{len(self.remainder) - self.remainder_pos} bytes of the remainder are unused")
        if self.left:
            raise PatchError(f"ops wrote {self.writer.size} bytes, the header promises {self.target_size}")

    def _output(self, length: int, what: str) -> None:
        if length > self.left:
            raise PatchError(f"{what} of {length} bytes overruns the target ({self.left} bytes left)")

    def _old_range(self, offset: int, length: int, what: str) -> None:
        _check_old_range(self.old_size, offset, length, what)

    def _copy(self, ops: _OpStream) -> None:
        offset, length = fmt.COPY_ARGS.unpack(ops.read(fmt.COPY_ARGS.size))
        self._output(length, "COPY")
        self._old_range(offset, length, "COPY")
        self.old.seek(offset)
        while length:
            step = min(length, _COPY_STEP)
            self.writer.write(_read_exact(self.old, step, "old file ended early"))
            length -= step

    def _literal(self, ops: _OpStream) -> None:
        (length,) = fmt.LENGTH_ARG.unpack(ops.read(fmt.LENGTH_ARG.size))
        self._output(length, "LITERAL")
        while length:
            step = min(length, _COPY_STEP)
            self.writer.write(ops.read(step))
            length -= step

    def _remainder(self, ops: _OpStream) -> None:
        (length,) = fmt.LENGTH_ARG.unpack(ops.read(fmt.LENGTH_ARG.size))
        self._output(length, "REMAINDER")
        if length > len(self.remainder) - self.remainder_pos:
            raise PatchError(f"REMAINDER of {length} bytes overruns the remainder")
        self.writer.write(self.remainder[self.remainder_pos : self.remainder_pos + length])
        self.remainder_pos += length

    def _dense(self, ops: _OpStream) -> None:
        old_offset, old_length, length, elem, transform = fmt.DENSE_ARGS.unpack(ops.read(fmt.DENSE_ARGS.size))
        _check_elem(elem, transform)
        self._output(length, "DENSE")
        if length > fmt.MAX_OP_PAYLOAD or length % elem or old_length > length:
            raise PatchError(f"DENSE of {length} bytes (old {old_length}, element {elem}) is malformed")
        self._old_range(old_offset, old_length, "DENSE")
        delta = fmt.from_planes(np.frombuffer(ops.read(length), dtype=np.uint8), elem)
        base = np.zeros(length, dtype=np.uint8)
        if transform != fmt.LITERAL and old_length:
            base[:old_length] = np.frombuffer(_read_old(self.old, old_offset, old_length), dtype=np.uint8)
        self.writer.write(fmt.decode(delta, base, elem, transform).tobytes())

    def _rows(self, ops: _OpStream) -> None:
        args = fmt.ROWS_ARGS.unpack(ops.read(fmt.ROWS_ARGS.size))
        old_offset, old_rows, new_rows, row_bytes, elem, transform, count = args
        _check_elem(elem, transform)
        if not 0 < row_bytes <= fmt.MAX_OP_PAYLOAD or row_bytes % elem:
            raise PatchError(f"ROWS of {row_bytes}-byte rows of {elem}-byte elements is malformed")
        self._output(new_rows * row_bytes, "ROWS")
        if old_rows > new_rows or count > new_rows or count * (row_bytes + fmt.INDEX_GAP.itemsize) > fmt.MAX_OP_PAYLOAD:
            raise PatchError(f"ROWS of {count} changed rows of {new_rows} (old {old_rows}) is malformed")
        self._old_range(old_offset, old_rows * row_bytes, "ROWS")
        gaps = fmt.from_planes(np.frombuffer(ops.read(count * fmt.INDEX_GAP.itemsize), dtype=np.uint8), 4)
        indices = np.cumsum(gaps.view(fmt.INDEX_GAP), dtype=np.int64)
        if count and ((count > 1 and int(gaps.view(fmt.INDEX_GAP)[1:].min()) == 0) or indices[-1] >= new_rows):
            raise PatchError("ROWS row indices are not strictly increasing below the row count")
        if new_rows - old_rows != count - int(np.searchsorted(indices, old_rows)):
            raise PatchError("ROWS leaves rows past the old table without new contents")
        payload = fmt.from_planes(np.frombuffer(ops.read(count * row_bytes), dtype=np.uint8), elem)
        deltas = payload.reshape(count, row_bytes)
        step = max(1, _COPY_STEP // row_bytes)
        for first in range(0, new_rows, step):
            last = min(new_rows, first + step)
            block = np.zeros((last - first, row_bytes), dtype=np.uint8)
            present = max(0, min(old_rows, last) - first)
            if present:
                raw = _read_old(self.old, old_offset + first * row_bytes, present * row_bytes)
                block[:present] = np.frombuffer(raw, dtype=np.uint8).reshape(present, row_bytes)
            lo, hi = np.searchsorted(indices, (first, last))
            if hi > lo:
                rows = indices[lo:hi] - first
                block[rows] = fmt.decode(deltas[lo:hi], block[rows], elem, transform)
            self.writer.write(block.tobytes())


def _check_old_range(old_size: int, offset: int, length: int, what: str) -> None:
    if offset > old_size or length > old_size - offset:
        raise PatchError(f"{what} reads [{offset}, {offset + length}) of an old file of {old_size} bytes")


def _check_elem(elem: int, transform: int) -> None:
    if elem not in fmt.ELEMENT_SIZES:
        raise PatchError(f"element size {elem} is not one of {fmt.ELEMENT_SIZES}")
    if transform not in fmt.TRANSFORMS:
        raise PatchError(f"unknown transform {transform}")


def apply_body(
    body: BinaryIO, body_length: int, old: BinaryIO, old_size: int, writer: HashingWriter, target_size: int
) -> None:
    """Rebuild the target from ``body`` (``body_length`` bytes) and the old file, writing it to ``writer``."""
    if body_length < fmt.HEADER.size:
        raise PatchError(f"tensor body is {body_length} bytes, shorter than its {fmt.HEADER.size}-byte header")
    magic, declared_old, remainder_size, range_count, frame_size = fmt.HEADER.unpack(
        _read_exact(body, fmt.HEADER.size, "tensor body header")
    )
    if magic != fmt.MAGIC:
        raise PatchError(f"tensor body has magic {magic!r}, expected {fmt.MAGIC!r}")
    if declared_old != old_size:
        raise PatchError(f"tensor body was made for an old file of {declared_old} bytes, this one has {old_size}")
    left = body_length - fmt.HEADER.size
    if range_count > min(fmt.MAX_RANGES, left // fmt.RANGE.size):
        raise PatchError(f"{range_count} remainder ranges: more than {fmt.MAX_RANGES} or than the body holds")
    left -= range_count * fmt.RANGE.size
    if remainder_size > min(fmt.MAX_REMAINDER, target_size) or frame_size > left:
        raise PatchError(f"remainder of {remainder_size} bytes in a {frame_size}-byte frame does not fit")
    if (remainder_size == 0) != (frame_size == 0) or frame_size > remainder_size + fmt.MAX_FRAME_OVERHEAD:
        raise PatchError(f"remainder of {remainder_size} bytes cannot be a {frame_size}-byte frame")
    ranges = [fmt.RANGE.unpack(_read_exact(body, fmt.RANGE.size, "remainder range")) for _ in range(range_count)]
    applier = _Applier(old, old_size, writer, target_size)
    applier.remainder = _remainder(body, frame_size, remainder_size, ranges, old, old_size)
    applier.run(_OpStream(body, left - frame_size))


def _remainder(
    body: BinaryIO, frame_size: int, remainder_size: int, ranges: list[tuple[int, int]], old: BinaryIO, old_size: int
) -> bytes:
    """Decode the remainder frame against the old ranges it was compressed with."""
    total = 0
    for offset, length in ranges:
        _check_old_range(old_size, offset, length, "remainder range")
        total += length
    if total > fmt.MAX_REMAINDER:
        raise PatchError(f"remainder ranges total {total} bytes, more than {fmt.MAX_REMAINDER}")
    if not frame_size:
        return b""
    prefix = b"".join(_read_old(old, offset, length) for offset, length in ranges)
    frame = _read_exact(body, frame_size, "remainder frame")
    params = check_frame(frame, _MAX_WINDOW, "remainder frame")
    if params.content_size != remainder_size:
        raise PatchError(f"remainder frame declares {params.content_size} bytes, the body {remainder_size}")
    try:
        remainder: bytes = prefix_decompressor(prefix, _MAX_WINDOW).decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise PatchError(f"remainder frame is corrupt: {e}") from e
    if len(remainder) != remainder_size:
        raise PatchError(f"remainder frame decodes to {len(remainder)} bytes, not {remainder_size}")
    return remainder
