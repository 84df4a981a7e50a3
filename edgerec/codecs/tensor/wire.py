"""A minimal reader of the protobuf wire format: fields of a message as offsets into a buffer.

Only what locating tensors needs: varints, fixed 32/64-bit values and length-delimited
fields (groups are refused). Every varint and length is bound-checked against the enclosing
message, so a damaged file raises :class:`WireError` instead of reading past its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


@dataclass(frozen=True)
class Field:
    """One field of a message: a number, a wire type and a value.

    ``value`` is the integer of a VARINT, I64 or I32 field; for a LEN field the payload is
    ``buffer[start:end]`` and ``value`` is its length.
    """

    number: int
    wire_type: int
    value: int
    start: int
    end: int


def read_varint(buffer: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` (not reading at or past ``end``) and the position after it."""
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise WireError("truncated varint")
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result, pos
    raise WireError("varint longer than 10 bytes")


def iter_fields(buffer: bytes | memoryview, start: int, end: int) -> Iterator[Field]:
    """The fields of the message ``buffer[start:end]``, in order."""
    if not 0 <= start <= end <= len(buffer):
        raise WireError(f"message [{start}, {end}) outside a buffer of {len(buffer)} bytes")
    pos = start
    while pos < end:
        key, pos = read_varint(buffer, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, after = read_varint(buffer, pos, end)
        elif wire_type in (I64, I32):
            width = 8 if wire_type == I64 else 4
            after = pos + width
            if after > end:
                raise WireError("truncated fixed-width field")
            value = int.from_bytes(buffer[pos:after], "little")
        elif wire_type == LEN:
            value, pos = read_varint(buffer, pos, end)
            after = pos + value
            if after > end:
                raise WireError(f"field {number} claims {value} bytes, {end - pos} left")
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        yield Field(number, wire_type, value, pos, after)
        pos = after


def packed_varints(buffer: bytes | memoryview, start: int, end: int) -> list[int]:
    """The varints packed back to back in ``buffer[start:end]``."""
    values: list[int] = []
    pos = start
    while pos < end:
        value, pos = read_varint(buffer, pos, end)
        values.append(value)
    return values
