"""Make the body of a "tensor" patch (server side): see :mod:`edgerec.codecs.tensor.format`.

The new file is cut into tensors (where :mod:`~edgerec.codecs.tensor.onnx_layout` found them)
and the gaps between them. A tensor identical to the old tensor of the same name is a COPY;
otherwise several encodings are tried and the one zstd compresses smallest is kept: only the
changed rows of a table (new bytes, XOR or zigzag integer difference against the old rows),
or the whole tensor as XOR, difference or new bytes, all in byte planes. The gaps (the graph of
an ``.onnx`` file, or a whole file that is not ONNX) form the remainder, sent as zstd with the
old file's gaps as prefix when it fits in :data:`~edgerec.codecs.tensor.format.MAX_REMAINDER`,
as literals when that is smaller, and as a generic range diff against the old file otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
import zstandard

from edgerec.codecs.patch_from import compress_with_prefix, window_log_for
from edgerec.codecs.tensor import format as fmt
from edgerec.codecs.tensor.onnx_layout import TensorSpan
from edgerec.codecs.tensor.range_diff import BlockIndex, Copy

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 17
TRIAL_LEVEL = 3
"""zstd level used to compare candidate encodings of one tensor."""
DENSE_TRIAL_FRACTION = 0.25
"""Tables with at most this fraction of rows changed are not also tried as dense tensors..."""
SMALL_ROW = 16
"""... unless their rows are shorter than this many bytes (then the row indices cost as much)."""
OWN_FRAME = 16 << 10
"""Parts of the op stream at least this long (byte planes) are compressed as frames of their own."""
INCOMPRESSIBLE = 0.8
"""A frame the trial level shrinks less than this is kept at the trial level."""

_INDEX_BYTES = fmt.INDEX_GAP.itemsize


@dataclass(frozen=True)
class Settings:
    """Knobs of the encoder; the defaults are what the codec uses."""

    level: int = DEFAULT_LEVEL
    trial_level: int = TRIAL_LEVEL
    remainder_limit: int = fmt.MAX_REMAINDER
    threads: int = 0
    """Threads compressing op frames; 0 means one per CPU."""

    def __post_init__(self) -> None:
        if not 0 <= self.remainder_limit <= fmt.MAX_REMAINDER:
            raise ValueError(f"remainder_limit must be in [0, {fmt.MAX_REMAINDER}], got {self.remainder_limit}")


@dataclass
class Stats:
    """What the encoder chose, for logs and measurements."""

    copied: int = 0
    rows: int = 0
    dense: int = 0
    literal: int = 0
    remainder: str = "none"


class _OpFrames:
    """Collects the op stream and cuts it into zstd frames of at most FRAME_SIZE decoded bytes.

    A large part (a byte plane of a tensor payload) gets frames of its own, and each frame is
    compressed at ``level`` only when a fast trial shows it compresses: the low mantissa planes
    of changed float32 values are close to random, and high levels spend seconds to gain nothing
    on them, while sign/exponent planes and int8 rows do shrink further (``docs/performance.md``).
    Frames are compressed on a thread pool (zstd releases the GIL), in order of submission.
    """

    def __init__(self, level: int, trial_level: int, pool: ThreadPoolExecutor) -> None:
        self._level = level
        self._trial_level = trial_level
        self._pool = pool
        self._local = threading.local()
        self._pending = bytearray()
        self._frames: list[Future[bytes]] = []

    def write(self, *parts: bytes) -> None:
        for part in parts:
            if len(part) >= OWN_FRAME:
                self._flush(len(self._pending))
                for start in range(0, len(part), fmt.FRAME_SIZE):
                    self._frames.append(self._pool.submit(self._frame, part[start : start + fmt.FRAME_SIZE]))
                continue
            self._pending += part
            while len(self._pending) >= fmt.FRAME_SIZE:
                self._flush(fmt.FRAME_SIZE)

    def close(self) -> list[bytes]:
        """The frames, each prefixed by its length, after the END op."""
        self.write(bytes([fmt.OP_END]))
        self._flush(len(self._pending))
        return [frame.result() for frame in self._frames]

    def _flush(self, size: int) -> None:
        if size:
            self._frames.append(self._pool.submit(self._frame, bytes(self._pending[:size])))
            del self._pending[:size]

    def _compressors(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
        """(trial, final) compressors of the calling thread: a compressor is not thread-safe."""
        pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor] | None = getattr(self._local, "pair", None)
        if pair is None:
            pair = (_frame_compressor(self._trial_level), _frame_compressor(self._level))
            self._local.pair = pair
        return pair

    def _frame(self, data: bytes) -> bytes:
        trial, final = self._compressors()
        frame = trial.compress(data)
        if len(frame) < INCOMPRESSIBLE * len(data) and self._level != self._trial_level:
            frame = min(frame, final.compress(data), key=len)
        return fmt.FRAME_LENGTH.pack(len(frame)) + frame


def _frame_compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)


def encode_body(
    old: bytes, new: bytes, old_spans: list[TensorSpan], new_spans: list[TensorSpan], settings: Settings
) -> tuple[list[bytes], Stats]:
    """The body turning ``old`` into ``new`` as a list of chunks, and what was chosen."""
    stats = Stats()
    old_by_name = {span.name: span for span in old_spans}
    gaps = _gaps(new_spans, len(new))
    remainder_size = sum(end - start for start, end in gaps)
    ranges = _clip(_gaps(old_spans, len(old)), settings.remainder_limit)
    frame = b""
    if 0 < remainder_size <= settings.remainder_limit:
        new_remainder = b"".join(new[start:end] for start, end in gaps)
        frame, stats.remainder = _remainder_frame(old, ranges, new_remainder, settings.level)
    if not frame:
        ranges = []
    index = BlockIndex(old) if remainder_size > settings.remainder_limit else None
    if index is not None:
        stats.remainder = "range diff"
    with ThreadPoolExecutor(settings.threads or os.cpu_count() or 1, thread_name_prefix="edgerec-zstd") as pool:
        ops = _OpFrames(settings.level, settings.trial_level, pool)
        for start, end, span in _segments(new_spans, len(new)):
            if span is not None:
                _tensor_ops(ops, old, new, span, old_by_name.get(span.name), settings, stats)
            elif frame:
                ops.write(bytes([fmt.OP_REMAINDER]), fmt.LENGTH_ARG.pack(end - start))
            elif index is not None:
                _range_ops(ops, index, new, start, end)
            else:
                _literal(ops, new, start, end)
        op_frames = ops.close()
    header = fmt.HEADER.pack(fmt.MAGIC, len(old), remainder_size if frame else 0, len(ranges), len(frame))
    chunks = [header, *(fmt.RANGE.pack(start, end - start) for start, end in ranges), frame, *op_frames]
    return chunks, stats


def literal_body(old_size: int, new: bytes, level: int = DEFAULT_LEVEL) -> list[bytes]:
    """A body sending all of ``new`` as one LITERAL op: never larger than :func:`~.format.max_body_size`."""
    stream = b"".join((bytes([fmt.OP_LITERAL]), fmt.LENGTH_ARG.pack(len(new)), new, bytes([fmt.OP_END])))
    compressor = _frame_compressor(level)
    chunks = [fmt.HEADER.pack(fmt.MAGIC, old_size, 0, 0, 0)]
    start = 0
    for size in fmt.frame_sizes(len(stream)):
        frame = compressor.compress(stream[start : start + size])
        chunks.append(fmt.FRAME_LENGTH.pack(len(frame)) + frame)
        start += size
    return chunks


def _gaps(spans: list[TensorSpan], size: int) -> list[tuple[int, int]]:
    """The ranges of a file of ``size`` bytes that no span covers."""
    gaps, pos = [], 0
    for span in spans:
        if span.offset > pos:
            gaps.append((pos, span.offset))
        pos = span.end
    if pos < size:
        gaps.append((pos, size))
    return gaps


def _segments(spans: list[TensorSpan], size: int) -> Iterator[tuple[int, int, TensorSpan | None]]:
    """Gaps (with None) and spans of the file, in order."""
    pos = 0
    for span in spans:
        if span.offset > pos:
            yield pos, span.offset, None
        yield span.offset, span.end, span
        pos = span.end
    if pos < size:
        yield pos, size, None


def _clip(ranges: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The first ``limit`` bytes of ``ranges``, in at most MAX_RANGES ranges."""
    kept, total = [], 0
    for start, end in ranges[: fmt.MAX_RANGES]:
        take = min(end - start, limit - total)
        if take <= 0:
            break
        kept.append((start, start + take))
        total += take
    return kept


