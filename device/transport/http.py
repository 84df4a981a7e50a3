"""Payload bytes over HTTP(S) from where they are stored: a presigned object-store link, a bucket, a CDN.

The plan's URLs are unsigned (anyone on the path may rewrite them; :mod:`edgerec.device.plan`
bounds them: at most 4, each at most 2048 bytes, http or https only), so a URL only says where to
look; the bytes are checked like any other source's. One GET per attempt, with urllib3:

- ``Range: bytes=<offset>-<size - 1>``: never more than the payload's signed size is asked for,
  and nothing past it is read or written (the ``.part`` refuses it);
- a 206 answer must name that range in ``Content-Range`` (its start exactly, its end within the
  payload, its total the payload's size), else IntegrityError; a 200 answer is the whole payload
  (a server that ignores ranges): its ``Content-Length``, if given, must be the size, and the
  download starts again from byte 0;
- 403 and 410 mean the link expired (:class:`UrlExpiredError`: the sync asks CheckUpdate once
  more for fresh links); any other status, a redirect (never followed: a URL may not send the
  device elsewhere), a refused or cut connection, or a stall is :class:`SourceUnavailableError`
  (the next URL, then the servers' FetchPayload);
- connecting is bounded by ``http_connect_timeout_s``, each read by ``idle_timeout_s``, the whole
  answer by the download's deadline; the device's rate cap holds through the ``.part``.

Logs name a URL by scheme, host and path only: a presigned link's query is a credential.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from edgerec.device.transport.base import (
    FetchJob,
    PayloadTransport,
    SourceUnavailableError,
    StallWatch,
    UrlExpiredError,
)
from edgerec.device.transport.config import TransportConfig
from edgerec.errors import IntegrityError

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20}|\*)")
_EXPIRED = {403, 410}


class HttpClient:
    """The device's HTTP(S) client for payload URLs: one connection pool, no redirects, no retries of its own.

    The fetcher retries and picks the next source; urllib3 only makes the one request asked.
    HTTPS is verified against the system's CAs.
    """

    def __init__(self, config: TransportConfig) -> None:
        self.config = config
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=1, retries=False, block=False)

    def transport(self, url: str) -> HttpTransport:
        """The source at ``url`` (checked by the plan: http or https)."""
        return HttpTransport(url, self)

    def close(self) -> None:
        self._pool.clear()

    def get(self, url: str, headers: dict[str, str], connect_s: float, read_s: float) -> urllib3.BaseHTTPResponse:
        return self._pool.request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_s, read=read_s),
        )


class HttpTransport(PayloadTransport):
    """One payload URL, fetched with a Range GET from where the ``.part`` stands."""

    name = "http"

    def __init__(self, url: str, client: HttpClient) -> None:
        self.url = url
        self._client = client

    def describe(self) -> str:
        return redacted(self.url)

    def fetch(self, job: FetchJob) -> None:
        start, size = job.offset, job.size
        remaining = job.remaining_s()
        if remaining <= 0:
            raise SourceUnavailableError("the download's deadline passed")
        config = self._client.config
        headers = {"Range": f"bytes={start}-{size - 1}", "Accept-Encoding": "identity"}
        read_s = min(job.idle_timeout_s, remaining)
        try:
            response = self._client.get(
                self.url, headers, connect_s=min(config.http_connect_timeout_s, remaining), read_s=read_s
            )
        except HTTPError as exc:
            silent = isinstance(exc, ReadTimeoutError) and f"no answer within {read_s:g} s"
            raise SourceUnavailableError(silent or _reason(exc)) from exc
        complete = False
        try:
            end = self._check_answer(response, start, size, job)
            complete = self._read(response, job, end)
        finally:
            if not complete:
                response.close()  # unread bytes must not be left on a pooled connection
            response.release_conn()

    def _check_answer(self, response: urllib3.BaseHTTPResponse, start: int, size: int, job: FetchJob) -> int:
        """The offset one past the last byte this answer carries; raises unless it is the payload's range."""
        first, end = check_answer(response.status, response.headers, start, size)
        if first != start:
            log.info("%s ignores ranges: starting the payload over from byte 0", redacted(self.url))
            job.restart()
        return end

    def _read(self, response: urllib3.BaseHTTPResponse, job: FetchJob, end: int) -> bool:
        """Copy the answer's body into the ``.part`` up to ``end``; True when all of it came."""
        chunk = job.config.max_chunk_bytes
        watch = StallWatch(response.shutdown, job.idle_timeout_s, job.deadline_at)
        try:
            while job.offset < end:
                data = response.read1(min(chunk, end - job.offset))
                if not data:
                    break
                watch.touch()
                job.write(data)
        except (HTTPError, OSError) as exc:
            silent = isinstance(exc, ReadTimeoutError) and f"no byte for {job.idle_timeout_s:g} s"
            raise SourceUnavailableError(watch.fired or silent or _reason(exc)) from exc
        finally:
            watch.stop()
        if job.offset < end:
            raise SourceUnavailableError(watch.fired or "the answer ended early")
        return True


def check_answer(status: int, headers: Mapping[str, str], start: int, size: int) -> tuple[int, int]:
    """(first, end): the bytes ``[first, end)`` of a payload of ``size`` an answer to ``Range: bytes=start-``
    carries, ``first`` being ``start`` or, for a server that ignores ranges, 0.

    Raises UrlExpiredError (403, 410), IntegrityError (a range or length other than the one asked
    for) or SourceUnavailableError (any other status).
    """
    if status in _EXPIRED:
        raise UrlExpiredError(f"HTTP {status} (the link expired)")
    length = headers.get("Content-Length")
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
        if match is None:
            raise IntegrityError("a 206 answer without a valid Content-Range")
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != start or not first <= last < size or total not in ("*", str(size)):
            raise IntegrityError(f"sent bytes {first}-{last}/{total}, asked for {start}-{size - 1}/{size}")
        if length is not None and length.strip() != str(last - first + 1):
            raise IntegrityError(f"Content-Length {length[:20]} does not match its range {first}-{last}")
        return first, last + 1
    if status == 200:
        if length is not None and length.strip() != str(size):
            raise IntegrityError(f"a whole answer of {length[:20]} bytes, the payload has {size}")
        return 0, size
    raise SourceUnavailableError(f"HTTP {status}")


def redacted(url: str) -> str:
    """``url`` without its query, user info or fragment (a presigned link's query is a credential)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"[:200]


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request (urllib3 wraps the cause in a long message)."""
    cause = getattr(exc, "reason", None) or exc
    return f"{type(cause).__name__}: {cause}"[:300]
