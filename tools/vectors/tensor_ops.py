"""Hand-built ``tensor`` bodies: one vector per operation, transform and element size, and one per rule
a decoder must enforce (``docs/formats.md`` section 5).

Every frame is a raw-block zstd frame (:mod:`.frames`), so these payloads are byte-stable. The
expected output of each valid vector is computed here from what the ops mean (plain Python), not
by edgerec's decoder, so the vectors check the decoder rather than echo it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from edgerec.tools.vectors.containers import seal
from edgerec.tools.vectors.frames import raw_frame

BASE_SIZE = 4096
TABLE_OFFSET = 1024
ROW_BYTES = 32
OLD_ROWS = 16


def stream(seed: str, size: int) -> bytes:
    """``size`` pseudo-random bytes: sha256 of the seed and a counter, back to back."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def tensor_base() -> bytes:
    """The base file of the crafted vectors: random bytes with a float32 table of 16 x 8 values at 1024."""
    base = bytearray(stream("edgerec tensor base", BASE_SIZE))
    values = [((i * 37) % 101 - 50) / 64.0 for i in range(OLD_ROWS * ROW_BYTES // 4)]
    base[TABLE_OFFSET : TABLE_OFFSET + OLD_ROWS * ROW_BYTES] = struct.pack(f"<{len(values)}f", *values)
    return bytes(base)


# --- the transforms and byte planes, written from the format document --------------------------


def planes(data: bytes, elem: int) -> bytes:
    """Byte j of element i at ``j * n + i``."""
    n = len(data) // elem
    return bytes(data[i * elem + j] for j in range(elem) for i in range(n))


def transform(new: bytes, old: bytes, elem: int, kind: int) -> bytes:
    """The stored deltas of ``new`` against ``old`` (0 literal, 1 XOR, 2 zigzag difference)."""
    if kind == 0:
        return new
    if kind == 1:
        return bytes(a ^ b for a, b in zip(new, old, strict=True))
    bits = 8 * elem
    out = bytearray()
    for i in range(0, len(new), elem):
        t = (int.from_bytes(new[i : i + elem], "little") - int.from_bytes(old[i : i + elem], "little")) % (1 << bits)
        signed = t - (1 << bits) if t >> (bits - 1) else t
        zigzag = ((signed << 1) ^ (signed >> (bits - 1))) % (1 << bits)
        out += zigzag.to_bytes(elem, "little")
    return bytes(out)


# --- op streams ---------------------------------------------------------------------------------


@dataclass
class Ops:
    """An op stream under construction."""

    data: bytearray = field(default_factory=bytearray)

    def copy(self, offset: int, length: int) -> Ops:
        self.data += struct.pack("<BQQ", 1, offset, length)
        return self

    def literal(self, payload: bytes, length: int | None = None) -> Ops:
        self.data += struct.pack("<BQ", 2, len(payload) if length is None else length) + payload
        return self

    def remainder(self, length: int) -> Ops:
        self.data += struct.pack("<BQ", 3, length)
        return self

    def dense(self, old_offset: int, old_length: int, deltas: bytes, elem: int, kind: int) -> Ops:
        self.data += struct.pack("<BQQQBB", 4, old_offset, old_length, len(deltas), elem, kind)
        self.data += planes(deltas, elem)
        return self

    def rows(
        self,
        old_offset: int,
        old_rows: int,
        new_rows: int,
        row_bytes: int,
        elem: int,
        kind: int,
        indices: Sequence[int],
        deltas: bytes,
        gaps: Sequence[int] | None = None,
    ) -> Ops:
        if gaps is None:
            gaps = [indices[0], *(b - a for a, b in pairwise(indices))]
        self.data += struct.pack("<BQQQQBBQ", 5, old_offset, old_rows, new_rows, row_bytes, elem, kind, len(gaps))
        self.data += planes(struct.pack(f"<{len(gaps)}I", *gaps), 4)
        self.data += planes(deltas, elem)
        return self

    def raw(self, data: bytes) -> Ops:
        self.data += data
        return self

    def end(self) -> Ops:
        self.data += b"\x00"
        return self


def body(
    ops: bytes | bytearray | Sequence[bytes],
    *,
    old_size: int = BASE_SIZE,
    ranges: Sequence[tuple[int, int]] = (),
    remainder: bytes = b"",
    remainder_frame: bytes | None = None,
    frames: Sequence[bytes] | None = None,
    magic: bytes = b"ERT1",
) -> bytes:
    """A tensor body: header, ranges, remainder frame, then the op stream in one frame per element of ``ops``."""
    frame = raw_frame(remainder) if remainder and remainder_frame is None else (remainder_frame or b"")
    parts = [bytes(ops)] if isinstance(ops, bytes | bytearray) else [bytes(p) for p in ops]
    op_frames = list(frames) if frames is not None else [raw_frame(part) for part in parts]
    out = bytearray(struct.pack("<4sQQIQ", magic, old_size, len(remainder), len(ranges), len(frame)))
    for offset, length in ranges:
        out += struct.pack("<QQ", offset, length)
    out += frame
    for f in op_frames:
        out += struct.pack("<I", len(f)) + f
    return bytes(out)


@dataclass(frozen=True)
class Crafted:
    """One crafted tensor payload: its id, what it shows, the container and the expected output or error."""

    name: str
    description: str
    container: bytes
    target: bytes
    error: str | None = None


def _container(body_bytes: bytes, base: bytes, target: bytes) -> bytes:
    return seal(
        codec="tensor",
        base_sha256=hashlib.sha256(base).digest(),
        target_sha256=hashlib.sha256(target).digest(),
        target_size=len(target),
        body=body_bytes,
    )


def crafted_vectors(base: bytes) -> list[Crafted]:
    """Every crafted vector, valid ones first."""
    out: list[Crafted] = []

    def valid(name: str, description: str, target: bytes, make: Callable[[], bytes]) -> None:
        out.append(Crafted(name, description, _container(make(), base, target), target))

    def invalid(name: str, description: str, target: bytes, make: Callable[[], bytes]) -> None:
        out.append(Crafted(name, description, _container(make(), base, target), target, "PatchError"))

    text = b"edgerec " * 6 + b"!"
    t_copy = base[0:100] + text + base[200:500]
    copy_ops = Ops().copy(0, 100).literal(text).copy(200, 300).end().data
    valid("copy-literal", "COPY, LITERAL, COPY, END in one op frame", t_copy, lambda: body(bytes(copy_ops)))
    valid(
        "straddle",
        "the same ops cut into three op frames mid-argument and mid-literal (an op may straddle frames)",
        t_copy,
        lambda: body([bytes(copy_ops[:5]), bytes(copy_ops[5:30]), bytes(copy_ops[30:])]),
    )

    rem = b"the remainder: gaps between tensors"
    ranges = [(0, 64), (1000, 32)]
    t_rem = base[64:74] + rem
    valid(
        "remainder",
        "a remainder frame (raw blocks; its prefix is base[0:64] + base[1000:1032]) consumed by one REMAINDER op",
        t_rem,
        lambda: body(Ops().copy(64, 10).remainder(len(rem)).end().data, ranges=ranges, remainder=rem),
    )

    table = base[TABLE_OFFSET : TABLE_OFFSET + OLD_ROWS * ROW_BYTES]
    floats = struct.unpack(f"<{len(table) // 4}f", table)
    moved = struct.pack(f"<{len(floats)}f", *(v + (0.25 if i % 3 == 0 else 0.0) for i, v in enumerate(floats)))
    valid(
        "dense-xor-f32",
        "DENSE over 512 bytes of float32 (elem 4), transform 1 (XOR), byte planes",
        moved,
        lambda: body(Ops().dense(TABLE_OFFSET, len(table), transform(moved, table, 4, 1), 4, 1).end().data),
    )
    old16 = base[2048:2304]
    new16 = b"".join(
        ((int.from_bytes(old16[i : i + 2], "little") + (i % 7) - 3) % 65536).to_bytes(2, "little")
        for i in range(0, len(old16), 2)
    )
    valid(
        "dense-zigzag-u16",
        "DENSE of 2-byte elements, transform 2 (zigzag difference, wrapping modulo 2**16)",
        new16,
        lambda: body(Ops().dense(2048, 256, transform(new16, old16, 2, 2), 2, 2).end().data),
    )
    new64 = stream("u64 literal", 64)
    valid(
        "dense-literal-u64",
        "DENSE of 8-byte elements, transform 0 (the new bytes; base ignored), old length 40 < length 64",
        new64,
        lambda: body(Ops().dense(3000, 40, transform(new64, b"", 8, 0), 8, 0).end().data),
    )
    padded = base[3100:3148] + bytes(16)
    new_padded = bytes((b + 1) % 256 for b in padded)
    valid(
        "dense-zigzag-padded",
        "DENSE with old length 48 < length 64: the base range is zero-padded to 64 bytes before the transform",
        new_padded,
        lambda: body(Ops().dense(3100, 48, transform(new_padded, padded, 4, 2), 4, 2).end().data),
    )
    valid(
        "dense-xor-u8",
        "DENSE of 1-byte elements (planes are the identity), XOR",
        base[10:42][::-1],
        lambda: body(Ops().dense(10, 32, transform(base[10:42][::-1], base[10:42], 1, 1), 1, 1).end().data),
    )

    old_rows = [table[r * ROW_BYTES : (r + 1) * ROW_BYTES] for r in range(OLD_ROWS)]
    new_rows = [*old_rows, *(bytes(ROW_BYTES) for _ in range(4))]
    changed = [2, 7, 15, 16, 17, 18, 19]
    for r in changed:
        new_rows[r] = stream(f"row {r}", ROW_BYTES)
    deltas = b"".join(transform(new_rows[r], old_rows[r] if r < OLD_ROWS else bytes(ROW_BYTES), 4, 2) for r in changed)
    t_rows = b"".join(new_rows)
    valid(
        "rows-grow-zigzag",
        "ROWS: a 16-row table grows to 20 rows; rows 2, 7, 15 change and 16-19 are new (old rows past 16 are zeros)",
        t_rows,
        lambda: body(Ops().rows(TABLE_OFFSET, OLD_ROWS, 20, ROW_BYTES, 4, 2, changed, deltas).end().data),
    )
    xor_rows = list(old_rows)
    for r in (0, 5):
        xor_rows[r] = stream(f"xor row {r}", ROW_BYTES)
    xor_deltas = b"".join(transform(xor_rows[r], old_rows[r], 4, 1) for r in (0, 5))
    valid(
        "rows-xor-first-row",
        "ROWS with XOR and a first gap of 0 (row 0 changes), table size unchanged",
        b"".join(xor_rows),
        lambda: body(Ops().rows(TABLE_OFFSET, OLD_ROWS, OLD_ROWS, ROW_BYTES, 4, 1, [0, 5], xor_deltas).end().data),
    )
    valid("empty-target", "an empty target: only END", b"", lambda: body(Ops().end().data))

    # --- what a decoder must refuse (PatchError) ---
    end = Ops().end().data
    short = base[:10]
    invalid("bad-magic", "body magic ERT2", short, lambda: body(Ops().copy(0, 10).end().data, magic=b"ERT2"))
    invalid(
        "old-size-mismatch",
        "the body was made for a 4095-byte base",
        short,
        lambda: body(Ops().copy(0, 10).end().data, old_size=BASE_SIZE - 1),
    )
    invalid("unknown-op", "op code 6", short, lambda: body(Ops().copy(0, 10).raw(b"\x06").end().data))
    invalid(
        "data-after-end",
        "a byte after END in the same frame",
        short,
        lambda: body(Ops().copy(0, 10).end().raw(b"\x00").data),
    )
    invalid(
        "frame-after-end",
        "an op frame after the frame holding END",
        short,
        lambda: body([bytes(Ops().copy(0, 10).end().data), b"\x00"]),
    )
    invalid("no-end", "the op stream ends without END", short, lambda: body(Ops().copy(0, 10).data))
    invalid(
        "copy-outside-base",
        "COPY of base[4000:4200] from a 4096-byte base",
        base[4000:4096] + bytes(104),
        lambda: body(Ops().copy(4000, 200).end().data),
    )
    invalid(
        "literal-past-target",
        "LITERAL of 20 bytes into a 10-byte target",
        short,
        lambda: body(Ops().literal(stream("x", 20)).end().data),
    )
    invalid("short-output", "END after 5 of the 10 target bytes", short, lambda: body(Ops().copy(0, 5).end().data))
    invalid(
        "remainder-unused",
        "REMAINDER uses 30 of the 35 remainder bytes",
        rem[:30],
        lambda: body(Ops().remainder(30).end().data, ranges=ranges, remainder=rem),
    )
    invalid(
        "remainder-overrun",
        "REMAINDER of 40 bytes from a 35-byte remainder",
        rem + bytes(5),
        lambda: body(Ops().remainder(40).end().data, ranges=ranges, remainder=rem),
    )
    invalid(
        "range-outside-base",
        "a prefix range [4000, 4200) of a 4096-byte base",
        rem,
        lambda: body(Ops().remainder(len(rem)).end().data, ranges=[(4000, 200)], remainder=rem),
    )
    invalid(
        "remainder-without-frame",
        "R = 35 but F = 0",
        rem,
        lambda: body(Ops().remainder(len(rem)).end().data, remainder=rem, remainder_frame=b""),
    )
    invalid(
        "dense-bad-elem",
        "DENSE with element size 3",
        base[:12],
        lambda: body(Ops().dense(0, 12, bytes(12), 3, 1).end().data),
    )
    invalid(
        "dense-bad-transform",
        "DENSE with transform 3",
        base[:12],
        lambda: body(Ops().dense(0, 12, bytes(12), 4, 3).end().data),
    )
    invalid(
        "dense-length-not-multiple",
        "DENSE of 10 bytes of 4-byte elements",
        base[:10],
        lambda: body(Ops().raw(struct.pack("<BQQQBB", 4, 0, 10, 10, 4, 1) + bytes(10)).end().data),
    )
    invalid(
        "dense-old-longer",
        "DENSE whose old length 16 exceeds its length 8",
        base[:8],
        lambda: body(Ops().raw(struct.pack("<BQQQBB", 4, 0, 16, 8, 4, 1) + bytes(8)).end().data),
    )
    invalid(
        "rows-not-increasing",
        "ROWS gaps 3 then 0 (an index repeats)",
        t_rows[: OLD_ROWS * ROW_BYTES],
        lambda: body(
            Ops().rows(TABLE_OFFSET, OLD_ROWS, OLD_ROWS, ROW_BYTES, 4, 1, [3, 3], bytes(64), gaps=[3, 0]).end().data
        ),
    )
    invalid(
        "rows-new-unlisted",
        "a table grown to 20 rows lists only 2 of the 4 new rows",
        t_rows,
        lambda: body(Ops().rows(TABLE_OFFSET, OLD_ROWS, 20, ROW_BYTES, 4, 1, [16, 17], bytes(64)).end().data),
    )
    invalid(
        "rows-index-out-of-range",
        "a ROWS index (16) at or past new rows (16)",
        table,
        lambda: body(Ops().rows(TABLE_OFFSET, OLD_ROWS, OLD_ROWS, ROW_BYTES, 4, 1, [16], bytes(32)).end().data),
    )
    invalid(
        "frame-no-content-size",
        "an op frame that does not declare its content size",
        b"",
        lambda: body(end, frames=[raw_frame(bytes(end), window_log=10, content_size=False)]),
    )
    invalid(
        "frame-dict-id",
        "an op frame naming a zstd dictionary",
        b"",
        lambda: body(end, frames=[raw_frame(bytes(end), dict_id=7)]),
    )
    invalid(
        "frame-window-too-big",
        "an op frame declaring a 2**26-byte window (the limit is 2**25)",
        b"",
        lambda: body(end, frames=[raw_frame(bytes(end), window_log=26)]),
    )
    invalid(
        "frame-size-past-body",
        "an op frame's u32 size runs past the body",
        b"",
        lambda: body(end, frames=[raw_frame(bytes(end))])[:-1],
    )
    return out
