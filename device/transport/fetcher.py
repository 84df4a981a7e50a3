"""PayloadFetcher: one payload into its ``.part`` from every source that holds it, resumable, capped, bounded.

Sources are tried in this order: transports the application added (a LAN mirror, say), the plan's
URLs over HTTP, then each server's FetchPayload (the preferred server first). The ``.part`` is
shared: a download cut on one source goes on from the same byte on the next (bytes are bytes).

- A source that fails without delivering a byte is left for the next one: an added transport or
  a URL is dropped for this payload (a dead bucket is not asked again), a server is rotated to
  the back. Waits (``config.retry``) come once a whole round of servers failed, or after a cut
  that delivered bytes (the same source is asked again). Only failures of servers count toward
  the policy's tries in a row; every source counts toward the deadline.
- An expired URL (:class:`UrlExpiredError`) makes the fetcher ask ``refresh`` for fresh links,
  once per download (the sync asks CheckUpdate again); failing that, the next source.
- A source that sends bytes that cannot be the payload's (IntegrityError) is dropped; the bytes
  it wrote before were checked as they came (gRPC's CRC-32) or are checked by the final sha256.
- At the end the sha256 decides. A mismatch drops every added transport and URL that wrote to
  this ``.part`` and starts over from byte 0 on the rest; so does a resumed ``.part`` (bytes of
  an earlier try that turn out wrong). A mismatch of a server's own fresh bytes is an
  IntegrityError: the ``.part`` is removed.
- The whole download ends by ``config.download_deadline(size)`` (TransportError; the ``.part`` is
  kept to resume). A deliberate refusal (a typed error other than a transport one) ends it at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgerec.device.observer import SyncEvent, SyncPhase
from edgerec.device.transport.base import FetchJob, PayloadTransport, SourceUnavailableError, UrlExpiredError
from edgerec.device.transport.config import TransportConfig
from edgerec.device.transport.http import HttpClient
from edgerec.device.transport.part import PartFile, WriteCallback, complete_payload
from edgerec.device.transport.retry import RetryPolicy
from edgerec.errors import IntegrityError, TransportError
from edgerec.ratelimit import TokenBucket
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)

SourceEvents = Callable[[SyncEvent], None]


@dataclass(frozen=True)
class Download:
    """A finished payload file and the bytes this download fetched for it, by source ("grpc", "http", ...)."""

    path: Path
    bytes_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def fetched(self) -> int:
        return sum(self.bytes_by_source.values())


class PayloadFetcher:
    """Downloads payloads from added transports, the plan's URLs and the servers, in that order."""

    def __init__(
        self,
        config: TransportConfig,
        *,
        servers: Callable[[], Sequence[PayloadTransport]],
        transports: Sequence[PayloadTransport] = (),
        http: HttpClient | None = None,
    ) -> None:
        self.config = config
        self._servers = servers
        self._transports = list(transports)
        self._http = http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def download(
        self,
        model: str,
        payload: update_pb2.Payload,
        part_file: Path,
        *,
        on_write: WriteCallback | None = None,
        on_event: SourceEvents | None = None,
        refresh: Callable[[], Sequence[str]] | None = None,
    ) -> Download:
        """Fetch ``payload`` (a checked plan entry) into ``part_file``, resuming what it durably holds.

        ``on_write`` hears every write (bytes so far, size, source); ``on_event`` the DOWNLOADED and
        SOURCE_FAILED events; ``refresh`` gives fresh URLs for this payload when one expired.
        Returns the finished ``.payload`` file; see the module docstring for the rules.
        """
        finished = complete_payload(part_file, payload.size, payload.sha256)
        if finished is not None:
            return Download(finished)
        bucket = None
        if self.config.rate_bytes_per_s:
            # One cap for every source; a few chunks of burst, so it never slows a stream the server paces.
            bucket = TokenBucket(self.config.rate_bytes_per_s, burst=4 * self.config.chunk_limit())
        run = _Run(self, model, payload, on_event, refresh, self._http)
        with PartFile(part_file, payload.size, bucket=bucket, on_write=on_write) as part:
            try:
                run.fill(part)
            except IntegrityError:
                part.restart()  # bytes a refused source sent cannot be resumed from
                raise
            if on_event is not None:
                on_event(
                    SyncEvent(SyncPhase.DOWNLOADED, model, path=payload.path, done=part.offset, total=payload.size)
                )
            path = part.finish()
            return Download(path, dict(part.bytes_by_source))

    def sources(self, payload: update_pb2.Payload) -> tuple[list[PayloadTransport], list[PayloadTransport]]:
        """(sources tried first and dropped when they fail, the servers), in the order they are tried."""
        first = list(self._transports)
        if self._http is not None:
            first += [self._http.transport(url) for url in payload.urls]
        return first, list(self._servers())


