"""Payloads: full files and deltas, each made once, stored in the registry, shared by all devices."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from edgerec.codecs import make_patch
from edgerec.hashing import sha256_file
from edgerec.registry import ModelRegistry, PayloadRecord

log = logging.getLogger(__name__)

FULL = "full"
DELTA_CODECS = ("tensor", "bsdiff4", "zstd-patch-from")
# The generic diffs are slow and memory-hungry on big files (bsdiff4 keeps a suffix array many
# times the file's size; see docs/performance.md): above this size only the tensor codec
# competes with the full file.
DEFAULT_GENERIC_DIFF_MAX_BYTES = 64 * 1024 * 1024

LocalFile = Callable[[], Path]
"""Gives a local copy of a registry file, fetched only when a payload must actually be made."""


def version_file(registry: ModelRegistry, model: str, version: int, path: str) -> LocalFile:
    """A :data:`LocalFile` for ``path`` of a published version (``registry.local_file``, called late)."""
    return partial(registry.local_file, model, version, path)


class PayloadStore:
    """Makes and finds payloads; concurrent requests for one payload compute it once."""

    def __init__(
        self, registry: ModelRegistry, *, generic_diff_max_bytes: int = DEFAULT_GENERIC_DIFF_MAX_BYTES
    ) -> None:
        self.registry = registry
        self.generic_diff_max_bytes = generic_diff_max_bytes
        self._locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def can_make(self, codec: str, base_size: int, target_size: int) -> bool:
        """Whether this store is willing to make a ``codec`` delta between files of these sizes."""
        if codec not in DELTA_CODECS:
            return False
        return codec == "tensor" or max(base_size, target_size) <= self.generic_diff_max_bytes

    def find(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> PayloadRecord | None:
        """The payload turning the file ``base_sha256`` ("" for none) into ``target_sha256``, if made."""
        return self.registry.find_payload(model, codec, base_sha256, target_sha256)

    def ensure(
        self,
        model: str,
        codec: str,
        target: LocalFile,
        target_sha256: str,
        base: LocalFile | None = None,
        base_sha256: str = "",
    ) -> PayloadRecord:
        """The payload turning ``base`` (None for a full payload) into ``target``, made if missing.

        ``target`` and ``base`` are called for local files only when the payload has to be made.
        """
        key = (model, codec, base_sha256, target_sha256)
        found = self.find(*key)
        if found is not None:
            return found
        with self._lock_for(key):
            found = self.registry.find_payload(*key)
            if found is not None:
                return found
            return self._make(model, codec, target, target_sha256, base, base_sha256)

    def _lock_for(self, key: tuple[str, str, str, str]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _make(
        self, model: str, codec: str, target: LocalFile, target_sha256: str, base: LocalFile | None, base_sha256: str
    ) -> PayloadRecord:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.registry.scratch_dir()) as tmp:
            staged = Path(tmp) / "payload"
            make_patch(codec, base() if base is not None else None, target(), staged)
            payload_id = sha256_file(staged)
            record = PayloadRecord(
                payload_id=payload_id,
                model=model,
                codec=codec,
                base_sha256=base_sha256,
                target_sha256=target_sha256,
                size=staged.stat().st_size,
                make_seconds=time.perf_counter() - started,
            )
            self.registry.add_payload(record, staged)
        log.info(
            "made %s payload for %s (%s -> %s): %d bytes in %.2fs",
            codec,
            model,
            base_sha256[:12] or "none",
            target_sha256[:12],
            record.size,
            record.make_seconds,
        )
        return record