def _remainder_frame(old: bytes, ranges: list[tuple[int, int]], remainder: bytes, level: int) -> tuple[bytes, str]:
    """The remainder compressed against the old gaps, or ``b""`` when plain zstd of it is smaller."""
    prefix = b"".join(old[start:end] for start, end in ranges)
    window_log = window_log_for(len(prefix) + len(remainder))
    frame = b"".join(compress_with_prefix(prefix, [remainder], len(remainder), level=level, window_log=window_log))
    plain = zstandard.ZstdCompressor(level=level).compress(remainder)
    if len(frame) < len(plain):
        return frame, "patch-from"
    return b"", "literal"


def _literal(ops: _OpFrames, new: bytes, start: int, end: int) -> None:
    ops.write(bytes([fmt.OP_LITERAL]), fmt.LENGTH_ARG.pack(end - start), new[start:end])


def _range_ops(ops: _OpFrames, index: BlockIndex, new: bytes, start: int, end: int) -> None:
    for piece in index.matches(new, start, end):
        if isinstance(piece, Copy):
            ops.write(bytes([fmt.OP_COPY]), fmt.COPY_ARGS.pack(piece.old_offset, piece.length))
        else:
            _literal(ops, new, piece.start, piece.end)


def _tensor_ops(
    ops: _OpFrames, old: bytes, new: bytes, span: TensorSpan, base: TensorSpan | None, settings: Settings, stats: Stats
) -> None:
    """Emit the smallest encoding of the tensor ``span`` of ``new`` given its old version ``base``."""
    data = _view(new, span.offset, span.length)
    if base is not None and base.length == span.length and old[base.offset : base.end] == new[span.offset : span.end]:
        ops.write(bytes([fmt.OP_COPY]), fmt.COPY_ARGS.pack(base.offset, span.length))
        stats.copied += 1
        return
    comparable = base is not None and base.data_type == span.data_type and base.elem_size == span.elem_size
    old_data = _view(old, base.offset, base.length) if base is not None and comparable else None
    candidates: list[tuple[str, int, Callable[[], Iterator[bytes]]]] = []
    changed = _changed_rows(data, old_data, span, base) if comparable and base is not None else None
    if changed is not None and base is not None and old_data is not None:
        for t in fmt.TRANSFORMS:
            candidates.append(("rows", t, partial(_rows_ops, data, old_data, span, base, changed, t)))
    row_bytes = span.row_bytes or 0
    if changed is None or row_bytes < SMALL_ROW or len(changed) > DENSE_TRIAL_FRACTION * (span.rows or 1):
        for t in fmt.TRANSFORMS if old_data is not None else (fmt.LITERAL,):
            candidates.append(("dense", t, partial(_dense_ops, data, old_data, base, span.elem_size, t)))
    best: tuple[int, str, list[bytes]] | None = None
    for kind, transform, make in candidates:
        chunks = list(make())
        size = _trial_size(chunks, settings.trial_level) if len(candidates) > 1 else 0
        logger.debug(
            "%s: %s, transform %d: %d bytes at level %d", span.name, kind, transform, size, settings.trial_level
        )
        if best is None or size < best[0]:
            best = (size, kind, chunks)
    assert best is not None
    _, best_kind, chunks = best
    ops.write(*chunks)
    if best_kind == "rows":
        stats.rows += 1
    elif old_data is None:
        stats.literal += 1
    else:
        stats.dense += 1


