"""The S3 registry: one bucket shared by every server replica, no shared disk, no coordinator.

Layout under ``s3://BUCKET/PREFIX``::

    changes.json                                        rewritten after every write; its ETag is the change stamp
    blobs/sha256/<sha256>                               artifact files and payloads, named by their sha256
    models/<model>/versions/<0000000007>.json           version records (the signed manifest): the commit point
    models/<model>/payloads/by-id/<payload_id>.json     payload records, found by id
    models/<model>/payloads/by-use/<codec>/<base|none>/<target>.json   the same records, found by what they do
    documents/<key>                                     small documents changed by compare-and-swap (policy, reports)

Blobs are uploaded before anything refers to them. A version is committed by ONE conditional
PUT (``If-None-Match: *``) of its record: the first publisher to create ``versions/N`` owns N,
a loser re-signs its manifest with the next free number and tries again. A version therefore
exists exactly when its record does, and then every blob it names is already in the bucket.
Records are never changed, so replicas cache them for good. Payload records are created the same
way; two replicas making the same payload at once is harmless (the loser's record stays findable
by id, and both point at content-addressed bytes).

The bucket is trusted no further than the manifest it holds: every read is bounded, records are
checked against their keys, and every blob copied into the local cache is checked against the
size and sha256 the manifest lists (``IntegrityError`` otherwise).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
import boto3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf.message import DecodeError

from edgerec.errors import (
    IntegrityError,
    InvalidInputError,
    ManifestError,
    ModelNotFoundError,
    PayloadNotFoundError,
    RegistryConflictError,
    RegistryUnavailableError,
    VersionConflictError,
    VersionNotFoundError,
)
from edgerec.hashing import sha256_file
from edgerec.manifest import (
    MAX_MANIFEST_BYTES,
    PARTIAL_BASE,
    PARTIAL_OF,
    Manifest,
    SignedManifest,
    now_rfc3339,
    parse_manifest,
    validate_model_name,
)
from edgerec.registry.base import (
    MAX_DOCUMENT_BYTES,
    MAX_VERSION,
    Document,
    ManifestFactory,
    PayloadRecord,
    VersionFile,
    check_new_manifest,
    check_payload_record,
    validate_document_key,
    validate_payload_use,
    validate_sha256,
)
from edgerec.registry.cache import DEFAULT_MAX_BYTES, BlobCache

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2RequestTypeDef, PutObjectRequestTypeDef

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
MAX_SIGNED_MANIFEST_BYTES = MAX_MANIFEST_BYTES + 64 * 1024
# base64 grows the manifest by a third; the rest of the record is a few short fields.
MAX_VERSION_RECORD_BYTES = MAX_SIGNED_MANIFEST_BYTES * 4 // 3 + 4096
MAX_PAYLOAD_RECORD_BYTES = 4096
MAX_PRESIGN_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
DEFAULT_LISTING_TTL_S = 1.0
DEFAULT_MAX_COMMIT_ATTEMPTS = 200
DEFAULT_MANIFEST_CACHE_BYTES = 64 * 1024 * 1024
PAYLOAD_CACHE_ENTRIES = 50_000
_CHUNK = 1024 * 1024
_MAX_LIST_PAGES = 10_000
_PARALLEL_READS = 16
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_NAME = re.compile(r"^(\d{10})\.json$")
_PAYLOAD_FIELDS = {f.name for f in fields(PayloadRecord)}


def make_s3_client(endpoint_url: str | None = None) -> S3Client:
    """A boto3 S3 client for ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else AWS).

    Credentials and region come the standard boto3 ways; without a region, us-east-1 signs.
    Custom endpoints get path-style addressing (most S3-compatible servers need it).
    """
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.session.Session()
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=64,
    )
    return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgerec/registry`` (``~/.cache/edgerec/registry``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgerec" / "registry"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix without slashes at its ends); ValueError if malformed."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url[:100]!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"invalid bucket name {bucket[:100]!r} in {url[:200]!r}")
    if prefix and not all(_PREFIX_SEGMENT.match(part) for part in prefix.split("/")):
        raise ValueError(f"invalid prefix {prefix[:200]!r}: use '/'-separated names of letters, digits, '.', '_', '-'")
    return bucket, prefix


@dataclass(frozen=True)
class VersionRecord:
    """A committed version record, checked against its key: the signed manifest and who committed it."""

    signed: SignedManifest
    manifest: Manifest
    publish_id: str
    size: int

    @property
    def partial(self) -> tuple[int | None, int | None]:
        of = self.manifest.annotations.get(PARTIAL_OF)
        base = self.manifest.annotations.get(PARTIAL_BASE)
        return (int(of) if of else None, int(base) if base else None)


@dataclass
class _Listing:
    """The version numbers of one model seen so far, and when the bucket was last asked."""

    numbers: set[int] = field(default_factory=set)
    last_key: str = ""
    checked_at: float = -float("inf")
    listing: bool = False  # a thread is asking the bucket now


class _Lru:
    """Least-recently-used values bounded by their total weight (bytes, or 1 each to count entries)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped


