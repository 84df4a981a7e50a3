"""ActiveModel: the installed version predict runs, and the rollback when it keeps failing.

It loads the store's active version on first use (every file's sha256 verified first), notices
when another process switched it (the state file's stamp, looked at every
``STATE_CHECK_INTERVAL_S``), and after ``rollback_after`` model faults in a row (runtime errors,
non-finite scores; never a request the model refuses) rolls back to the previous version and
holds the failed one back: the next sync does not install it again until an operator clears the
hold or a newer version comes (:meth:`ModelStore.rollback`).

The predict path reads :attr:`ActiveModel.loaded` and :attr:`ActiveModel.recheck_at` directly
(attribute reads, no call) and calls :meth:`ActiveModel.current` only when either says so.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edgerec.device.local_model import LocalModel
from edgerec.device.ort_cache import prune_ort_cache
from edgerec.device.storage import ModelStore
from edgerec.errors import EdgerecError

log = logging.getLogger(__name__)

# How often predict checks whether another process switched the active version (seconds).
STATE_CHECK_INTERVAL_S = 0.05
NO_LOCAL_MODEL = "no local model installed"


class ActiveModel:
    """The loaded active version of one store, reloaded on a switch, rolled back after repeated faults."""

    def __init__(self, store: ModelStore, *, threads: int, ort_cache_dir: Path | None, rollback_after: int) -> None:
        self.store = store
        self.threads = threads
        # onnxruntime artifacts: the EXTENDED-optimized model is saved here once per artifact digest.
        self.ort_cache_dir = ort_cache_dir
        self.rollback_after = rollback_after
        self.loaded: LocalModel | None = None
        """The loaded active version (None: not loaded yet, none installed, or unusable)."""
        self.recheck_at = 0.0
        """perf_counter time after which predict looks at the store's state again (another process may sync)."""
        self.loads = 0
        """Load attempts so far: a changed count tells predict that it waited for one."""
        self.installed_version = 0
        """The active version at the last load attempt (0: none or unreadable)."""
        self.faults_in_a_row = 0
        """Model faults since the last good local answer (predict resets it)."""
        self.rollbacks: list[tuple[int, int]] = []
        """(from version, to version) of every rollback this process made, oldest first."""
        self._failure: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.store.model

    def current(self) -> tuple[LocalModel | None, str | None]:
        """The loaded active version, loading and verifying it on first use; else why not.

        The store's state file is only re-read when it changed on disk (another process may sync);
        predict looks at it at most every ``STATE_CHECK_INTERVAL_S`` (a stat costs as much as the rest
        of the hot path). After a load the optimized-model cache is pruned (outside the lock: predict
        never waits for the disk).
        """
        loads = self.loads
        local, failure = self._load()
        if local is not None and self.loads != loads:
            self.prune_ort_cache()
        return local, failure

    def _load(self) -> tuple[LocalModel | None, str | None]:
        failure = self._failure
        if failure is not None and time.perf_counter() < self.recheck_at:
            # Known unusable: while the server answers instead, predict must not pay a stat per call.
            return None, failure
        with self._lock:
            stamp = self.store.state_stamp()
            self.recheck_at = time.perf_counter() + STATE_CHECK_INTERVAL_S
            if stamp == self._stamp and (self.loaded is not None or self._failure is not None):
                return self.loaded, self._failure
            self._stamp = stamp
            self.loaded, self._failure = None, None
            self.loads += 1
            self.installed_version = 0
            try:
                installed = self.store.current()
                if installed is None:
                    self._failure = NO_LOCAL_MODEL
                    return None, self._failure
                self.installed_version = installed.version
                self.store.verify(installed)
                self.loaded = LocalModel(installed, self.threads, self.ort_cache_dir)
                log.info("loaded %s version %d: %s", self.model, installed.version, self.loaded.loaded.describe())
                return self.loaded, None
            except EdgerecError as exc:
                self._failure = f"local model unusable: {exc}"
                log.warning("%s", self._failure)
                return None, self._failure

    def reload(self) -> None:
        """Forget the loaded model so the next predict loads and verifies it again."""
        with self._lock:
            self.loaded, self._failure, self._stamp = None, None, None
            self.recheck_at = 0.0

    def record_fault(self, version: int) -> bool:
        """A fault of ``version`` (a runtime error or non-finite scores); True when it rolled back.

        After ``rollback_after`` in a row, the previous version (if any) becomes active again and
        this one is held back.
        """
        self.faults_in_a_row += 1
        if self.faults_in_a_row < self.rollback_after or self.store.previous() is None:
            return False
        restored = self.store.rollback()
        self.faults_in_a_row = 0
        self.rollbacks.append((version, restored.version))
        log.error(
            "%s version %d failed %d predictions in a row: rolled back to version %d",
            self.model,
            version,
            self.rollback_after,
            restored.version,
        )
        self.reload()
        return True

    @property
    def active_version(self) -> int | None:
        """The installed active version, or None (also when a crash left it unreadable)."""
        try:
            current = self.store.current()
        except EdgerecError:
            return None
        return current.version if current else None

    @property
    def held_back_version(self) -> int | None:
        """The version this device rolled back from and does not install again until :meth:`clear_rollback`."""
        try:
            return self.store.held_back()
        except (EdgerecError, OSError):
            return None

    def clear_rollback(self) -> int | None:
        """Let the next sync install again the version a rollback held back; returns that version (None: none)."""
        return self.store.clear_rollback()

    def prune_ort_cache(self) -> None:
        if self.ort_cache_dir is not None:
            prune_ort_cache(self.store.root.parent, self.ort_cache_dir)
