"""The versioned container every payload is wrapped in, whatever codec made its body.

Layout, format version 1 (all integers little-endian)::

    offset  size  field
         0     8  magic b"ERPATCH\\0"
         8     2  format version, u16 (= 1)
        10     1  codec id, u8 (1 = "full", 2 = "bsdiff4", 3 = "zstd-patch-from", 4 = "tensor")
        11     1  reserved, u8 (= 0)
        12    32  base sha256, raw bytes; all zero when the codec needs no base file
        44    32  target sha256, raw bytes: the file the payload produces
        76     8  target size, u64
        84     8  body length, u64
        92     4  CRC-32 of bytes 0..91, u32
        96     N  body (N = body length), codec-specific
      96+N    32  sha256 of the body, raw bytes

The header CRC catches a damaged header before any of its lengths is used; the body
sha256 trailer catches a truncated, extended or mutated body before a codec sees it.
Neither is a signature: who made the payload is the manifest's business.

Invariants of :func:`read_header`: every field is checked before it is returned (magic,
version, codec id, reserved byte, CRC, target size against a caller's maximum, and the
file being exactly header + body + trailer long), and each failure is a
:class:`~edgerec.errors.PatchError` naming the field.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from edgerec.errors import PatchError
from edgerec.hashing import BLOCK_SIZE, HashingWriter

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAGIC = b"ERPATCH\0"
FORMAT_VERSION = 1
CODEC_IDS: dict[str, int] = {"full": 1, "bsdiff4": 2, "zstd-patch-from": 3, "tensor": 4}
"""Wire id of each codec name."""

DEFAULT_MAX_TARGET_SIZE = 64 << 30
"""Largest target size a reader accepts unless told otherwise (64 GiB)."""

_FIELDS = struct.Struct("<8sHBB32s32sQQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _FIELDS.size + _CRC.size
TRAILER_SIZE = 32
_ZERO_DIGEST = bytes(32)
_U64_MAX = (1 << 64) - 1
_CODEC_NAMES = {codec_id: name for name, codec_id in CODEC_IDS.items()}


@dataclass(frozen=True)
class PatchHeader:
    """The header of one payload; digests are lowercase hex, ``base_sha256`` None when there is no base."""

    codec: str
    base_sha256: str | None
    target_sha256: str
    target_size: int
    body_length: int

    def __post_init__(self) -> None:
        if self.codec not in CODEC_IDS:
            raise ValueError(f"unknown codec {self.codec!r}")
        for name in ("base_sha256", "target_sha256"):
            value = getattr(self, name)
            if value is not None and not _is_hex_digest(value):
                raise ValueError(f"{name} must be 64 lowercase hex digits, got {value!r}")
        for name in ("target_size", "body_length"):
            if not 0 <= getattr(self, name) <= _U64_MAX:
                raise ValueError(f"{name} out of range: {getattr(self, name)}")


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def write_header(f: BinaryIO, header: PatchHeader) -> None:
    """Write the 96-byte header of ``header`` at the current position of ``f``."""
    fields = _FIELDS.pack(
        MAGIC,
        FORMAT_VERSION,
        CODEC_IDS[header.codec],
        0,
        bytes.fromhex(header.base_sha256) if header.base_sha256 else _ZERO_DIGEST,
        bytes.fromhex(header.target_sha256),
        header.target_size,
        header.body_length,
    )
    f.write(fields + _CRC.pack(zlib.crc32(fields)))


def read_header(f: BinaryIO, max_target_size: int = DEFAULT_MAX_TARGET_SIZE) -> PatchHeader:
    """Read and check the header at the current position of seekable ``f``; leave ``f`` at the body.

    Raises PatchError for anything but a well-formed version-1 header of a known codec, whose
    target size is at most ``max_target_size`` and whose file holds exactly its body and trailer.
    """
    start = f.tell()
    raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise PatchError(f"patch truncated: {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, codec_id, reserved, base, target, target_size, body_length = _FIELDS.unpack_from(raw)
    if magic != MAGIC:
        raise PatchError(f"not an edgerec patch: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise PatchError(f"unsupported patch format version {version} (this reader knows {FORMAT_VERSION})")
    (crc,) = _CRC.unpack_from(raw, _FIELDS.size)
    if crc != zlib.crc32(raw[: _FIELDS.size]):
        raise PatchError("patch header is corrupt: CRC-32 mismatch")
    if codec_id not in _CODEC_NAMES:
        raise PatchError(f"unknown patch codec id {codec_id}")
    if reserved != 0:
        raise PatchError(f"reserved header byte is {reserved}, expected 0")
    if target_size > max_target_size:
        raise PatchError(f"target size {target_size} exceeds the maximum of {max_target_size} bytes")
    end = f.seek(0, os.SEEK_END)
    f.seek(start + HEADER_SIZE)
    expected_end = start + HEADER_SIZE + body_length + TRAILER_SIZE
    if end != expected_end:
        state = "truncated" if end < expected_end else "followed by extra bytes"
        raise PatchError(
            f"patch is {state}: file is {end - start} bytes, header promises "
            f"{HEADER_SIZE} + {body_length} + {TRAILER_SIZE}"
        )
    return PatchHeader(
        codec=_CODEC_NAMES[codec_id],
        base_sha256=None if base == _ZERO_DIGEST else base.hex(),
        target_sha256=target.hex(),
        target_size=target_size,
        body_length=body_length,
    )


def verify_body(f: BinaryIO, header: PatchHeader) -> None:
    """Check the body that follows the header against the sha256 trailer; leave ``f`` at the body.

    ``f`` must be positioned at the body, as :func:`read_header` leaves it.
    """
    start = f.tell()
    digest = hashlib.sha256()
    remaining = header.body_length
    while remaining:
        block = f.read(min(BLOCK_SIZE, remaining))
        if not block:
            raise PatchError("patch body ended early")
        digest.update(block)
        remaining -= len(block)
    if f.read(TRAILER_SIZE) != digest.digest():
        raise PatchError("patch body is corrupt: sha256 does not match the trailer")
    f.seek(start)


def write_container(
    f: BinaryIO,
    *,
    codec: str,
    base_sha256: str | None,
    target_sha256: str,
    target_size: int,
    body: Iterable[bytes],
) -> PatchHeader:
    """Write a whole container to seekable ``f`` from the body's chunks; return its header."""
    start = f.tell()
    provisional = PatchHeader(codec, base_sha256, target_sha256, target_size, body_length=0)
    write_header(f, provisional)  # rewritten below, once the body length is known
    writer = HashingWriter(f)
    for chunk in body:
        writer.write(chunk)
    f.write(bytes.fromhex(writer.hexdigest))
    header = PatchHeader(codec, base_sha256, target_sha256, target_size, body_length=writer.size)
    end = f.tell()
    f.seek(start)
    write_header(f, header)
    f.seek(end)
    return header


@contextmanager
def open_patch(path: Path, max_target_size: int = DEFAULT_MAX_TARGET_SIZE) -> Iterator[tuple[PatchHeader, BinaryIO]]:
    """Open a patch, check its header and body, and yield the header and a reader of the body alone."""
    with open(path, "rb") as f:
        header = read_header(f, max_target_size)
        verify_body(f, header)
        yield header, io.BufferedReader(_RangeReader(f, header.body_length), BLOCK_SIZE)


def read_patch_info(path: Path, max_target_size: int = DEFAULT_MAX_TARGET_SIZE) -> PatchHeader:
    """Return the checked header of the patch at ``path`` (the body is not read)."""
    with open(path, "rb") as f:
        return read_header(f, max_target_size)


class _RangeReader(io.RawIOBase):
    """Reads at most ``length`` bytes of ``f`` from its current position, so decoders cannot overrun."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f = f
        self._remaining = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._remaining)
        if want == 0:
            return 0
        data = self._f.read(want)
        view[: len(data)] = data
        self._remaining -= len(data)
        return len(data)
