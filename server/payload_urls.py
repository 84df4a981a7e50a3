"""Where a device can fetch payload bytes over HTTP: the URLs a plan lists beside FetchPayload.

A registry in an object store hands out presigned, short-lived links to its blobs; plain base URLs
(a public bucket, or a CDN in front of one) add ``<base>/<object key>`` links. A local folder
registry has neither: its devices use FetchPayload. URLs are unsigned hints (the device checks the
bytes against the signed sha256), bounded as update.proto says.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from edgerec.errors import ConfigError
from edgerec.registry import ModelRegistry
from edgerec.server.memo import ExpiringMemo
from edgerec.trust import MAX_PAYLOAD_URL_BYTES, MAX_PAYLOAD_URLS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_URL_TTL_S", "PayloadUrls", "check_base_urls"]

DEFAULT_URL_TTL_S = 900
"""How long a presigned payload link lives: long enough to fetch a big file, short enough to leak little."""
REUSE_FRACTION = 0.1
"""A presigned link is handed out again for this part of its life: signing one per plan would cost more CPU
than the rest of the plan, and every link a device gets still has at least 90% of its life ahead."""
MAX_CACHED_LINKS = 4096


@runtime_checkable
class KeyedBlobs(Protocol):
    """A registry whose payloads are objects under a key a plain base URL can name."""

    def blob_key(self, sha256: str) -> str: ...


def check_base_urls(base_urls: Sequence[str]) -> tuple[str, ...]:
    """The base URLs without trailing '/', if each is http(s) and a plan can list them all; else ConfigError."""
    if len(base_urls) > MAX_PAYLOAD_URLS:
        raise ConfigError(f"at most {MAX_PAYLOAD_URLS} payload base URLs, got {len(base_urls)}")
    checked = []
    for base in base_urls:
        if not base.startswith(("https://", "http://")) or any(c.isspace() for c in base):
            raise ConfigError(f"a payload base URL must be http(s):// with no spaces, got {base[:100]!r}")
        if len(base.encode()) > MAX_PAYLOAD_URL_BYTES // 2:
            raise ConfigError(f"payload base URL longer than {MAX_PAYLOAD_URL_BYTES // 2} bytes: {base[:100]!r}...")
        checked.append(base.rstrip("/"))
    return tuple(checked)


class PayloadUrls:
    """Lists the HTTP sources of a payload: plain base URLs first, then a presigned link (if any).

    The registry signs a payload's link once per ``REUSE_FRACTION`` of ``ttl_s``; meanwhile plans
    reuse it (thread-safe; at most MAX_CACHED_LINKS links are kept).
    """

    def __init__(self, registry: ModelRegistry, *, ttl_s: int = DEFAULT_URL_TTL_S, base_urls: Sequence[str] = ()):
        self.registry = registry
        self.ttl_s = ttl_s
        self.base_urls = check_base_urls(base_urls)
        self._links: ExpiringMemo[tuple[str, str], str | None] = ExpiringMemo(ttl_s * REUSE_FRACTION, MAX_CACHED_LINKS)

    def presigned(self, model: str, payload_id: str) -> str | None:
        """The registry's presigned link to the payload (None: it has none), signed anew once it is stale."""
        return self._links.get((model, payload_id), lambda: self.registry.payload_url(model, payload_id, self.ttl_s))

    def urls(self, model: str, payload_id: str) -> list[str]:
        """At most MAX_PAYLOAD_URLS URLs of at most MAX_PAYLOAD_URL_BYTES each (longer ones are left out)."""
        found: list[str] = []
        if self.base_urls and isinstance(self.registry, KeyedBlobs):
            key = self.registry.blob_key(payload_id)
            found.extend(f"{base}/{key}" for base in self.base_urls)
        presigned = self.presigned(model, payload_id)
        if presigned is not None:
            found.append(presigned)
        fitting = [url for url in found if len(url.encode()) <= MAX_PAYLOAD_URL_BYTES]
        if len(fitting) < len(found):
            log.warning(
                "left out %d payload URL(s) longer than %d bytes", len(found) - len(fitting), MAX_PAYLOAD_URL_BYTES
            )
        return fitting[:MAX_PAYLOAD_URLS]
