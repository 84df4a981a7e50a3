"""The "full" codec: the body is the whole target file, zstd-compressed; no base file needed.

Both directions stream in 1 MiB steps, so memory stays bounded whatever the file size.

Level 9 by default. On float32 and int8 embedding tables zstd's ratio plateaus from
level 6-9, while compression speed keeps falling at higher levels (``docs/performance.md``).
Files above 128 MiB also get long-distance matching with a 128 MiB
window: it finds repeats further apart than level 9's 4 MiB window, at the cost of about
128 MiB more memory on the device while decompressing.

Worst-case body: one zstd frame of the target, at most ``zstd_compress_bound(target size)``
bytes (about 0.4% over the target, see :mod:`edgerec.codecs.bounds`); a device refuses a larger one.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import zstandard

from edgerec.codecs.base import check_codec, decompress_into, verified_output
from edgerec.codecs.bounds import zstd_compress_bound
from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, open_patch, write_container
from edgerec.codecs.patch_from import FRAME_HEADER_MAX, check_frame
from edgerec.fsutil import atomic_output
from edgerec.hashing import BLOCK_SIZE, sha256_file

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 9
LONG_DISTANCE_THRESHOLD = 128 << 20
"""Files larger than this (bytes) are compressed with long-distance matching."""
LONG_WINDOW_LOG = 27
"""log2 of the window used with long-distance matching; also the largest window a device accepts."""


class FullCodec:
    """Ship the whole new file as one zstd frame."""

    name = "full"
    needs_base = False

    def __init__(self, level: int = DEFAULT_LEVEL, long_distance_threshold: int = LONG_DISTANCE_THRESHOLD) -> None:
        self.level = level
        self.long_distance_threshold = long_distance_threshold

    def make(self, old: Path | None, new: Path, out: Path) -> None:
        """Write a container at ``out`` holding ``new`` compressed; ``old`` is ignored."""
        size = new.stat().st_size
        long_distance = size > self.long_distance_threshold
        # Long-distance matching widens the window the device must hold: only for big files.
        long_range = {"enable_ldm": True, "window_log": LONG_WINDOW_LOG} if long_distance else {}
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level, source_size=size, write_checksum=True, write_content_size=True, **long_range
        )
        compressor = zstandard.ZstdCompressor(compression_params=params)
        target_sha256 = sha256_file(new)
        with open(new, "rb") as src, atomic_output(out) as f:
            header = write_container(
                f,
                codec=self.name,
                base_sha256=None,
                target_sha256=target_sha256,
                target_size=size,
                body=compressor.read_to_iter(src, size=size, read_size=BLOCK_SIZE, write_size=BLOCK_SIZE),
            )
        logger.info(
            "full patch %s: %d -> %d bytes (level %d, long distance %s)",
            out,
            size,
            header.body_length,
            self.level,
            long_distance,
        )

    def max_body_size(self, target_size: int) -> int:
        """One zstd frame of the target: zstd's compress bound."""
        return zstd_compress_bound(target_size)

    def apply(
        self, old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE
    ) -> None:
        """Decompress the patch's body into ``out``, streaming; ``old`` is ignored."""
        with open_patch(patch, max_target_size) as (header, body):
            check_codec(header, self)
            if isinstance(body, io.BufferedReader):  # what open_patch gives: check the frame before decoding
                check_frame(body.peek(FRAME_HEADER_MAX)[:FRAME_HEADER_MAX], 1 << LONG_WINDOW_LOG, "zstd body")
            decompressor = zstandard.ZstdDecompressor(max_window_size=1 << LONG_WINDOW_LOG)
            with verified_output(out, header) as writer:
                decompress_into(decompressor, body, writer, header, "zstd body")
