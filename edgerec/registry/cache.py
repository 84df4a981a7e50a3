"""Verified local copies of content-addressed blobs, bounded in bytes.

A remote registry hands callers local files (ONNX runtimes and delta codecs want paths).
Each copy is named by its sha256 and enters the cache only after its size and sha256 were
checked while it was written, so a bucket that serves other bytes is caught at the door.

The bound is kept by evicting the least recently used copies after each insert, sparing
copies used within the last ``grace_s`` seconds: a caller holding a fresh path finds it.
So the cache may overshoot its bound while many large files are in use.

Callers asking for the same missing blob at once share one fetch: a fleet's first requests for
a new payload cost the bucket one download, not one each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edgerec.errors import IntegrityError
from edgerec.fsutil import atomic_output
from edgerec.registry.base import validate_sha256

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024**3
DEFAULT_GRACE_S = 600.0

Fetch = Callable[[], Iterable[bytes]]
"""Yields a blob's bytes in chunks (the cache stops it as soon as it yields too many)."""


class BlobCache:
    """A folder of verified blob copies: ``<root>/<sha[:2]>/<sha>``."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.grace_s = grace_s
        self.root.mkdir(parents=True, exist_ok=True)
        self._evicting = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self._fetching_guard = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        validate_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str, size: int, fetch: Fetch) -> Path:
        """A local copy of the blob of ``size`` bytes and ``sha256``, fetched and verified if missing."""
        path = self.path_for(sha256)
        if self._present(path, size):
            return path
        with self._fetching_guard:
            lock = self._fetching.setdefault(sha256, threading.Lock())
        try:
            with lock:
                if self._present(path, size):  # another caller fetched it meanwhile
                    return path
                self._fetch(path, sha256, size, fetch)
        finally:
            with self._fetching_guard:
                if not lock.locked():
                    self._fetching.pop(sha256, None)
        self.evict()
        return path

    @staticmethod
    def _present(path: Path, size: int) -> bool:
        """Whether ``path`` holds a copy of ``size`` bytes (marked recently used); one of another size is removed."""
        try:
            if path.stat().st_size == size:
                os.utime(path)
                return True
            path.unlink(missing_ok=True)  # a copy of another size is not this blob
        except FileNotFoundError:
            pass
        return False

    @staticmethod
    def _fetch(path: Path, sha256: str, size: int, fetch: Fetch) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as out:
            digest = hashlib.sha256()
            written = 0
            for chunk in fetch():
                written += len(chunk)
                if written > size:
                    raise IntegrityError(f"blob {sha256[:16]} is longer than the {size} bytes the manifest says")
                digest.update(chunk)
                out.write(chunk)
            if written != size:
                raise IntegrityError(f"blob {sha256[:16]} has {written} bytes, the manifest says {size}")
            if digest.hexdigest() != sha256:
                raise IntegrityError(f"blob {sha256[:16]} does not match its sha256 (got {digest.hexdigest()[:16]})")

    def evict(self) -> None:
        """Remove least recently used copies until the cache fits its bound (sparing fresh ones)."""
        with self._evicting:
            entries = []
            for sub in self.root.iterdir():
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub):
                    if entry.is_file() and not entry.name.startswith("."):
                        st = entry.stat()
                        entries.append((st.st_mtime, st.st_size, Path(entry.path)))
            total = sum(size for _, size, _ in entries)
            spare_after = time.time() - self.grace_s
            for mtime, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes or mtime > spare_after:
                    break
                path.unlink(missing_ok=True)
                total -= size
                log.debug("evicted %s (%d bytes) from the blob cache", path.name[:16], size)
