"""The "zstd-patch-from" codec: zstd with the base file as a prefix, as ``zstd --patch-from`` does.

The body is one zstd frame of the target, compressed with the whole base file as a raw
prefix (``ZstdDict(old, is_raw=True).as_prefix`` of ``backports.zstd``), a window of at least
``old + new`` bytes (log2 rounded up) and long-distance matching, so matches reach anywhere in
the base. python-zstandard's raw-content dictionary with default parameters is not the same
thing (it misses most long-range matches), hence ``backports.zstd`` on the server.

Applying needs only python-zstandard: a raw-content dictionary and a prefix are the same thing
to a zstd *decoder* (both are history before the frame's first byte). The device holds the base
in memory (it is the prefix) plus the decoder's window buffer, at most ``min(window, target)``:
peak memory is about ``old + min(window, target) + 2 MiB``. A frame whose window is larger than
``old + target`` needs (rounded up to a power of two) or than ``2**max_window_log`` is refused
before anything is decoded.

``backports.zstd`` (``compression.zstd`` from Python 3.14) is imported only when making a patch:
devices need not install it.

Worst-case body: one zstd frame of the target; a prefix never makes a frame larger, so the
bound is the full codec's, ``zstd_compress_bound(target size)``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zstandard

from edgerec.codecs.base import check_base, check_codec, decompress_into, verified_output
from edgerec.codecs.bounds import zstd_compress_bound
from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, open_patch, write_container
from edgerec.errors import PatchError
from edgerec.fsutil import atomic_output
from edgerec.hashing import BLOCK_SIZE, sha256_file

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 19
MIN_WINDOW_LOG = 10
"""zstd's smallest window (1 KiB)."""
MAX_WINDOW_LOG = 30
"""Default largest window (1 GiB) the codec makes and a device accepts."""
MIN_PREFIX = 8
"""zstd refuses raw prefixes shorter than this: shorter bases are not used as a prefix at all."""
FRAME_HEADER_MAX = 18
"""Longest zstd frame header (magic included): enough bytes to read a frame's window and dictionary id."""


def window_log_for(size: int) -> int:
    """log2 of the smallest power-of-two window (at least 1 KiB) holding ``size`` bytes."""
    return max(MIN_WINDOW_LOG, (size - 1).bit_length())


def compress_with_prefix(
    prefix: bytes, chunks: Iterable[bytes], size: int, *, level: int, window_log: int
) -> Iterator[bytes]:
    """Yield one zstd frame of ``chunks`` (``size`` bytes in all) compressed with ``prefix`` as history."""
    if sys.version_info >= (3, 14):
        from compression.zstd import CompressionParameter, ZstdCompressor, ZstdDict
    else:
        from backports.zstd import CompressionParameter, ZstdCompressor, ZstdDict

    options: dict[int, int] = {
        CompressionParameter.compression_level: level,
        CompressionParameter.window_log: window_log,
        CompressionParameter.enable_long_distance_matching: 1,
        CompressionParameter.content_size_flag: 1,
        CompressionParameter.checksum_flag: 1,
    }
    zstd_dict = ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= MIN_PREFIX else None
    compressor = ZstdCompressor(options=options, zstd_dict=zstd_dict)
    compressor.set_pledged_input_size(size)
    for chunk in chunks:
        if out := compressor.compress(chunk):
            yield out
    yield compressor.flush()


def prefix_decompressor(prefix: bytes | memoryview, max_window_size: int) -> Any:
    """A python-zstandard decompressor that decodes frames made by :func:`compress_with_prefix`.

    The prefix is copied: the caller may release ``prefix`` once this returns.
    """
    if len(prefix) < MIN_PREFIX:
        return zstandard.ZstdDecompressor(max_window_size=max_window_size)
    dictionary = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=max_window_size)


def check_frame(head: bytes, max_window_size: int, what: str) -> Any:
    """Parameters of the zstd frame starting with ``head``; PatchError if unreadable or its window is too big."""
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as e:
        raise PatchError(f"{what} is not a zstd frame: {e}") from e
    if params.dict_id != 0:
        raise PatchError(f"{what} names zstd dictionary {params.dict_id}; none is used")
    if params.window_size > max_window_size:
        raise PatchError(
            f"{what} needs a window of {params.window_size} bytes, more than the limit of {max_window_size}"
        )
    return params


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The bytes of ``path`` without copying them into the heap (empty files give ``b""``)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


class PatchFromCodec:
    """Ship the new file as zstd with the device's current file as a prefix."""

    name = "zstd-patch-from"
    needs_base = True

    def __init__(self, level: int = DEFAULT_LEVEL, max_window_log: int = MAX_WINDOW_LOG) -> None:
        if not MIN_WINDOW_LOG <= max_window_log <= 31:
            raise ValueError(f"max_window_log must be in [{MIN_WINDOW_LOG}, 31], got {max_window_log}")
        self.level = level
        self.max_window_log = max_window_log

    def window_limit(self, old_size: int, target_size: int) -> int:
        """Largest window a patch from ``old_size`` to ``target_size`` bytes may use."""
        return 1 << min(self.max_window_log, window_log_for(old_size + target_size))

    def make(self, old: Path | None, new: Path, out: Path) -> None:
        """Write a container at ``out`` that turns ``old`` into ``new``."""
        if old is None:
            raise ValueError("the zstd-patch-from codec needs a base file")
        old_bytes = old.read_bytes()
        size = new.stat().st_size
        window_log = min(self.max_window_log, window_log_for(len(old_bytes) + size))
        if window_log < window_log_for(len(old_bytes) + size):
            logger.warning("%s + %s exceed a 2**%d window: distant matches are lost", old, new, window_log)
        with open(new, "rb") as src, atomic_output(out) as f:
            chunks = iter(lambda: src.read(BLOCK_SIZE), b"")
            header = write_container(
                f,
                codec=self.name,
                base_sha256=hashlib.sha256(old_bytes).hexdigest(),
                target_sha256=sha256_file(new),
                target_size=size,
                body=compress_with_prefix(old_bytes, chunks, size, level=self.level, window_log=window_log),
            )
        logger.info(
            "zstd-patch-from patch %s: %d -> %d bytes (level %d, window 2**%d)",
            out,
            size,
            header.body_length,
            self.level,
            window_log,
        )

    def max_body_size(self, target_size: int) -> int:
        """One zstd frame of the target: zstd's compress bound, whatever the prefix."""
        return zstd_compress_bound(target_size)

    def apply(
        self, old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE
    ) -> None:
        """Decode the patch against ``old`` into ``out``, streaming the output; ``old`` is held in memory."""
        with open_patch(patch, max_target_size) as (header, body):
            check_codec(header, self)
            check_base(header, old)
            assert old is not None
            with _mapped(old) as base:
                limit = self.window_limit(len(base), header.target_size)
                if isinstance(body, io.BufferedReader):  # what open_patch gives: check before decoding
                    check_frame(body.peek(FRAME_HEADER_MAX)[:FRAME_HEADER_MAX], limit, "zstd-patch-from body")
                with memoryview(base) as view:
                    decompressor = prefix_decompressor(view, limit)
            with verified_output(out, header) as writer:
                decompress_into(decompressor, body, writer, header, "zstd-patch-from body")
