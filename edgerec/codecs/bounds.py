"""Worst-case sizes of compressed data: what a body of a given target size may take, at most.

A device downloads a payload whose size nobody signed; it knows only the signed size of the
file the payload builds. Each codec turns that size into the largest body it can honestly make
(``Codec.max_body_size``), from the documented worst cases of the compressors it uses:

- zstd: ``ZSTD_COMPRESSBOUND`` of ``zstd.h``, the largest frame the compressor writes for an
  input of that size (it falls back to raw blocks; the frame header, block headers and
  checksum are included). It holds for any level, window or dictionary and for streaming
  compression of one frame.
- bzip2: the bzip2 manual's bound for ``BZ2_bzBuffToBuffCompress``: "1% larger than the
  uncompressed data, plus six hundred extra bytes".
"""

from __future__ import annotations

from collections.abc import Iterable

_SMALL_INPUT = 128 << 10


def zstd_compress_bound(size: int) -> int:
    """The largest zstd frame holding ``size`` bytes (``ZSTD_COMPRESSBOUND``)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    margin = (_SMALL_INPUT - size) >> 11 if size < _SMALL_INPUT else 0
    return size + (size >> 8) + margin


def zstd_frames_bound(sizes: Iterable[int], prefix: int = 0) -> int:
    """The largest total of one zstd frame per entry of ``sizes``, each after a ``prefix``-byte length field."""
    return sum(prefix + zstd_compress_bound(size) for size in sizes)


def bz2_compress_bound(size: int) -> int:
    """The largest bzip2 stream holding ``size`` bytes (1% more, rounded up, plus 600)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return size + -(-size // 100) + 600
