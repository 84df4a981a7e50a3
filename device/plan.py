"""The payload plan of an update, checked against signed data before a byte is fetched.

A CheckUpdate answer carries a signed manifest and, beside it, the server's plan: for each file
of the chosen artifact, how to build it (codec, payload id and size, base file). Nobody signed
the plan: anyone on the path can rewrite it. So every field is checked against what is signed
(the offered version's manifest, and the active version's verified manifest for base files)
before it names a file, a size or a download:

- the plan has exactly one entry per file of the artifact, with the manifest's size and sha256;
- a payload id is 64 lowercase hex digits and equals the payload's sha256 (it names a file);
- the codec is one this device offered, or "full" (every device applies it: the server falls back to
  it whenever no delta is smaller or possible), or "copy" (nothing to download);
- a payload is no larger than its codec makes for the signed target size
  (:func:`edgerec.codecs.max_payload_size`), and at least a container's header and trailer;
- a base file is a file of the active, verified artifact, with that file's signed sha256;
  "copy" takes a base whose signed sha256 and size are the target's; "full" names no base;
- a payload lists at most ``MAX_URLS`` URLs (a copy none), each at most ``MAX_URL_BYTES`` bytes
  of printable ASCII, an absolute ``http`` or ``https`` URL with a host and no user info (a
  URL only says where the same bytes may be fetched; they are checked like any other source's).

Any violation is a ManifestError and nothing has been written.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from urllib.parse import urlsplit

from edgerec.codecs import get_codec, max_payload_size
from edgerec.codecs.container import HEADER_SIZE, TRAILER_SIZE
from edgerec.device.storage import InstalledVersion
from edgerec.errors import ManifestError
from edgerec.manifest import Artifact, ArtifactFile
from edgerec.v1 import update_pb2

COPY = "copy"
"""The plan's codec for a file the device already has: copied from its base, nothing downloaded."""
FULL = "full"
"""The codec every device accepts, listed in its request or not."""
MIN_PAYLOAD_SIZE = HEADER_SIZE + TRAILER_SIZE
MAX_URLS = 4
"""URLs a plan may give for one payload (Payload.urls)."""
MAX_URL_BYTES = 2048
"""Longest URL a plan may give."""
URL_SCHEMES = ("http", "https")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_plan(
    payloads: Sequence[update_pb2.Payload],
    artifact: Artifact,
    current: InstalledVersion | None,
    offered_codecs: Collection[str],
) -> list[update_pb2.Payload]:
    """The plan's payloads in the artifact's file order, each checked; ManifestError at the first fault.

    ``artifact`` is the offered version's artifact from its verified manifest; ``current`` the
    active version whose files were verified (None when the device has none it can build on).
    """
    planned: dict[str, update_pb2.Payload] = {}
    for payload in payloads:
        if payload.path in planned:
            raise ManifestError(f"payload plan lists {payload.path[:200]!r} twice")
        planned[payload.path] = payload
    targets = {f.path: f for f in artifact.files}
    unknown = sorted(planned.keys() - targets.keys())
    if unknown:
        raise ManifestError(f"payload plan lists files the manifest does not: {unknown[0][:200]!r}")
    checked = []
    for target in artifact.files:
        entry = planned.get(target.path)
        if entry is None or entry.target_sha256 != target.sha256 or entry.target_size != target.size:
            raise ManifestError(f"payload plan does not match the manifest for {target.path}")
        _check_payload(entry, target, current, offered_codecs)
        checked.append(entry)
    return checked


def _check_payload(
    payload: update_pb2.Payload, target: ArtifactFile, current: InstalledVersion | None, offered: Collection[str]
) -> None:
    what = f"plan for {target.path}"
    _check_urls(payload, what)
    if payload.codec == COPY:
        if payload.payload_id or payload.sha256 or payload.size:
            raise ManifestError(f"{what}: a copy downloads nothing, yet names a payload")
        needs_base = True
    else:
        if payload.codec != FULL and payload.codec not in offered:
            raise ManifestError(f"{what}: codec {payload.codec[:40]!r} was not offered ({', '.join(offered)})")
        if not _HEX_DIGEST.fullmatch(payload.payload_id) or payload.sha256 != payload.payload_id:
            raise ManifestError(
                f"{what}: payload id {payload.payload_id[:80]!r} is not the 64-hex sha256 of the payload"
            )
        limit = max_payload_size(payload.codec, target.size)
        if not MIN_PAYLOAD_SIZE <= payload.size <= limit:
            raise ManifestError(
                f"{what}: a {payload.size}-byte payload; a {payload.codec} payload of a {target.size}-byte file "
                f"has {MIN_PAYLOAD_SIZE} to {limit} bytes"
            )
        needs_base = get_codec(payload.codec).needs_base
    if not needs_base:
        if payload.base_path or payload.base_sha256:
            raise ManifestError(f"{what}: a {payload.codec} payload names no base file")
        return
    if current is None:
        raise ManifestError(f"{what} needs a base file this device does not have")
    base = _base_file(current, payload.base_path)
    if base is None:
        raise ManifestError(
            f"{what} names base {payload.base_path[:200]!r}, not a file of the active version {current.version}"
        )
    if payload.base_sha256 != base.sha256:
        raise ManifestError(f"{what}: base {base.path} has sha256 {base.sha256[:16]}…, the plan says another")
    if payload.codec == COPY and (base.sha256 != target.sha256 or base.size != target.size):
        raise ManifestError(f"{what}: copies {base.path}, whose signed bytes are not the target's")


def _check_urls(payload: update_pb2.Payload, what: str) -> None:
    urls = payload.urls
    if len(urls) > (0 if payload.codec == COPY else MAX_URLS):
        raise ManifestError(f"{what}: {len(urls)} URLs, at most {MAX_URLS} (none for a copy)")
    for url in urls:
        if len(url.encode()) > MAX_URL_BYTES or not all("!" <= c <= "~" for c in url):
            raise ManifestError(f"{what}: a URL of more than {MAX_URL_BYTES} bytes or not printable ASCII")
        try:
            parts = urlsplit(url)
            host, _ = parts.hostname, parts.port
        except ValueError as exc:
            raise ManifestError(f"{what}: a URL that does not parse ({exc})") from None
        if parts.scheme not in URL_SCHEMES or not host or "@" in parts.netloc:
            raise ManifestError(f"{what}: URL {url[:80]!r} is not an http(s) URL with a host and no user info")


def _base_file(current: InstalledVersion, path: str) -> ArtifactFile | None:
    return next((f for f in current.artifact.files if f.path == path), None)