def _view(data: bytes, offset: int, length: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(data, dtype=np.uint8, count=length, offset=offset)


def _trial_size(chunks: Iterable[bytes], level: int) -> int:
    compressor = zstandard.ZstdCompressor(level=level)
    return len(compressor.compress(b"".join(chunks)))


def _changed_rows(
    data: npt.NDArray[np.uint8], old_data: npt.NDArray[np.uint8] | None, span: TensorSpan, base: TensorSpan
) -> npt.NDArray[np.int64] | None:
    """Indices of the rows of ``span`` that differ from (or are missing in) ``base``; None if not a table."""
    row_bytes = span.row_bytes
    if old_data is None or span.rows is None or base.rows is None or row_bytes is None:
        return None
    if base.row_bytes != row_bytes or row_bytes * 2 > fmt.MAX_OP_PAYLOAD or span.rows >= 1 << 32:
        return None
    common = min(span.rows, base.rows)
    new_rows = data.reshape(span.rows, row_bytes)
    old_rows = old_data.reshape(base.rows, row_bytes)
    differs = np.flatnonzero(np.any(new_rows[:common] != old_rows[:common], axis=1))
    return np.concatenate([differs, np.arange(common, span.rows)]).astype(np.int64)


def _rows_ops(
    data: npt.NDArray[np.uint8],
    old_data: npt.NDArray[np.uint8],
    span: TensorSpan,
    base: TensorSpan,
    changed: npt.NDArray[np.int64],
    transform: int,
) -> Iterator[bytes]:
    """ROWS ops for the table ``span``, each carrying at most MAX_OP_PAYLOAD bytes of indices and rows."""
    assert span.rows is not None and base.rows is not None and span.row_bytes is not None
    rows, old_rows, row_bytes, elem = span.rows, base.rows, span.row_bytes, span.elem_size
    new_table = data.reshape(rows, row_bytes)
    old_table = old_data.reshape(old_rows, row_bytes)
    per_op = fmt.MAX_OP_PAYLOAD // (row_bytes + _INDEX_BYTES)
    groups = [changed[i : i + per_op] for i in range(0, len(changed), per_op)] or [changed]
    for number, group in enumerate(groups):
        first = 0 if number == 0 else int(group[0])
        last = rows if number == len(groups) - 1 else int(groups[number + 1][0])
        base_rows = max(0, min(old_rows - first, last - first))
        new_part = new_table[group]
        old_part = np.zeros_like(new_part)
        inside = group < old_rows
        old_part[inside] = old_table[group[inside]]
        payload = fmt.encode(new_part.reshape(-1), old_part.reshape(-1), elem, transform)
        local = group - first
        gaps = np.diff(local, prepend=0).astype(fmt.INDEX_GAP)
        yield bytes([fmt.OP_ROWS])
        yield fmt.ROWS_ARGS.pack(
            base.offset + first * row_bytes if base_rows else 0,
            base_rows,
            last - first,
            row_bytes,
            elem,
            transform,
            len(group),
        )
        yield fmt.to_planes(gaps.view(np.uint8), _INDEX_BYTES).tobytes()
        yield from _planes(payload, elem)


def _dense_ops(
    data: npt.NDArray[np.uint8],
    old_data: npt.NDArray[np.uint8] | None,
    base: TensorSpan | None,
    elem: int,
    transform: int,
) -> Iterator[bytes]:
    """DENSE ops for the whole tensor, in pieces of at most MAX_OP_PAYLOAD bytes."""
    for start in range(0, len(data), fmt.MAX_OP_PAYLOAD):
        piece = data[start : start + fmt.MAX_OP_PAYLOAD]
        old_length = 0
        if old_data is not None and base is not None and transform != fmt.LITERAL:
            old_length = max(0, min(len(old_data) - start, len(piece)))
        reference = np.zeros_like(piece)
        if old_length and old_data is not None:
            reference[:old_length] = old_data[start : start + old_length]
        old_offset = base.offset + start if old_length and base is not None else 0
        yield bytes([fmt.OP_DENSE])
        yield fmt.DENSE_ARGS.pack(old_offset, old_length, len(piece), elem, transform)
        yield from _planes(fmt.encode(piece, reference, elem, transform), elem)


def _planes(payload: npt.NDArray[np.uint8], elem: int) -> Iterator[bytes]:
    """The byte planes of ``payload`` one by one (together they are ``fmt.to_planes``)."""
    yield from (plane.tobytes() for plane in fmt.to_planes(payload, elem).reshape(elem, -1))
