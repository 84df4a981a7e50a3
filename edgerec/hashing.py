"""SHA-256 of files and of bytes as they are written, without holding them in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

BLOCK_SIZE = 1 << 20
"""Bytes read per step when hashing a file (1 MiB)."""


class _BinaryWritable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def sha256_file(path: Path) -> str:
    """Return the lowercase hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


class HashingWriter:
    """Write-through wrapper that keeps the sha256 and byte count of everything written.

    Wraps a buffered binary file such as ``open(path, "wb")``; it never closes it.
    """

    def __init__(self, f: _BinaryWritable) -> None:
        self._f = f
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        """Write all of ``data`` to the wrapped file and account for it; return ``len(data)``."""
        written = self._f.write(data)
        if written != len(data):
            # Buffered files (open(path, "wb")) write everything or raise; a raw one may not.
            raise OSError(f"short write: {written} of {len(data)} bytes")
        self._digest.update(data)
        self._size += written
        return written

    @property
    def hexdigest(self) -> str:
        """Lowercase hex sha256 of the bytes written so far."""
        return self._digest.hexdigest()

    @property
    def size(self) -> int:
        """Number of bytes written so far."""
        return self._size
