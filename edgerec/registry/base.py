"""What every registry backend offers: the one interface callers program against.

The registry is the single source of truth for published versions, their files, the payloads
made from them, and small documents (release policy, fleet reports) updated by compare-and-swap.
Two backends implement it: a local folder indexed by SQLite (``edgerec.registry.local``) and an
S3-compatible bucket shared by several server replicas (``edgerec.registry.s3``).

Rules every backend keeps:

- A version appears whole or not at all, and its number is allocated by the registry at commit
  time (:meth:`ModelRegistry.add_version`), so concurrent publishers never share a number.
- Files are reached through :meth:`ModelRegistry.local_file`, never by guessing a folder: a
  remote backend hands out a copy it verified against the version's manifest.
- :meth:`ModelRegistry.change_stamp` moves whenever anything is added or a document changes;
  a replica polls it to know when its caches are stale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol, runtime_checkable

from edgerec.errors import InvalidInputError, ManifestError
from edgerec.manifest import Manifest, SignedManifest, parse_manifest, validate_model_name

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_KEY_LENGTH",
    "MAX_VERSION",
    "Document",
    "ManifestFactory",
    "ModelRegistry",
    "PayloadRecord",
    "VersionFile",
    "check_new_manifest",
    "check_payload_record",
    "validate_document_key",
    "validate_payload_use",
    "validate_sha256",
]

MAX_DOCUMENT_BYTES = 1024 * 1024
"""The largest small document (policy, reports) a registry stores."""

MAX_DOCUMENT_KEY_LENGTH = 256
_DOCUMENT_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CODEC = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

MAX_VERSION = 9_999_999_999
"""The highest version number a registry allocates (ten digits keep remote keys in order)."""

ManifestFactory = Callable[[int], SignedManifest]
"""Builds and signs the manifest of a version, given the number the registry allocated for it.

