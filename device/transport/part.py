"""The ``.part`` file a payload is received into: bytes in order from 0, resumed from its durable length.

``downloads/<id>.part`` (see :mod:`edgerec.device.storage`) holds the first ``offset`` bytes of
the payload, whichever source sent them. Its length is trusted only once fsync made it durable,
and only up to the payload's size (a longer one is stale and starts over). Every write lands at
its offset (a retry never appends a chunk twice), after the device's rate cap let it pass, and
never past the payload's size. A complete and checked ``.part`` is renamed to ``<id>.payload``.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from edgerec.errors import IntegrityError, TransportError
from edgerec.fsutil import fsync_dir, make_private_dirs, open_private
from edgerec.hashing import sha256_file
from edgerec.ratelimit import TokenBucket

log = logging.getLogger(__name__)

# (bytes so far, payload size, source of the bytes just written)
WriteCallback = Callable[[int, int, str], None]


class PartFile:
    """An open ``.part`` of a ``size``-byte payload; use as a context manager."""

    def __init__(
        self, path: Path, size: int, *, bucket: TokenBucket | None = None, on_write: WriteCallback | None = None
    ) -> None:
        self.path = path
        self.size = size
        self._bucket = bucket
        self._on_write = on_write
        self.offset = 0
        self.resumed = 0
        """Bytes that were already on disk when it was opened (kept from an earlier try or process)."""
        self.bytes_by_source: dict[str, int] = {}
        self._fd = -1

    def __enter__(self) -> PartFile:
        make_private_dirs(self.path.parent)
        self._fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            os.fsync(self._fd)  # what is on disk now is durable: its length can be trusted
            held = os.fstat(self._fd).st_size
            if held > self.size:
                log.warning(
                    "%s holds %d bytes, more than the payload's %d: stale, starting over",
                    self.path.name,
                    held,
                    self.size,
                )
                held = 0
            os.ftruncate(self._fd, held)
        except BaseException:
            os.close(self._fd)
            raise
        self.offset = self.resumed = held
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._open_fd(), -1
        empty = os.fstat(fd).st_size == 0
        os.close(fd)
        if empty:  # nothing to resume: leave no empty file behind
            self.path.unlink(missing_ok=True)

    def write(self, data: bytes, source: str) -> None:
        """Write ``data`` at :attr:`offset` once the rate cap lets it pass; IntegrityError past the size."""
        if len(data) > self.size - self.offset:
            raise IntegrityError(f"{source} sent more bytes than the payload's {self.size} (at offset {self.offset})")
        if self._bucket is not None:
            self._bucket.consume(len(data))
        view, offset = memoryview(data), self.offset
        while view:
            written = os.pwrite(self._open_fd(), view, offset)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
            offset += written
        self.offset = offset
        counts = self.bytes_by_source
        counts[source] = counts.get(source, 0) + len(data)
        if self._on_write is not None:
            self._on_write(offset, self.size, source)

    def restart(self) -> None:
        """Drop every byte written so far: the next write goes to offset 0."""
        os.ftruncate(self._open_fd(), 0)
        self.offset = self.resumed = 0

    def sha256(self) -> str:
        """The sha256 of the bytes written, once they are durable."""
        os.fsync(self._open_fd())
        return sha256_file(self.path)

    def _open_fd(self) -> int:
        # A transport thread that outlives its deadline may still call in after the file was closed;
        # its descriptor number may by then belong to another file (a database), which it must never touch.
        if self._fd < 0:
            raise TransportError(f"{self.path.name} is closed: late write refused")
        return self._fd

    def finish(self) -> Path:
        """Rename the complete, checked ``.part`` to its ``.payload`` name (durably); returns that path."""
        finished = finished_path(self.path)
        os.replace(self.path, finished)
        fsync_dir(finished.parent)
        return finished


def finished_path(part: Path) -> Path:
    """Where the payload received into ``part`` lies once complete: ``<id>.payload``."""
    return part.with_suffix(".payload")


def complete_payload(part: Path, size: int, sha256: str) -> Path | None:
    """The finished ``.payload`` of ``part`` if it is a regular file with ``size`` bytes and ``sha256``.

    A finished file that does not match is removed (it is fetched again); a link is never read.
    """
    finished = finished_path(part)
    try:
        regular = finished.is_file() and not finished.is_symlink()
    except OSError:
        regular = False
    if not regular:
        return None
    if finished.stat().st_size == size and sha256_file(finished) == sha256:
        return finished
    finished.unlink()
    return None