class _Run:
    """The state of one payload's download: the sources left, the retry loop, who wrote which bytes."""

    def __init__(
        self,
        fetcher: PayloadFetcher,
        model: str,
        payload: update_pb2.Payload,
        on_event: SourceEvents | None,
        refresh: Callable[[], Sequence[str]] | None,
        http: HttpClient | None,
    ) -> None:
        self.http = http
        self.config = fetcher.config
        self.model = model
        self.payload = payload
        self.on_event = on_event
        self.refresh = refresh
        self.first, self.servers = fetcher.sources(payload)
        self.turn = 0  # index into servers of the next one to ask
        self.allowed = self.config.download_deadline(payload.size)
        self.retry: RetryPolicy = self.config.retry.start(self.allowed)
        self.deadline_at = time.monotonic() + self.allowed
        self.wrote: list[PayloadTransport] = []  # sources that wrote bytes into the .part since it was (re)started

    def fill(self, part: PartFile) -> None:
        """Bring ``part`` to the payload's size with bytes whose sha256 is the payload's."""
        resumed = part.resumed > 0
        while True:
            self._receive(part)
            digest = part.sha256()
            if digest == self.payload.sha256:
                return
            suspects = [s for s in self.wrote if s not in self.servers]
            if not suspects and not resumed:
                raise IntegrityError(
                    f"payload for {self.payload.path} has sha256 {digest[:16]}…, plan says {self.payload.sha256[:16]}…"
                )
            for source in suspects:
                self._drop(source, IntegrityError("it sent bytes whose sha256 is not the payload's"))
            if resumed:
                log.warning("resumed download of %s does not hash right: stale .part, starting over", self.payload.path)
            resumed = False
            part.restart()
            self.wrote.clear()

    def _receive(self, part: PartFile) -> None:
        """Fetch until the ``.part`` holds ``payload.size`` bytes (their sha256 not checked yet)."""
        payload = self.payload
        while part.offset < payload.size:
            if time.monotonic() >= self.deadline_at:
                raise TransportError(
                    f"download of {payload.path} missed its {self.allowed:.0f} s deadline "
                    f"at {part.offset} of {payload.size} bytes"
                )
            source, is_server = self._next_source()
            before = part.offset
            job = FetchJob(self.model, payload, part, source.name, self.deadline_at, self.config)
            try:
                try:
                    source.fetch(job)
                finally:
                    if job.written and source not in self.wrote:
                        self.wrote.append(source)
                if part.offset >= payload.size:
                    return
                failure = SourceUnavailableError("it stopped early")
            except UrlExpiredError as exc:
                self._drop(source, exc)
                self._refresh_urls()
                continue
            except IntegrityError as exc:
                self._drop(source, exc)
                if not self.first and not self.servers:
                    raise
                continue
            except SourceUnavailableError as exc:
                failure = exc
            progressed = part.offset > before
            if not is_server and not progressed:
                self._drop(source, failure)
                continue
            self._retry_after(source, is_server, progressed, f"{source.describe()}: {failure}", part)

    def _next_source(self) -> tuple[PayloadTransport, bool]:
        if self.first:
            return self.first[0], False
        if not self.servers:
            raise TransportError(f"no source is left for {self.payload.path}")
        return self.servers[self.turn % len(self.servers)], True

    def _retry_after(
        self, source: PayloadTransport, is_server: bool, progressed: bool, reason: str, part: PartFile
    ) -> None:
        """Account one failed attempt and wait if the policy says so (TransportError when it says stop)."""
        payload = self.payload
        what = f"download of {payload.path}"
        self.retry = self.retry.next(reason, what, progressed=progressed)
        if not progressed and is_server:
            self.turn += 1
            self._event(SyncPhase.SOURCE_FAILED, source, reason)
            if self.turn % len(self.servers):
                return  # the next server is tried at once; waits come once a round failed
        log.warning(
            "download of %s interrupted at %d of %d bytes (%s); resuming in %.2fs",
            payload.path,
            part.offset,
            payload.size,
            reason,
            self.retry.delay_s,
        )
        remaining = max(self.deadline_at - time.monotonic(), 0.0)
        time.sleep(min(self.retry.delay_s, remaining))

    def _refresh_urls(self) -> None:
        """Fresh links for this payload, once (the sync asks CheckUpdate again), tried before the servers."""
        refresh, self.refresh = self.refresh, None
        http = self.http
        if refresh is None or http is None:
            return
        try:
            urls = list(refresh())
        except TransportError as exc:
            log.warning("asking for fresh links to %s failed (%s): going on with the servers", self.payload.path, exc)
            return
        self.first[:0] = [http.transport(url) for url in urls]

    def _drop(self, source: PayloadTransport, error: Exception) -> None:
        """Ask ``source`` no more for this payload."""
        log.warning("%s failed for %s (%s: %s)", source.describe(), self.payload.path, type(error).__name__, error)
        if source in self.first:
            self.first.remove(source)
        elif source in self.servers:
            self.servers.remove(source)
        self._event(SyncPhase.SOURCE_FAILED, source, f"{type(error).__name__}: {error}")

    def _event(self, phase: SyncPhase, source: PayloadTransport, detail: str) -> None:
        if self.on_event is not None:
            self.on_event(
                SyncEvent(
                    phase,
                    self.model,
                    path=self.payload.path,
                    total=self.payload.size,
                    source=source.name,
                    detail=detail,
                )
            )
