"""zstd frames written by hand with raw (stored) blocks (RFC 8878), so crafted vectors are byte-stable.

A raw block stores its bytes as they are: any conforming decoder reads it, and no compressor
version can change it. Used for the tensor op vectors and for frames whose header must say
something a compressor would not write (a large window, no content size, a dictionary id).
"""

from __future__ import annotations

import struct

MAGIC = b"\x28\xb5\x2f\xfd"
MAX_BLOCK = 128 << 10


def raw_frame(
    data: bytes, *, window_log: int | None = None, content_size: bool = True, dict_id: int | None = None
) -> bytes:
    """One zstd frame holding ``data`` in raw blocks.

    Without ``window_log`` the frame is single-segment (its window is its content size, which it
    declares); with it, the frame declares that window and, if ``content_size``, a 4-byte content size.
    ``dict_id`` adds a 4-byte dictionary id.
    """
    descriptor = 0
    header = b""
    if window_log is None:
        descriptor |= 1 << 5  # single segment: the content size is the window
        size = len(data)
        if size < 256:
            header += bytes([size])
        elif size < 65536 + 256:
            descriptor |= 1 << 6
            header += struct.pack("<H", size - 256)
        else:
            descriptor |= 2 << 6
            header += struct.pack("<I", size)
    else:
        if not 10 <= window_log <= 41:
            raise ValueError(f"window_log {window_log} out of range")
        window = bytes([(window_log - 10) << 3])
        if content_size:
            descriptor |= 2 << 6
            header = window + struct.pack("<I", len(data))
        else:
            header = window
    if dict_id is not None:
        descriptor |= 3
        header = (
            header[:1] + struct.pack("<I", dict_id) + header[1:]
            if window_log is not None
            else (struct.pack("<I", dict_id) + header)
        )
    blocks = [data[i : i + MAX_BLOCK] for i in range(0, len(data), MAX_BLOCK)] or [b""]
    out = bytearray(MAGIC + bytes([descriptor]) + header)
    for number, block in enumerate(blocks):
        last = 1 if number == len(blocks) - 1 else 0
        out += (last | (len(block) << 3)).to_bytes(3, "little") + block  # block type 0: raw
    return bytes(out)
