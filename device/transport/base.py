"""The seams of the transport: where payload bytes come from, and who answers update checks.

A :class:`PayloadTransport` fetches the bytes of one payload from one place (a server's
FetchPayload stream, one HTTP URL, or a source of your own such as a LAN mirror) in one
attempt: it writes them through a :class:`FetchJob` from the job's offset on and returns at the
payload's end or when the source stopped early. Everything around that is the fetcher's
(:mod:`edgerec.device.transport.fetcher`): the ``.part`` file and its resume, the retry policy,
the order of sources and the failover between them, the rate cap, the deadline and the final
sha256. A transport only has to:

- start at ``job.offset`` and write bytes in order with ``job.write`` (which refuses bytes past
  the payload's size: IntegrityError), or call ``job.restart()`` to start again from 0;
- give up by ``job.deadline_at`` (``job.remaining_s()``) and never wait on a silent peer longer
  than ``job.idle_timeout_s``;
- raise :class:`SourceUnavailableError` for a failure that may pass (connection refused, cut,
  timeout, 5xx), :class:`UrlExpiredError` for a link that expired (HTTP 403/410),
  ``IntegrityError`` when the source sent bytes that cannot be the payload's (it is not asked
  again), and any other EdgerecError for a deliberate refusal that ends the download.

Bytes are bytes: every source serves the same payload, named by its sha256, so a download may
start on one and finish on another; the sha256 at the end decides.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from edgerec.errors import TransportError
from edgerec.v1 import update_pb2

if TYPE_CHECKING:
    from edgerec.device.transport.config import TransportConfig
    from edgerec.device.transport.part import PartFile

ProgressCallback = Callable[[int, int], None]  # (bytes so far, total bytes)


class SourceUnavailableError(TransportError):
    """One attempt at a payload source failed in a way that may pass: retried, or the next source is tried."""


class UrlExpiredError(SourceUnavailableError):
    """A payload URL answered 403 or 410: its signature expired (or it never was valid); ask for fresh ones."""


class FetchJob:
    """One attempt at one payload by one source: what to fetch, where the bytes go, and until when."""

    def __init__(
        self,
        model: str,
        payload: update_pb2.Payload,
        part: PartFile,
        source: str,
        deadline_at: float,
        config: TransportConfig,
    ) -> None:
        self.model = model
        self.payload = payload
        self.source = source
        self.deadline_at = deadline_at
        """``time.monotonic()`` time by which the whole download must be done."""
        self.config = config
        self.written = 0
        """Bytes this attempt wrote."""
        self._part = part

    @property
    def offset(self) -> int:
        """Bytes of the payload already written, in order: where the next byte goes."""
        return self._part.offset

    @property
    def size(self) -> int:
        """The payload's length from the checked plan: no source may write more."""
        return self.payload.size

    @property
    def idle_timeout_s(self) -> float:
        return self.config.idle_timeout_s

    def remaining_s(self) -> float:
        """Seconds left before the download's deadline (at least 0)."""
        return max(self.deadline_at - time.monotonic(), 0.0)

    def write(self, data: bytes) -> None:
        """Write the next bytes at :attr:`offset` (rate-capped, counted by source); IntegrityError past the size."""
        self._part.write(data, self.source)
        self.written += len(data)

    def restart(self) -> None:
        """Drop what was written and start again from byte 0 (a source that cannot resume answered whole)."""
        self._part.restart()


class PayloadTransport(ABC):
    """Fetches payload bytes from one place; see the module docstring for the contract."""

    name: str = "custom"
    """The source's kind, used to count bytes by source ("grpc", "http", or your own)."""

    @abstractmethod
    def fetch(self, job: FetchJob) -> None:
        """Write ``job.payload``'s bytes from ``job.offset`` on through ``job.write``, in one attempt."""

    def describe(self) -> str:
        """Where this source is, for logs (never a secret such as a URL's signature)."""
        return self.name


class UpdateChannel(Protocol):
    """The control plane as a sync sees it: update checks, and the servers' own payload sources."""

    device_id: str
    config: TransportConfig

    def check_update(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        """The server's plan for ``request``, retried by the transport's policy; a typed error when refused."""
        ...

    def payload_transports(self) -> Sequence[PayloadTransport]:
        """The servers' FetchPayload sources, the one to try first first (the fallback of every download)."""
        ...


class StallWatch:
    """Calls ``cancel`` once a transfer brings no byte for ``idle_s`` or runs past ``deadline_at``.

    For reads with no timeout of their own (gRPC's stream iterator) or only a per-read one (a socket):
    ``touch()`` after each piece received; ``stop()`` when done. ``fired`` says why it cancelled.
    """

    def __init__(self, cancel: Callable[[], object], idle_s: float, deadline_at: float | None = None) -> None:
        self._cancel = cancel
        self._idle_s = idle_s
        self._deadline_at = deadline_at
        self._last = time.monotonic()
        self._done = threading.Event()
        self.fired: str | None = None
        self._thread = threading.Thread(target=self._run, name="edgerec-stall-watch", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _wake_at(self) -> float:
        wake = self._last + self._idle_s
        return wake if self._deadline_at is None else min(wake, self._deadline_at)

    def _run(self) -> None:
        while not self._done.wait(max(self._wake_at() - time.monotonic(), 0.0)):
            now = time.monotonic()
            if now - self._last >= self._idle_s:
                self.fired = f"no byte for {self._idle_s:g} s"
            elif self._deadline_at is not None and now >= self._deadline_at:
                self.fired = "the download's deadline passed"
            else:
                continue
            with contextlib.suppress(OSError):  # the reader's own timeout may have closed the transfer first
                self._cancel()
            return
