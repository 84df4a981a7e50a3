"""The body of a "tensor" patch: layout, operations, limits, and the per-element transforms.

Shared by the encoder (server) and the decoder (device); needs only numpy. All integers are
little-endian. The body is::

    header     32 bytes  magic b"ERT1", u64 old size, u64 remainder size R,
                         u32 range count N, u64 remainder frame size F
    ranges     N x 16 bytes: u64 offset, u64 length in the old file; their bytes, back to
               back, are the prefix the remainder frame was compressed against
    remainder  F bytes: one zstd frame (content size = R) compressed with that prefix as
               history (a raw-content dictionary to the decoder); F = 0 exactly when R = 0
    op frames  up to the end of the body: u32 size + one zstd frame (content size set,
               1..FRAME_SIZE bytes); decoded back to back they form the op stream

The op stream writes the target front to back; each op starts with a u8 code::

    0 END                                           last op; nothing may follow
    1 COPY       u64 old offset, u64 length         bytes of the old file
    2 LITERAL    u64 length, bytes[length]          bytes carried in the op stream
    3 REMAINDER  u64 length                         the next bytes of the decoded remainder
    4 DENSE      u64 old offset, u64 old length, u64 length, u8 elem, u8 transform,
                 planes[length]
    5 ROWS       u64 old offset, u64 old rows, u64 new rows, u64 row bytes, u8 elem,
                 u8 transform, u64 count, planes[4 * count] (u32 row gaps),
                 planes[count * row bytes]

DENSE writes ``length`` bytes: the payload decoded against the old bytes at ``old offset``
(``old length <= length``) zero-padded to ``length``. ROWS writes ``new rows`` rows of
``row bytes``: the ``count`` rows given by the gaps (first index, then differences >= 1,
all below ``new rows``) are decoded from the payload against old row r (zeros from ``old rows``
on); every other row is a copy of old row r, so ``old rows <= new rows`` and every row from
``old rows`` on must be listed. Old row r is at ``old offset + r * row bytes``.

Transforms of ``elem``-byte elements (elem 1, 2, 4 or 8): 0 the new bytes; 1 XOR with the
base; 2 zigzag difference: ``d = new - base`` of little-endian integers modulo 2**(8*elem),
read as signed, stored as ``(d << 1) ^ (d >> (8*elem - 1))`` so small differences of either
sign have small codes. "planes" is byte-plane grouping: the first byte of every element, then
every second byte, ...: the exponent bytes of float32 values sit side by side.

Limits a decoder enforces (PatchError otherwise): old size equal to the base's size; every
range read inside the old file; N <= MAX_RANGES, their total and R <= MAX_REMAINDER, R <= the
target size, F <= R + MAX_FRAME_OVERHEAD; every zstd window <= 2**MAX_WINDOW_LOG and no
dictionary id; op frames <= FRAME_SIZE + MAX_FRAME_OVERHEAD bytes; DENSE length and
``count * (row bytes + 4)`` <= MAX_OP_PAYLOAD, ``length`` and ``row bytes`` multiples of elem;
no op writes past the target size; the ops use the whole remainder and write exactly the
target size; nothing follows END.

Worst-case body (:func:`max_body_size`): any target can be sent as one LITERAL op of all its
bytes, cut into frames of FRAME_SIZE decoded bytes, each at most zstd's compress bound. The
encoder falls back to that body whenever its own would be larger, and a decoder refuses a
larger body before decoding it.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np
import numpy.typing as npt

from edgerec.codecs.bounds import zstd_frames_bound

MAGIC: Final = b"ERT1"
HEADER: Final = struct.Struct("<4sQQIQ")
RANGE: Final = struct.Struct("<QQ")
FRAME_LENGTH: Final = struct.Struct("<I")

OP_END: Final = 0
OP_COPY: Final = 1
OP_LITERAL: Final = 2
OP_REMAINDER: Final = 3
OP_DENSE: Final = 4
OP_ROWS: Final = 5

COPY_ARGS: Final = struct.Struct("<QQ")
LENGTH_ARG: Final = struct.Struct("<Q")
DENSE_ARGS: Final = struct.Struct("<QQQBB")
ROWS_ARGS: Final = struct.Struct("<QQQQBBQ")
INDEX_GAP: Final = np.dtype("<u4")

LITERAL: Final = 0
XOR: Final = 1
DIFFERENCE: Final = 2
TRANSFORMS: Final = (LITERAL, XOR, DIFFERENCE)
ELEMENT_SIZES: Final = (1, 2, 4, 8)

FRAME_SIZE: Final = 4 << 20
"""Largest decoded size of one op frame."""
MAX_OP_PAYLOAD: Final = 4 << 20
"""Largest payload of one DENSE op, and of one ROWS op's indices and rows together."""
MAX_REMAINDER: Final = 8 << 20
"""Largest remainder, and largest total of its prefix ranges."""
MAX_RANGES: Final = 1 << 16
"""Largest number of prefix ranges of the remainder."""
MAX_WINDOW_LOG: Final = 25
"""Largest zstd window of any frame of the body (the remainder's prefix plus content fit in it)."""
MAX_FRAME_OVERHEAD: Final = 1 << 16
"""How much larger than its content a legitimate zstd frame of at most FRAME_SIZE bytes may be."""

