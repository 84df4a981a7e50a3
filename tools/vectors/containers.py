"""Byte-level surgery on payload containers (``ERPATCH``), for the malformed vectors.

Offsets are those of ``docs/formats.md`` section 1; :func:`seal` writes a header with a correct
CRC-32 and trailer around any body, so damage can be aimed at one field and reach exactly the
check that must refuse it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from edgerec.codecs.container import CODEC_IDS, HEADER_SIZE, MAGIC, TRAILER_SIZE

CODEC_OFFSET = 10
RESERVED_OFFSET = 11
BASE_OFFSET = 12
TARGET_SHA_OFFSET = 44
TARGET_SIZE_OFFSET = 76
BODY_LENGTH_OFFSET = 84
CRC_OFFSET = 92
_FIELDS = struct.Struct("<8sHBB32s32sQQ")


def seal(
    *,
    codec: str | int,
    base_sha256: bytes,
    target_sha256: bytes,
    target_size: int,
    body: bytes,
    magic: bytes = MAGIC,
    version: int = 1,
    reserved: int = 0,
    body_length: int | None = None,
) -> bytes:
    """A container of ``body`` with every header field as given and a correct CRC and trailer."""
    codec_id = CODEC_IDS[codec] if isinstance(codec, str) else codec
    fields = _FIELDS.pack(
        magic,
        version,
        codec_id,
        reserved,
        base_sha256,
        target_sha256,
        target_size,
        len(body) if body_length is None else body_length,
    )
    return fields + struct.pack("<I", zlib.crc32(fields)) + body + hashlib.sha256(body).digest()


def body_of(container: bytes) -> bytes:
    """The body of a container (between the 96-byte header and the 32-byte trailer)."""
    return container[HEADER_SIZE:-TRAILER_SIZE]


def reseal(container: bytes, *, body: bytes | None = None, **fields: object) -> bytes:
    """``container`` with some header fields (names of :func:`seal`) or its body replaced, CRC and trailer redone."""
    magic, version, codec_id, reserved, base, target, target_size, _ = _FIELDS.unpack_from(container)
    current: dict[str, object] = {
        "magic": magic,
        "version": version,
        "codec": codec_id,
        "reserved": reserved,
        "base_sha256": base,
        "target_sha256": target,
        "target_size": target_size,
        "body": body_of(container) if body is None else body,
    }
    current.update(fields)
    return seal(**current)  # type: ignore[arg-type]


def patch_bytes(data: bytes, offset: int, replacement: bytes) -> bytes:
    """``data`` with ``replacement`` written at ``offset`` (no CRC or trailer fixed)."""
    return data[:offset] + replacement + data[offset + len(replacement) :]


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    """``data`` with one bit flipped (no CRC or trailer fixed)."""
    return patch_bytes(data, offset, bytes([data[offset] ^ (1 << bit)]))
