"""A generic range diff: which stretches of a new byte range can be copied from the old file.

Server side. The old file is cut into aligned blocks indexed by a polynomial hash; a rolling
hash of every position of the new range (vectorised with numpy, modulo 2**64) finds blocks
that reappear anywhere, at any alignment. Each verified hit is extended forwards and a little
backwards; what no block covers is a literal. Only matches of at least one block are used,
so a copy is never longer to describe than the bytes it replaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

_RADIX: Final = 0x100000001B3  # odd, so invertible modulo 2**64
_RADIX_INVERSE: Final = pow(_RADIX, -1, 1 << 64)
_MIN_BLOCK: Final = 32
_MAX_BLOCKS: Final = 1 << 21
_WINDOW: Final = 1 << 20
_HASH_BATCH: Final = 1 << 16

U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Copy:
    """``length`` bytes at ``old_offset`` of the old file."""

    old_offset: int
    length: int


@dataclass(frozen=True)
class Literal:
    """The new bytes ``[start, end)``."""

    start: int
    end: int


def _powers(base: int, start: int, count: int) -> U64:
    """``base**(start + i) mod 2**64`` for i in ``range(count)``."""
    steps = np.full(count, base, dtype=np.uint64)
    steps[0] = pow(base, start, 1 << 64)
    return np.cumprod(steps, dtype=np.uint64)


class BlockIndex:
    """The aligned blocks of ``old``, findable by content."""

    def __init__(self, old: bytes) -> None:
        self.old = old
        block = _MIN_BLOCK
        while len(old) // block > _MAX_BLOCKS:
            block *= 2
        self.block = block
        count = len(old) // block
        weights = _powers(_RADIX, 0, block)[::-1].copy()  # R**(B-1-k) for byte k
        table = np.frombuffer(old, dtype=np.uint8, count=count * block).reshape(count, block)
        keys = np.empty(count, dtype=np.uint64)
        for start in range(0, count, _HASH_BATCH):
            batch = table[start : start + _HASH_BATCH].astype(np.uint64)
            keys[start : start + len(batch)] = (batch * weights).sum(axis=1, dtype=np.uint64)
        self.keys, first = np.unique(keys, return_index=True)
        self.offsets = first.astype(np.int64) * block

    def matches(self, new: bytes, start: int, end: int) -> Iterator[Copy | Literal]:
        """Cover ``new[start:end]`` with copies from the old file and literals, in order."""
        pos = start
        for first in range(start, end - self.block + 1, _WINDOW):
            if pos >= first + _WINDOW:
                continue
            positions, offsets = self._candidates(new, first, min(_WINDOW, end - self.block + 1 - first))
            i = int(np.searchsorted(positions, pos))
            while i < len(positions):
                candidate, old_offset = int(positions[i]), int(offsets[i])
                found = self._extend(new, candidate, old_offset, pos, end)
                if found is None:
                    i += 1
                    continue
                back, forward = found
                if candidate - back > pos:
                    yield Literal(pos, candidate - back)
                yield Copy(old_offset - back, back + forward)
                pos = candidate + forward
                i = int(np.searchsorted(positions, pos))
        if pos < end:
            yield Literal(pos, end)

    def _extend(self, new: bytes, at: int, old_at: int, floor: int, end: int) -> tuple[int, int] | None:
        """(bytes matching before, from) ``new[at]`` and ``old[old_at]``, or None if the block is a false hit."""
        if new[at : at + self.block] != self.old[old_at : old_at + self.block]:
            return None
        back = _common_suffix(new, at, self.old, old_at, min(at - floor, old_at, self.block))
        return back, _common_prefix(new, at, self.old, old_at, end - at)

    def _candidates(self, new: bytes, first: int, count: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Positions in ``new[first:first + count]`` whose window hashes like an old block, and its offset."""
        block = self.block
        if len(self.keys) == 0 or count <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        data = np.frombuffer(new, dtype=np.uint8, count=count + block - 1, offset=first).astype(np.uint64)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data * _powers(_RADIX_INVERSE, 0, len(data)), dtype=np.uint64, out=prefix[1:])
        hashes = (prefix[block : block + count] - prefix[:count]) * _powers(_RADIX, block - 1, count)
        slots = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        hits = np.flatnonzero(self.keys[slots] == hashes)
        return hits.astype(np.int64) + first, self.offsets[slots[hits]]


def _common_prefix(new: bytes, at: int, old: bytes, old_at: int, limit: int) -> int:
    """How many bytes from ``new[at:]`` and ``old[old_at:]`` agree, at most ``limit``."""
    limit = min(limit, len(old) - old_at, len(new) - at)
    done, step = 0, 256
    while done < limit:
        size = min(step, limit - done)
        a, b = new[at + done : at + done + size], old[old_at + done : old_at + done + size]
        if a != b:
            differs = np.frombuffer(a, dtype=np.uint8) != np.frombuffer(b, dtype=np.uint8)
            return done + int(np.argmax(differs))
        done += size
        step = min(step * 2, 1 << 20)
    return done


def _common_suffix(new: bytes, at: int, old: bytes, old_at: int, limit: int) -> int:
    """How many bytes just before ``new[at]`` and ``old[old_at]`` agree, at most ``limit``."""
    count = 0
    while count < limit and new[at - count - 1] == old[old_at - count - 1]:
        count += 1
    return count