U8 = npt.NDArray[np.uint8]


def literal_stream_size(target_size: int) -> int:
    """Length of the op stream that sends a target as one LITERAL op: code, length, bytes, END."""
    return 1 + LENGTH_ARG.size + target_size + 1


def frame_sizes(stream_size: int) -> list[int]:
    """Decoded sizes of the frames an op stream of ``stream_size`` bytes is cut into when every frame is full."""
    full, rest = divmod(stream_size, FRAME_SIZE)
    return [FRAME_SIZE] * full + ([rest] if rest else [])


def max_body_size(target_size: int) -> int:
    """The largest body of a ``target_size``-byte target: the body header and its LITERAL op's frames."""
    return HEADER.size + zstd_frames_bound(frame_sizes(literal_stream_size(target_size)), FRAME_LENGTH.size)


def to_planes(data: U8, elem: int) -> U8:
    """Group the bytes of ``elem``-byte elements by position: all first bytes, all second bytes, ..."""
    if elem == 1:
        return data
    return np.ascontiguousarray(data.reshape(-1, elem).T).reshape(-1)


def from_planes(data: U8, elem: int) -> U8:
    """Inverse of :func:`to_planes`."""
    if elem == 1:
        return data
    return np.ascontiguousarray(data.reshape(elem, -1).T).reshape(-1)


def encode(new: U8, base: U8, elem: int, transform: int) -> U8:
    """The transform of ``new`` against ``base`` (same length, a multiple of ``elem``), not yet in planes."""
    if transform == LITERAL:
        return new
    if transform == XOR:
        return np.bitwise_xor(new, base)
    unsigned, signed = np.dtype(f"<u{elem}"), np.dtype(f"<i{elem}")
    difference = np.subtract(new.view(unsigned), base.view(unsigned)).view(signed)
    zigzag: U8 = ((difference << 1) ^ (difference >> (8 * elem - 1))).view(np.uint8)
    return zigzag


def decode(delta: U8, base: U8, elem: int, transform: int) -> U8:
    """Inverse of :func:`encode`: the new bytes from ``delta`` and ``base``."""
    if transform == LITERAL:
        return delta
    if transform == XOR:
        return np.bitwise_xor(delta, base)
    unsigned, signed = np.dtype(f"<u{elem}"), np.dtype(f"<i{elem}")
    zigzag = delta.view(unsigned)
    difference = (zigzag >> 1).view(signed) ^ -(zigzag & 1).view(signed)
    new: U8 = np.add(base.view(unsigned), difference.view(unsigned)).view(np.uint8)
    return new
