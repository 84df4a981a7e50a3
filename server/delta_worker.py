"""Makes missing deltas in the background, so that no CheckUpdate waits for one.

The planner answers with the best payload that exists now and asks :class:`DeltaWorker` for the delta
it lacked; a device that asks later gets it. The work is bounded: a few worker threads (each lowers
its own CPU priority where the OS allows), a queue of at most ``max_pending`` distinct jobs (a job
already queued or running is not queued twice; a full queue drops the request with a log line), and
the payload store's size bound on what a generic diff may take (``PayloadStore.can_make``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass

from edgerec.errors import ConfigError
from edgerec.server.payloads import LocalFile, PayloadStore
from edgerec.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_dropped = ThrottledLog(log)

DEFAULT_DELTA_WORKERS = 1
DEFAULT_MAX_PENDING_DELTAS = 64
# Background diffs yield the CPU to the threads answering devices.
_NICENESS = 10


@dataclass(frozen=True)
class DeltaJob:
    """One delta to make: ``base`` turned into ``target`` with ``codec``."""

    model: str
    codec: str
    target: LocalFile
    target_sha256: str
    base: LocalFile
    base_sha256: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.codec, self.base_sha256, self.target_sha256)


class DeltaWorker:
    """A bounded, deduplicated background queue of deltas for ``payloads`` to make."""

    def __init__(
        self,
        payloads: PayloadStore,
        *,
        workers: int = DEFAULT_DELTA_WORKERS,
        max_pending: int = DEFAULT_MAX_PENDING_DELTAS,
    ) -> None:
        if workers < 1 or max_pending < 1:
            raise ConfigError(f"need delta workers >= 1 and max pending deltas >= 1, got {workers}, {max_pending}")
        self.payloads = payloads
        self.max_pending = max_pending
        self._queue: queue.Queue[DeltaJob | None] = queue.Queue()
        self._keys: set[tuple[str, str, str, str]] = set()  # queued or running
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Jobs ended (made or failed): a plan made before this moved may lack a delta made since.
        self.finished = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"edgerec-delta-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: DeltaJob) -> bool:
        """Queue ``job`` unless it is queued or running already; False when the queue is full (dropped)."""
        with self._lock:
            if job.key in self._keys:
                return True
            if len(self._keys) >= self.max_pending:
                _dropped.warning(
                    "delta queue full (%d jobs): not making the %s delta %s -> %s of %s now",
                    self.max_pending,
                    job.codec,
                    job.base_sha256[:12],
                    job.target_sha256[:12],
                    job.model,
                )
                return False
            self._keys.add(job.key)
        self._queue.put(job)
        return True

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._keys)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running; False if ``timeout`` seconds passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._keys, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers after the job each is running (queued jobs are dropped)."""
        with self._lock:
            self._keys.clear()
            self._idle.notify_all()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        _lower_priority()
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self.payloads.ensure(job.model, job.codec, job.target, job.target_sha256, job.base, job.base_sha256)
            except Exception:  # one bad job must not stop the worker; the device keeps the full payload
                log.exception(
                    "cannot make the %s delta %s -> %s of %s",
                    job.codec,
                    job.base_sha256[:12],
                    job.target_sha256[:12],
                    job.model,
                )
            finally:
                with self._idle:
                    self._keys.discard(job.key)
                    self.finished += 1
                    self._idle.notify_all()


def _lower_priority() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread); elsewhere, nothing."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICENESS)
