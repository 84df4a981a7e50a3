"""The "bsdiff4" codec: the body is a BSDIFF40 patch from the base file to the target.

bsdiff4 holds both files in memory to diff and to patch, and diffing takes minutes and GBs
on files of several hundred MB: use it for small and medium files.

The body is bsdiff4's own output, not zstd of it: BSDIFF40 already bz2-compresses its three
blocks, and zstd over it came out slightly larger on row updates of a float32 table
(``docs/performance.md``).

bsdiff4's reader trusts the patch's lengths and decompresses its bz2 blocks without limit,
so this module parses the 32-byte BSDIFF40 header and decompresses the blocks itself, each
bounded by what a patch for the header's target size can hold, then hands them to
``bsdiff4.core.patch``, which checks every control entry against the buffers.

Worst-case body for an ``n``-byte target: the 32-byte BSDIFF40 header and three bzip2 streams,
of the control block (at most one 24-byte entry per target byte, plus one: ``24 (n + 1)``
bytes) and of the diff and extra blocks (every target byte comes from one of them: ``n``
bytes together), each at most bzip2's documented bound (see :mod:`edgerec.codecs.bounds`):
``32 + bz2(24 (n + 1)) + bz2(n) + 601`` bytes, about 25 times the target. The control block
of a real patch compresses far better; the server ships a delta only when it is smaller than
the full payload.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import struct
from pathlib import Path

import bsdiff4
from bsdiff4 import core as bsdiff4_core

from edgerec.codecs.base import check_base, check_codec, verified_output
from edgerec.codecs.bounds import bz2_compress_bound
from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, PatchHeader, open_patch, write_container
from edgerec.errors import PatchError
from edgerec.fsutil import atomic_output

logger = logging.getLogger(__name__)

_BSDIFF_MAGIC = b"BSDIFF40"
_BSDIFF_HEADER = struct.Struct("<8sqqq")  # magic, control length, diff length, new size
_CONTROL_ENTRY = 24  # three signed 64-bit integers per control entry


class BsdiffCodec:
    """Ship a bsdiff4 patch against the device's current file."""

    name = "bsdiff4"
    needs_base = True

    def make(self, old: Path | None, new: Path, out: Path) -> None:
        """Write a container at ``out`` that turns ``old`` into ``new``."""
        if old is None:
            raise ValueError("the bsdiff4 codec needs a base file")
        old_bytes = old.read_bytes()
        new_bytes = new.read_bytes()
        body = bsdiff4.diff(old_bytes, new_bytes)
        with atomic_output(out) as f:
            write_container(
                f,
                codec=self.name,
                base_sha256=hashlib.sha256(old_bytes).hexdigest(),
                target_sha256=hashlib.sha256(new_bytes).hexdigest(),
                target_size=len(new_bytes),
                body=[body],
            )
        logger.info("bsdiff4 patch %s: %d -> %d bytes", out, len(new_bytes), len(body))

    def max_body_size(self, target_size: int) -> int:
        """The BSDIFF40 header and its three blocks, each at bzip2's worst case."""
        # Two streams share the n diff and extra bytes: bz2(d) + bz2(e) <= bz2(n) + 600 + 1 (rounding).
        control = _CONTROL_ENTRY * (target_size + 1)
        return _BSDIFF_HEADER.size + bz2_compress_bound(control) + bz2_compress_bound(target_size) + 601

    def apply(
        self, old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE
    ) -> None:
        """Patch ``old`` into ``out``; WrongBaseError unless ``old`` is the file the patch was made from."""
        with open_patch(patch, max_target_size) as (header, body_reader):
            check_codec(header, self)
            old_bytes = old.read_bytes() if old is not None else b""
            check_base(header, old, hashlib.sha256(old_bytes).hexdigest())
            control, diff, extra = _read_blocks(body_reader.read(), header)
            try:
                new_bytes = bsdiff4_core.patch(old_bytes, header.target_size, control, diff, extra)
            except (ValueError, MemoryError, OverflowError) as e:
                raise PatchError(f"bsdiff4 body is corrupt: {e}") from e
            with verified_output(out, header) as writer:
                writer.write(new_bytes)


def _read_blocks(body: bytes, header: PatchHeader) -> tuple[bytes, bytes, bytes]:
    """Split and decompress a BSDIFF40 body into its control, diff and extra blocks, all bounded."""
    if len(body) < _BSDIFF_HEADER.size:
        raise PatchError(f"bsdiff4 body is {len(body)} bytes, shorter than its {_BSDIFF_HEADER.size}-byte header")
    magic, control_length, diff_length, new_size = _BSDIFF_HEADER.unpack_from(body)
    if magic != _BSDIFF_MAGIC:
        raise PatchError(f"bsdiff4 body has magic {magic!r}, expected {_BSDIFF_MAGIC!r}")
    if new_size != header.target_size:
        raise PatchError(f"bsdiff4 body builds {new_size} bytes, the header promises {header.target_size}")
    space = len(body) - _BSDIFF_HEADER.size
    if not (0 <= control_length <= space and 0 <= diff_length <= space - control_length):
        raise PatchError(f"bsdiff4 block lengths {control_length} + {diff_length} do not fit in {space} bytes")
    start = _BSDIFF_HEADER.size
    blocks = (
        body[start : start + control_length],
        body[start + control_length : start + control_length + diff_length],
        body[start + control_length + diff_length :],
    )
    # bsdiff4 writes at most one control entry per target byte, plus one; every diff and
    # extra byte lands in the target once, so the two hold the target's size together.
    control = _bz2_bounded(blocks[0], _CONTROL_ENTRY * (new_size + 1), "control")
    diff = _bz2_bounded(blocks[1], new_size, "diff")
    extra = _bz2_bounded(blocks[2], new_size - len(diff), "extra")
    if len(control) % _CONTROL_ENTRY:
        raise PatchError(f"bsdiff4 control block is {len(control)} bytes, not a multiple of {_CONTROL_ENTRY}")
    return control, diff, extra


def _bz2_bounded(data: bytes, limit: int, name: str) -> bytes:
    """Decompress one complete bz2 stream of at most ``limit`` bytes, or raise PatchError."""
    decompressor = bz2.BZ2Decompressor()
    try:
        out = decompressor.decompress(data, max_length=limit + 1)
    except (OSError, ValueError, EOFError) as e:
        raise PatchError(f"bsdiff4 {name} block is corrupt: {e}") from e
    if len(out) > limit:
        raise PatchError(f"bsdiff4 {name} block decompresses past {limit} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise PatchError(f"bsdiff4 {name} block is not exactly one bz2 stream")
    return out