Called again with a higher number when a concurrent publisher took the first one, so it must
be cheap and describe the same files every time.
"""


@dataclass(frozen=True)
class VersionFile:
    """One file of a published version, as its manifest lists it."""

    model: str
    version: int
    recipe: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PayloadRecord:
    """A stored payload: turns the file with ``base_sha256`` ("" for none) into ``target_sha256``.

    ``payload_id`` is the sha256 of the payload's bytes.
    """

    payload_id: str
    model: str
    codec: str
    base_sha256: str
    target_sha256: str
    size: int
    make_seconds: float


class Document(NamedTuple):
    """A small document and the tag of its current content (pass it to ``put_document(if_match=...)``)."""

    data: bytes
    etag: str


def validate_document_key(key: str) -> str:
    """Return ``key`` if it names a document: lowercase '/'-separated segments of ``[a-z0-9._-]``."""
    if len(key) > MAX_DOCUMENT_KEY_LENGTH or not _DOCUMENT_KEY.match(key) or ".." in key:
        raise InvalidInputError(
            f"invalid document key {key[:80]!r}: use up to {MAX_DOCUMENT_KEY_LENGTH} characters of "
            "'/'-separated lowercase segments (letters, digits, '.', '_', '-'), each starting alphanumeric"
        )
    return key


def check_new_manifest(signed: SignedManifest, model: str, version: int) -> Manifest:
    """Parse the manifest a :data:`ManifestFactory` made and check it is the one asked for."""
    manifest = parse_manifest(signed)
    if manifest.model != model or manifest.version != version:
        raise ManifestError(
            f"asked for the manifest of {model} version {version}, got {manifest.model} version {manifest.version}"
        )
    return manifest


def validate_sha256(value: str, what: str = "sha256") -> str:
    """Return ``value`` if it is 64 lowercase hex digits, else raise InvalidInputError."""
    if not _SHA256_HEX.match(value):
        raise InvalidInputError(f"{what} must be 64 lowercase hex digits, got {value[:80]!r}")
    return value


def validate_payload_use(codec: str, base_sha256: str, target_sha256: str) -> None:
    """Raise InvalidInputError unless (codec, base, target) can name a payload ("" base: a full file)."""
    if not _CODEC.match(codec):
        raise InvalidInputError(f"unusable codec name {codec[:40]!r}")
    if base_sha256:
        validate_sha256(base_sha256, "base sha256")
    validate_sha256(target_sha256, "target sha256")


def check_payload_record(record: PayloadRecord) -> PayloadRecord:
    """Return ``record`` if its fields are well formed (they name files and keys), else raise."""
    validate_model_name(record.model)
    validate_sha256(record.payload_id, "payload_id")
    validate_payload_use(record.codec, record.base_sha256, record.target_sha256)
    if record.size < 0 or not record.make_seconds >= 0:
        raise InvalidInputError(f"payload record with a negative size or time: {record}")
    return record


@runtime_checkable
class ModelRegistry(Protocol):
    """A model registry, whichever store holds it. Safe to share between threads.

    Lookups raise ``ModelNotFoundError``/``VersionNotFoundError``/``PayloadNotFoundError``;
    a store that cannot be reached raises ``RegistryUnavailableError``; bytes that do not
    match what the manifest or record promised raise ``IntegrityError``.
    """

    @property
    def location(self) -> str:
        """Where the registry lives, for logs and tables: a folder or ``s3://bucket/prefix``."""
        ...

    # --- versions ---------------------------------------------------------------------

    def add_version(self, model: str, staged_dir: Path, make_manifest: ManifestFactory) -> Manifest:
        """Publish the files under ``staged_dir`` as the next version of ``model``; return its manifest.

        The registry allocates the number and calls ``make_manifest(number)`` for the signed
        manifest (again, with a higher number, if another publisher took it first). Each file the
        manifest lists must be at ``staged_dir / file.path``. Raises ``VersionConflictError`` (a
        ``RegistryConflictError``) when no number could be taken after bounded retries.
        """
        ...

    def next_version(self, model: str) -> int:
        """The number the next version would get now (a hint: a concurrent publish may take it)."""
        ...

    def models(self) -> list[str]:
        """Names of the published models, sorted."""
        ...

    def versions(self, model: str, *, include_partial: bool = True) -> list[int]:
        """Published versions of ``model``, oldest first (empty if the model is unknown)."""
        ...

    def latest_version(self, model: str) -> int | None:
        """The newest full (not partial) version."""
        ...

    def partial_versions(self, model: str, base_version: int, partial_of: int) -> list[int]:
        """Partial versions built for devices on ``base_version`` toward ``partial_of``, newest first."""
        ...

    def resolve_version(self, model: str, version: int = 0) -> int:
        """``version``, or the latest full version when 0; raises NotFound errors."""
        ...

    def files(self, model: str, version: int) -> list[VersionFile]:
        """Every file of a version, sorted by recipe and path."""
        ...

    def load_manifest(self, model: str, version: int) -> tuple[SignedManifest, Manifest]:
        """The signed manifest of a version as published, and its parsed form."""
        ...

    def local_file(self, model: str, version: int, path: str) -> Path:
        """A local file holding ``path`` of a version, its size and sha256 as the manifest says.

        The local backend returns its own file; a remote one a copy in its bounded cache,
        verified when it was fetched. Raises VersionNotFoundError for a path the version lacks.
        """
        ...

    # --- payloads ---------------------------------------------------------------------

    def find_payload(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> PayloadRecord | None:
        """The payload that turns ``base_sha256`` ("" for none) into ``target_sha256`` with ``codec``."""
        ...

    def payload(self, model: str, payload_id: str) -> PayloadRecord:
        """The payload with that id; raises PayloadNotFoundError."""
        ...

    def add_payload(self, record: PayloadRecord, staged_file: Path) -> None:
        """Store a finished payload file (consumed) and its record. Storing the same one twice is harmless."""
        ...

    def open_payload(self, model: str, payload_id: str) -> BinaryIO:
        """The payload's bytes, seekable (a remote backend serves a checked local copy). Close it after use."""
        ...

    def payload_url(self, model: str, payload_id: str, expires_s: int) -> str | None:
        """A URL any HTTP client can GET (with Range) the payload from until ``expires_s`` from now.

        None when the store has no such URLs (the local folder): serve the bytes yourself.
        """
        ...

    # --- change tracking and documents -------------------------------------------------

    def change_stamp(self) -> str:
        """An opaque token that differs after any version, payload or document was added or changed.

        Cheap enough to poll every second or two; equal tokens mean caches built under the
        older one are still good (a writer killed between its commit and the stamp's move
        leaves the stamp still until the next write: keep a time limit on caches as well).
        """
        ...

    def get_document(self, key: str) -> Document | None:
        """The document at ``key`` (see :func:`validate_document_key`), or None if there is none."""
        ...

    def put_document(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Write a document; return its new etag.

        ``if_match=None`` creates it and fails if it exists; otherwise the write happens only if the
        current etag still equals ``if_match``. A write that loses raises ``RegistryConflictError``:
        read again, re-apply the change, retry. (A remote store may also report a conflict for a
        write of its own whose answer was lost on the network: design changes so re-applying is safe.)
        """
        ...

    # --- local room -------------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """A local folder for files being prepared for this registry (staged versions, payloads)."""
        ...