class S3Registry:
    """A registry in an S3-compatible bucket; safe to share between threads, processes and hosts."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        endpoint_url: str | None = None,
        cache_dir: Path | None = None,
        cache_max_bytes: int = DEFAULT_MAX_BYTES,
        listing_ttl_s: float = DEFAULT_LISTING_TTL_S,
        max_commit_attempts: int = DEFAULT_MAX_COMMIT_ATTEMPTS,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(f"s3://{bucket}/{prefix}")
        self.client = client if client is not None else make_s3_client(endpoint_url)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.blobs = BlobCache(self.cache_dir / "blobs", max_bytes=cache_max_bytes)
        # How old a model's version listing may be before the bucket is asked again: the delay
        # before another replica's publish shows here (this process sees its own at once).
        self.listing_ttl_s = listing_ttl_s
        self.max_commit_attempts = max_commit_attempts
        self.publisher = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._records = _Lru(DEFAULT_MANIFEST_CACHE_BYTES)
        # (model, version) -> (partial_of, partial_base), or None for a record that cannot be read.
        self._partials: dict[tuple[str, int], tuple[int | None, int | None] | None] = {}
        # Payload records never change either; these count entries (each weighs 1).
        self._payloads_by_use = _Lru(PAYLOAD_CACHE_ENTRIES)
        self._payloads_by_id = _Lru(PAYLOAD_CACHE_ENTRIES)
        self._transfer = TransferConfig(multipart_threshold=64 * 1024**2, multipart_chunksize=16 * 1024**2)

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, cache_dir: Path | None = None) -> S3Registry:
        """The registry at ``s3://BUCKET/PREFIX``."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url, cache_dir=cache_dir)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # --- keys (the layout in the module docstring) ----------------------------------

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def versions_prefix(self, model: str) -> str:
        return self._key(f"models/{validate_model_name(model)}/versions/")

    def version_key(self, model: str, version: int) -> str:
        return f"{self.versions_prefix(model)}{version:010d}.json"

    def blob_key(self, sha256: str) -> str:
        return self._key(f"blobs/sha256/{validate_sha256(sha256)}")

    def payload_id_key(self, model: str, payload_id: str) -> str:
        return self._key(f"models/{validate_model_name(model)}/payloads/by-id/{validate_sha256(payload_id)}.json")

    def payload_use_key(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> str:
        validate_payload_use(codec, base_sha256, target_sha256)
        base = base_sha256 or "none"
        return self._key(f"models/{validate_model_name(model)}/payloads/by-use/{codec}/{base}/{target_sha256}.json")

    # --- bucket operations, with S3's answers turned into edgerec's errors ------------

    def _get(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        """The object's bytes (at most ``max_bytes``, else IntegrityError) and ETag, or None if absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                if response["ContentLength"] > max_bytes:
                    raise IntegrityError(f"{key} has {response['ContentLength']} bytes, more than {max_bytes}")
                data = _read_at_most(body.iter_chunks(_CHUNK), max_bytes, key)
            finally:
                body.close()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise _unavailable("GET", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("GET", key, exc) from exc
        return data, response["ETag"]

    def _head_size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if _missing(exc):
                return None
            raise _unavailable("HEAD", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("HEAD", key, exc) from exc

    def _put(self, key: str, data: bytes, *, create: bool = False, if_match: str | None = None) -> str | None:
        """Write ``data``; with ``create`` only if ``key`` is absent, with ``if_match`` only if its ETag is that.

        Returns the new ETag, or None when the condition did not hold.
        """
        request: PutObjectRequestTypeDef = {"Bucket": self.bucket, "Key": key, "Body": data}
        if create:
            request["IfNoneMatch"] = "*"
        if if_match is not None:
            request["IfMatch"] = if_match
        try:
            return self.client.put_object(**request)["ETag"]
        except ClientError as exc:
            conditional = create or if_match is not None
            # 412: the condition failed; 409: a concurrent conditional write won; 404: If-Match on nothing (AWS).
            if (conditional and _status(exc) in (409, 412)) or (if_match is not None and _missing(exc)):
                return None
            raise _unavailable("PUT", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("PUT", key, exc) from exc

    def _list(self, prefix: str, *, start_after: str = "", delimiter: str = "") -> Iterator[str]:
        """Keys (or, with a delimiter, common prefixes) under ``prefix``, in order."""
        token = ""
        for _ in range(_MAX_LIST_PAGES):
            request: ListObjectsV2RequestTypeDef = {
                "Bucket": self.bucket,
                "Prefix": prefix,
                "StartAfter": start_after,
                "Delimiter": delimiter,
            }
            if token:
                request["ContinuationToken"] = token
            try:
                page = self.client.list_objects_v2(**request)
            except (ClientError, BotoCoreError) as exc:
                raise _unavailable("LIST", prefix, exc) from exc
            if delimiter:
                yield from (p["Prefix"] for p in page.get("CommonPrefixes", []))
            else:
                yield from (o["Key"] for o in page.get("Contents", []))
            token = page.get("NextContinuationToken", "")
            if not page.get("IsTruncated") or not token:
                return
        raise RegistryUnavailableError(f"LIST {prefix}: more than {_MAX_LIST_PAGES} pages")

    def _upload_blob(self, sha256: str, path: Path, size: int) -> None:
        """Put ``path`` at its content address unless an object of that size is there already."""
        key = self.blob_key(sha256)
        if self._head_size(key) == size:
            return
        try:
            self.client.upload_file(str(path), self.bucket, key, Config=self._transfer)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("upload", key, exc) from exc
        except boto3.exceptions.S3UploadFailedError as exc:
            raise RegistryUnavailableError(f"upload {key}: {exc}") from exc

    def _stream(self, key: str, size: int) -> Iterator[bytes]:
        """The object's bytes in chunks; IntegrityError when the bucket says it has another size."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                if response["ContentLength"] != size:
                    raise IntegrityError(f"{key} has {response['ContentLength']} bytes, the manifest says {size}")
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()
        except ClientError as exc:
            if _missing(exc):
                raise IntegrityError(f"{key} is listed by a committed record but missing from the bucket") from exc
            raise _unavailable("GET", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("GET", key, exc) from exc

    def _changed(self, what: str) -> None:
        """Move the change stamp. A failure is only logged: the write it announces is already committed."""
        body = json.dumps({"at": now_rfc3339(), "by": self.publisher, "what": what, "nonce": uuid.uuid4().hex})
        try:
            self._put(self._key("changes.json"), body.encode())
        except RegistryUnavailableError:
            log.warning("could not move the change stamp after %s; replicas notice at their next listing", what)

    # --- versions ---------------------------------------------------------------

    def add_version(self, model: str, staged_dir: Path, make_manifest: ManifestFactory) -> Manifest:
        """Upload the staged files, then commit the first free version number by a conditional create.

        The staged folder is left in place (it is the caller's to remove).
        """
        validate_model_name(model)
        publish_id = uuid.uuid4().hex
        uploaded: set[str] = set()
        numbers = self._version_numbers(model, refresh=True)
        version = max(numbers, default=0) + 1
        for attempt in range(1, self.max_commit_attempts + 1):
            if version > MAX_VERSION:
                raise RegistryConflictError(f"{model} has used every version number up to {MAX_VERSION}")
            signed = make_manifest(version)
            manifest = check_new_manifest(signed, model, version)
            self._upload_files(manifest, staged_dir, uploaded)
            record = version_record(model, version, signed, publish_id, self.publisher)
            key = self.version_key(model, version)
            if self._put(key, record, create=True) is not None or self._committed_by(model, version, publish_id):
                self._remember(model, version, VersionRecord(signed, manifest, publish_id, len(record)))
                self._changed(f"version {model}/{version}")
                log.info("published %s version %d (attempt %d)", model, version, attempt)
                return manifest
            log.debug("%s version %d was taken by another publisher (attempt %d)", model, version, attempt)
            # Spread the losers out, so a crowd does not collide again on the next number at once.
            time.sleep(random.uniform(0, min(0.25, 0.002 * attempt)))
            numbers = self._version_numbers(model, refresh=True)
            version = max(version + 1, max(numbers, default=0) + 1)
        raise VersionConflictError(
            f"could not commit a version of {model} in {self.max_commit_attempts} attempts: "
            "too many concurrent publishers"
        )

    def _upload_files(self, manifest: Manifest, staged_dir: Path, uploaded: set[str]) -> None:
        """Upload every file the manifest lists that is not uploaded yet, after checking it is what it says."""
        for artifact in manifest.artifacts:
            for f in artifact.files:
                if f.sha256 in uploaded:
                    continue
                path = staged_dir / f.path
                try:
                    size = path.stat().st_size
                except OSError as exc:
                    raise IntegrityError(f"staged file {f.path} is missing: {exc}") from exc
                if size != f.size or sha256_file(path) != f.sha256:
                    raise IntegrityError(f"staged file {f.path} is not the size and sha256 its manifest says")
                self._upload_blob(f.sha256, path, size)
                uploaded.add(f.sha256)

    def _committed_by(self, model: str, version: int, publish_id: str) -> bool:
        """Whether ``version`` is ours after all: a create whose answer was lost and was retried."""
        try:
            return self._load(model, version).publish_id == publish_id
        except (VersionNotFoundError, IntegrityError, ManifestError):
            return False

    def _remember(self, model: str, version: int, record: VersionRecord) -> None:
        with self._lock:
            self._records.put((model, version), record, record.size)
            self._partials[(model, version)] = record.partial
            listing = self._listings.setdefault(model, _Listing())
            listing.numbers.add(version)

    def _version_numbers(self, model: str, *, refresh: bool = False) -> list[int]:
        """Every committed version number of ``model`` (including unreadable records), ascending.

        One thread asks the bucket when the listing is stale; meanwhile the others answer from it, so a
        burst of requests lists once, not once each.
        """
        with self._lock:
            listing = self._listings.setdefault(model, _Listing())
            fresh = time.monotonic() - listing.checked_at < self.listing_ttl_s
            if not refresh and (fresh or (listing.listing and listing.numbers)):
                return sorted(listing.numbers)
            start_after = listing.last_key
            listing.listing = True
        try:
            prefix = self.versions_prefix(model)
            checked_at = time.monotonic()
            found: list[int] = []
            last_key = start_after
            for key in self._list(prefix, start_after=start_after):
                match = _VERSION_NAME.match(key[len(prefix) :])
                if match and 1 <= int(match.group(1)) <= MAX_VERSION:
                    found.append(int(match.group(1)))
                    last_key = max(last_key, key)  # only record names: a stray key may sort after all of them
                else:
                    log.warning("ignoring %s: not a version record name", key)
        finally:
            with self._lock:
                listing.listing = False
        with self._lock:
            listing.numbers.update(found)
            listing.last_key = max(listing.last_key, last_key)
            listing.checked_at = max(listing.checked_at, checked_at)
            if not listing.numbers and self._listings.get(model) is listing:
                self._listings.pop(model, None)  # names devices ask for are not kept unless they exist
            return sorted(listing.numbers)

    def _partial_info(self, model: str, version: int) -> tuple[int | None, int | None] | None:
        """(partial_of, partial_base) of a version, or None when its record cannot be read (logged)."""
        with self._lock:
            if (model, version) in self._partials:
                return self._partials[(model, version)]
        try:
            info: tuple[int | None, int | None] | None = self._load(model, version).partial
        except (IntegrityError, ManifestError, VersionNotFoundError) as exc:
            log.error("%s version %d is unusable and left out: %s", model, version, exc)
            info = None
        with self._lock:
            self._partials[(model, version)] = info
        return info

    def _load(self, model: str, version: int) -> VersionRecord:
        """The committed record of a version (cached for good: records never change)."""
        with self._lock:
            cached: VersionRecord | None = self._records.get((model, version))
        if cached is not None:
            return cached
        key = self.version_key(model, version)
        got = self._get(key, MAX_VERSION_RECORD_BYTES)
        if got is None:
            raise VersionNotFoundError(f"{model} has no version {version}")
        record = parse_version_record(got[0], model, version, key)
        with self._lock:
            self._records.put((model, version), record, record.size)
        return record

    def next_version(self, model: str) -> int:
        return max(self._version_numbers(model, refresh=True), default=0) + 1

    def models(self) -> list[str]:
        prefix = self._key("models/")
        names = (p[len(prefix) :].rstrip("/") for p in self._list(prefix, delimiter="/"))
        return sorted(name for name in names if _valid_model_name(name))

    def versions(self, model: str, *, include_partial: bool = True) -> list[int]:
        validate_model_name(model)
        numbers = self._version_numbers(model)
        with self._lock:
            unread = [v for v in numbers if (model, v) not in self._partials]
        if len(unread) > 1:  # a replica's first look at a long history: read the records side by side
            with ThreadPoolExecutor(min(_PARALLEL_READS, len(unread))) as pool:
                list(pool.map(lambda v: self._partial_info(model, v), unread))
        usable = []
        for version in numbers:
            info = self._partial_info(model, version)
            if info is not None and (include_partial or info[0] is None):
                usable.append(version)
        return usable

    def latest_version(self, model: str) -> int | None:
        versions = self.versions(model, include_partial=False)
        return versions[-1] if versions else None

    def partial_versions(self, model: str, base_version: int, partial_of: int) -> list[int]:
        wanted = (partial_of, base_version)
        return [v for v in reversed(self.versions(model)) if self._partial_info(model, v) == wanted]

    def resolve_version(self, model: str, version: int = 0) -> int:
        versions = self.versions(model)
        if not versions:
            raise ModelNotFoundError(f"no model named {model!r} is published")
        if version == 0:
            return self.latest_version(model) or versions[-1]
        if version not in versions:
            # Published by another replica since this one last listed?
            self._version_numbers(model, refresh=True)
            versions = self.versions(model)
            if version not in versions:
                raise VersionNotFoundError(f"{model} has no version {version} (published: {versions})")
        return version

    def files(self, model: str, version: int) -> list[VersionFile]:
        validate_model_name(model)
        try:
            manifest = self._load(model, version).manifest
        except VersionNotFoundError:
            return []
        return sorted(
            (
                VersionFile(model, version, a.recipe, f.path, f.size, f.sha256)
                for a in manifest.artifacts
                for f in a.files
            ),
            key=lambda f: (f.recipe, f.path),
        )

    def load_manifest(self, model: str, version: int) -> tuple[SignedManifest, Manifest]:
        version = self.resolve_version(model, version) if version == 0 else version
        validate_model_name(model)
        try:
            record = self._load(model, version)
        except VersionNotFoundError:
            self.resolve_version(model, version)  # ModelNotFoundError when there is no such model
            raise
        signed = SignedManifest()
        signed.CopyFrom(record.signed)
        manifest = Manifest()
        manifest.CopyFrom(record.manifest)
        return signed, manifest

    def local_file(self, model: str, version: int, path: str) -> Path:
        """A copy of the file in the local cache, checked against the manifest's size and sha256."""
        listed = next((f for f in self.files(model, version) if f.path == path), None)
        if listed is None:
            raise VersionNotFoundError(f"{model} version {version} has no file {path[:200]!r}")
        key = self.blob_key(listed.sha256)
        return self.blobs.get(listed.sha256, listed.size, lambda: self._stream(key, listed.size))

    # --- payloads ---------------------------------------------------------------

    def find_payload(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> PayloadRecord | None:
        use = (model, codec, base_sha256, target_sha256)
        with self._lock:
            cached: PayloadRecord | None = self._payloads_by_use.get(use)
        if cached is not None:
            return cached
        key = self.payload_use_key(*use)
        got = self._get(key, MAX_PAYLOAD_RECORD_BYTES)
        if got is None:
            return None
        record = parse_payload_record(got[0], key)
        if (record.model, record.codec, record.base_sha256, record.target_sha256) != use:
            raise IntegrityError(f"payload record {key} describes another payload")
        self._remember_payload(record, by_use=True)
        return record

    def payload(self, model: str, payload_id: str) -> PayloadRecord:
        validate_model_name(model)
        validate_sha256(payload_id, "payload_id")
        with self._lock:
            cached: PayloadRecord | None = self._payloads_by_id.get((model, payload_id))
        if cached is not None:
            return cached
        key = self.payload_id_key(model, payload_id)
        got = self._get(key, MAX_PAYLOAD_RECORD_BYTES)
        if got is None:
            raise PayloadNotFoundError(f"no payload {payload_id!r} for model {model!r}")
        record = parse_payload_record(got[0], key)
        if (record.model, record.payload_id) != (model, payload_id):
            raise IntegrityError(f"payload record {key} describes another payload")
        self._remember_payload(record, by_use=False)
        return record

    def _remember_payload(self, record: PayloadRecord, *, by_use: bool) -> None:
        with self._lock:
            self._payloads_by_id.put((record.model, record.payload_id), record, 1)
            if by_use:
                use = (record.model, record.codec, record.base_sha256, record.target_sha256)
                self._payloads_by_use.put(use, record, 1)

    def add_payload(self, record: PayloadRecord, staged_file: Path) -> None:
        """Upload the payload, then create its records (a record already there is kept). Removes ``staged_file``."""
        check_payload_record(record)
        try:
            size = staged_file.stat().st_size
        except OSError as exc:
            raise IntegrityError(f"staged payload {staged_file} is missing: {exc}") from exc
        if size != record.size or sha256_file(staged_file) != record.payload_id:
            raise IntegrityError(f"staged payload {staged_file} is not the size and sha256 its record says")
        self._upload_blob(record.payload_id, staged_file, size)
        body = json.dumps(asdict(record), sort_keys=True).encode()
        self._put(self.payload_id_key(record.model, record.payload_id), body, create=True)
        use_key = self.payload_use_key(record.model, record.codec, record.base_sha256, record.target_sha256)
        if self._put(use_key, body, create=True) is not None:
            self._remember_payload(record, by_use=True)
        else:
            log.info("payload %s: another replica stored the same one first", record.payload_id[:16])
            self._remember_payload(record, by_use=False)
        staged_file.unlink(missing_ok=True)
        self._changed(f"payload {record.model}/{record.payload_id}")

    def open_payload(self, model: str, payload_id: str) -> BinaryIO:
        """The payload from the local blob cache, fetched and checked against its sha256 on first use: the
        bucket is read once per payload, not once per stream, and no unchecked byte is served."""
        record = self.payload(model, payload_id)
        key = self.blob_key(record.payload_id)
        return self.blobs.get(record.payload_id, record.size, lambda: self._stream(key, record.size)).open("rb")

    def payload_url(self, model: str, payload_id: str, expires_s: int) -> str | None:
        """A presigned GET of the payload's blob, valid for ``expires_s`` seconds (1 s to 7 days)."""
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise InvalidInputError(f"expires_s must be 1..{MAX_PRESIGN_S}, got {expires_s}")
        record = self.payload(model, payload_id)
        params = {"Bucket": self.bucket, "Key": self.blob_key(record.payload_id)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    # --- change tracking and documents -------------------------------------------

    def change_stamp(self) -> str:
        """The ETag of ``changes.json`` (one HEAD request), or "none" before the first write."""
        key = self._key("changes.json")
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except ClientError as exc:
            if _missing(exc):
                return "none"
            raise _unavailable("HEAD", key, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("HEAD", key, exc) from exc

    def get_document(self, key: str) -> Document | None:
        got = self._get(self._key(f"documents/{validate_document_key(key)}"), MAX_DOCUMENT_BYTES)
        return Document(*got) if got is not None else None

    def put_document(self, key: str, data: bytes, *, if_match: str | None) -> str:
        object_key = self._key(f"documents/{validate_document_key(key)}")
        if len(data) > MAX_DOCUMENT_BYTES:
            raise IntegrityError(f"document {key} of {len(data)} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte limit")
        etag = self._put(object_key, data, create=if_match is None, if_match=if_match)
        if etag is None:
            wanted = "to create it" if if_match is None else f"etag {if_match!r}"
            raise RegistryConflictError(f"document {key} changed: {wanted}, but it is not so any more")
        self._changed(f"document {key}")
        return etag

    # --- local room ---------------------------------------------------------------

    def scratch_dir(self) -> Path:
        path = self.cache_dir / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


# --- records -------------------------------------------------------------------------


def version_record(model: str, version: int, signed: SignedManifest, publish_id: str, publisher: str) -> bytes:
    return json.dumps(
        {
            "format": RECORD_FORMAT,
            "model": model,
            "version": version,
            "publish_id": publish_id,
            "publisher": publisher,
            "published_at": now_rfc3339(),
            "signed_manifest": base64.b64encode(signed.SerializeToString()).decode(),
        },
        sort_keys=True,
    ).encode()


def parse_version_record(data: bytes, model: str, version: int, key: str) -> VersionRecord:
    """A version record read from ``key``, checked to be the version that key names."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or not _is_int(doc.get("format")) or doc["format"] != RECORD_FORMAT:
            raise ValueError("not a version record of a known format")
        if doc.get("model") != model or not _is_int(doc.get("version")) or doc["version"] != version:
            raise ValueError("it names another version")
        publish_id = doc.get("publish_id")
        encoded = doc.get("signed_manifest")
        if not isinstance(publish_id, str) or not isinstance(encoded, str):
            raise ValueError("it lacks its publish id or manifest")
        raw = base64.b64decode(encoded, validate=True)
        if len(raw) > MAX_SIGNED_MANIFEST_BYTES:
            raise ValueError(f"its manifest has {len(raw)} bytes")
        signed = SignedManifest()
        signed.ParseFromString(raw)
    except (ValueError, RecursionError, binascii.Error, DecodeError) as exc:
        raise IntegrityError(f"version record {key} is malformed: {exc}") from exc
    manifest = parse_manifest(signed)
    if manifest.model != model or manifest.version != version:
        raise IntegrityError(f"version record {key} holds the manifest of {manifest.model} {manifest.version}")
    return VersionRecord(signed, manifest, publish_id, len(data))


def parse_payload_record(data: bytes, key: str) -> PayloadRecord:
    """A payload record read from ``key``, every field checked (the caller checks it is the one asked for)."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or set(doc) != _PAYLOAD_FIELDS:
            raise ValueError("unexpected fields")
        if not _is_int(doc["size"]) or not (_is_int(doc["make_seconds"]) or isinstance(doc["make_seconds"], float)):
            raise ValueError("size or make_seconds is not a number")
        for name in ("payload_id", "model", "codec", "base_sha256", "target_sha256"):
            if not isinstance(doc[name], str):
                raise ValueError(f"{name} is not a string")
        return check_payload_record(PayloadRecord(**{**doc, "make_seconds": float(doc["make_seconds"])}))
    except (ValueError, RecursionError, InvalidInputError, ManifestError) as exc:
        raise IntegrityError(f"payload record {key} is malformed: {exc}") from exc


# --- helpers -------------------------------------------------------------------------


def _read_at_most(chunks: Iterable[bytes], limit: int, what: str) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > limit:
            raise IntegrityError(f"{what} is longer than {limit} bytes")
    return bytes(out)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _missing(exc: ClientError) -> bool:
    """Whether S3 said the key is absent (a missing bucket is also a 404, but an error here)."""
    code = exc.response.get("Error", {}).get("Code")
    return code != "NoSuchBucket" and (_status(exc) == 404 or code in ("NoSuchKey", "NotFound", "404"))


def _unavailable(operation: str, key: str, exc: Exception) -> RegistryUnavailableError:
    return RegistryUnavailableError(f"{operation} {key}: {exc}")


def _valid_model_name(name: str) -> bool:
    try:
        validate_model_name(name)
    except ManifestError:
        return False
    return True
