"""The local registry: published versions and payloads in a folder, indexed by SQLite.

Layout under the registry root::

    index.sqlite                              versions, files, payloads, documents, change counter
    models/<model>/<version>/manifest.pb      SignedManifest bytes, as published
    models/<model>/<version>/<recipe>/...     artifact files (paths as in the manifest)
    payloads/<model>/<payload_id>.erpatch     payload containers, named by their sha256

A version directory appears by one rename once all its files are written, and its
rows are inserted in the same transaction that allocates the version number, so a
reader never sees half a version. Payloads are content-addressed and shared by
every device that needs the same (base file, target file, codec) triple.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import BinaryIO

from edgerec.errors import (
    IntegrityError,
    ModelNotFoundError,
    PayloadNotFoundError,
    RegistryConflictError,
    VersionNotFoundError,
)
from edgerec.fsutil import fsync_dir
from edgerec.manifest import PARTIAL_BASE, PARTIAL_OF, Manifest, SignedManifest, parse_manifest, validate_model_name
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
    validate_sha256,
)

log = logging.getLogger(__name__)

# Idle read connections kept open: opening one costs far more than the query a server runs on it.
MAX_IDLE_READERS = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    -- For a partial version (budgeted update): the full version it approximates and its base.
    partial_of INTEGER,
    partial_base INTEGER,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS files (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (model, version, path)
);
CREATE TABLE IF NOT EXISTS payloads (
    payload_id TEXT NOT NULL,
    model TEXT NOT NULL,
    codec TEXT NOT NULL,
    base_sha256 TEXT NOT NULL,
    target_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    make_seconds REAL NOT NULL,
    PRIMARY KEY (model, codec, base_sha256, target_sha256)
);
CREATE INDEX IF NOT EXISTS payloads_by_id ON payloads (model, payload_id);
CREATE TABLE IF NOT EXISTS documents (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    etag TEXT NOT NULL
);
-- One row that moves with every write, so replicas know when their caches are stale. Its epoch
-- is new whenever the index is made anew, so a counter starting over never repeats a stamp.
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT NOT NULL,
    counter INTEGER NOT NULL
);
"""


def copy_registry(source: Path | str, destination: Path | str) -> Path:
    """Copy the local registry at ``source`` to a new folder ``destination``; returns it.

    The index is copied through SQLite's backup API, never by opening its files: closing any other
    descriptor of a database file drops the locks this process's open connections hold on it (POSIX
    record locks are per process), which can corrupt a registry that is in use.
    """
    source, destination = Path(source), Path(destination)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("index.sqlite*"))
    with (
        closing(sqlite3.connect(source / "index.sqlite", timeout=30.0)) as src,
        closing(sqlite3.connect(destination / "index.sqlite")) as dst,
    ):
        src.backup(dst)
    return destination


class LocalRegistry:
    """A registry rooted at a folder; safe to share between threads and processes on one machine."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.root / "index.sqlite", timeout=30.0)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO changes (id, epoch, counter) VALUES (1, ?, 0)", (uuid.uuid4().hex,))
            db.commit()
        self._idle: list[sqlite3.Connection] = []
        self._idle_lock = threading.Lock()

    @property
    def location(self) -> str:
        return str(self.root)

    # --- plumbing ---------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection in a transaction (commit on success, rollback on error)."""
        with closing(sqlite3.connect(self.root / "index.sqlite", timeout=30.0, isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection in autocommit mode for reads: each statement sees the latest commit and
        takes no write lock."""
        with self._idle_lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = sqlite3.connect(
                self.root / "index.sqlite", timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout=30000")
        try:
            yield db
        except BaseException:
            db.close()
            raise
        with self._idle_lock:
            if len(self._idle) < MAX_IDLE_READERS:
                self._idle.append(db)
                return
        db.close()

    @staticmethod
    def _changed(db: sqlite3.Connection) -> None:
        db.execute("UPDATE changes SET counter = counter + 1 WHERE id = 1")

    def model_dir(self, model: str) -> Path:
        return self.root / "models" / validate_model_name(model)

    def version_dir(self, model: str, version: int) -> Path:
        return self.model_dir(model) / str(version)

    def file_path(self, model: str, version: int, path: str) -> Path:
        """Absolute path of an artifact file of a version (unchecked; see :meth:`local_file`)."""
        return self.version_dir(model, version) / path

    def payload_path(self, model: str, payload_id: str) -> Path:
        return self.root / "payloads" / validate_model_name(model) / f"{payload_id}.erpatch"

    # --- versions ---------------------------------------------------------------

    def add_version(self, model: str, staged_dir: Path, make_manifest: ManifestFactory) -> Manifest:
        """Publish the files under ``staged_dir`` as the next version (see ``ModelRegistry.add_version``)."""
        validate_model_name(model)
        with self._connect() as db:
            version = self._latest(db, model) + 1
            if version > MAX_VERSION:
                raise RegistryConflictError(f"{model} has used every version number up to {MAX_VERSION}")
            signed = make_manifest(version)
            manifest = check_new_manifest(signed, model, version)
            _check_staged(manifest, staged_dir)
            self._install(db, manifest, signed, staged_dir)
        log.info("published %s version %d", manifest.model, manifest.version)
        return manifest

    @staticmethod
    def _latest(db: sqlite3.Connection, model: str) -> int:
        latest: int | None = db.execute("SELECT MAX(version) FROM versions WHERE model = ?", (model,)).fetchone()[0]
        return latest or 0

    def _install(self, db: sqlite3.Connection, manifest: Manifest, signed: SignedManifest, staged_dir: Path) -> None:
        """Move the staged folder into place and index it, inside ``db``'s transaction."""
        (staged_dir / "manifest.pb").write_bytes(signed.SerializeToString())
        target = self.version_dir(manifest.model, manifest.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # left by a publisher that crashed before its commit
            shutil.rmtree(target)
        os.replace(staged_dir, target)
        fsync_dir(target.parent)
        partial_of = manifest.annotations.get(PARTIAL_OF)
        partial_base = manifest.annotations.get(PARTIAL_BASE)
        db.execute(
            "INSERT INTO versions (model, version, created_at, partial_of, partial_base) VALUES (?, ?, ?, ?, ?)",
            (
                manifest.model,
                manifest.version,
                manifest.created_at,
                int(partial_of) if partial_of else None,
                int(partial_base) if partial_base else None,
            ),
        )
        for artifact in manifest.artifacts:
            db.executemany(
                "INSERT INTO files (model, version, recipe, path, size, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                [(manifest.model, manifest.version, artifact.recipe, f.path, f.size, f.sha256) for f in artifact.files],
            )
        self._changed(db)

    def next_version(self, model: str) -> int:
        """The number the next published version gets (partial versions count too)."""
        versions = self.versions(model)
        return (versions[-1] if versions else 0) + 1

    def models(self) -> list[str]:
        with self._read() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT model FROM versions ORDER BY model")]

    def versions(self, model: str, *, include_partial: bool = True) -> list[int]:
        """Published versions of ``model``, oldest first (empty if the model is unknown)."""
        where = "" if include_partial else " AND partial_of IS NULL"
        with self._read() as db:
            rows = db.execute(f"SELECT version FROM versions WHERE model = ?{where} ORDER BY version", (model,))
            return [row[0] for row in rows]

    def latest_version(self, model: str) -> int | None:
        """The newest full (not partial) version."""
        versions = self.versions(model, include_partial=False)
        return versions[-1] if versions else None

    def partial_versions(self, model: str, base_version: int, partial_of: int) -> list[int]:
        """Partial versions built for devices on ``base_version`` toward ``partial_of``, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT version FROM versions WHERE model = ? AND partial_base = ? AND partial_of = ? "
                "ORDER BY version DESC",
                (model, base_version, partial_of),
            )
            return [row[0] for row in rows]

    def resolve_version(self, model: str, version: int = 0) -> int:
        """``version``, or the latest full version when 0; raises NotFound errors."""
        versions = self.versions(model)
        if not versions:
            raise ModelNotFoundError(f"no model named {model!r} is published")
        if version == 0:
            return self.latest_version(model) or versions[-1]
        if version not in versions:
            raise VersionNotFoundError(f"{model} has no version {version} (published: {versions})")
        return version

    def files(self, model: str, version: int) -> list[VersionFile]:
        with self._read() as db:
            rows = db.execute(
                "SELECT model, version, recipe, path, size, sha256 FROM files "
                "WHERE model = ? AND version = ? ORDER BY recipe, path",
                (model, version),
            )
            return [VersionFile(*row) for row in rows]

    def load_manifest(self, model: str, version: int) -> tuple[SignedManifest, Manifest]:
        """The signed manifest of a version as published, and its parsed form."""
        self.resolve_version(model, version)
        signed = SignedManifest()
        signed.ParseFromString((self.version_dir(model, version) / "manifest.pb").read_bytes())
        return signed, parse_manifest(signed)

    def local_file(self, model: str, version: int, path: str) -> Path:
        """The registry's own file of ``path`` in a version (one the version lists, never another)."""
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM files WHERE model = ? AND version = ? AND path = ?", (model, version, path)
            ).fetchone()
        if row is None:
            raise VersionNotFoundError(f"{model} version {version} has no file {path[:200]!r}")
        return self.file_path(model, version, path)

    # --- payloads ---------------------------------------------------------------

    def find_payload(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> PayloadRecord | None:
        with self._read() as db:
            row = db.execute(
                "SELECT payload_id, model, codec, base_sha256, target_sha256, size, make_seconds FROM payloads "
                "WHERE model = ? AND codec = ? AND base_sha256 = ? AND target_sha256 = ?",
                (model, codec, base_sha256, target_sha256),
            ).fetchone()
        if row is None or not self.payload_path(model, row[0]).exists():
            return None
        return PayloadRecord(*row)

    def payload(self, model: str, payload_id: str) -> PayloadRecord:
        """The payload with that id; raises PayloadNotFoundError."""
        validate_sha256(payload_id, "payload_id")
        with self._read() as db:
            row = db.execute(
                "SELECT payload_id, model, codec, base_sha256, target_sha256, size, make_seconds FROM payloads "
                "WHERE model = ? AND payload_id = ? LIMIT 1",
                (model, payload_id),
            ).fetchone()
        if row is None or not self.payload_path(model, payload_id).exists():
            raise PayloadNotFoundError(f"no payload {payload_id!r} for model {model!r}")
        return PayloadRecord(*row)

    def add_payload(self, record: PayloadRecord, staged_file: Path) -> None:
        """Move a finished payload file into place and index it (idempotent)."""
        check_payload_record(record)
        final = self.payload_path(record.model, record.payload_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_file, final)
        fsync_dir(final.parent)
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO payloads "
                "(payload_id, model, codec, base_sha256, target_sha256, size, make_seconds) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.payload_id,
                    record.model,
                    record.codec,
                    record.base_sha256,
                    record.target_sha256,
                    record.size,
                    record.make_seconds,
                ),
            )
            self._changed(db)

    def open_payload(self, model: str, payload_id: str) -> BinaryIO:
        record = self.payload(model, payload_id)
        return self.payload_path(model, record.payload_id).open("rb")

    def payload_url(self, model: str, payload_id: str, expires_s: int) -> str | None:
        """None: a folder has no URLs; the server streams the bytes itself."""
        self.payload(model, payload_id)
        return None

    # --- change tracking and documents -------------------------------------------

    def change_stamp(self) -> str:
        with self._read() as db:
            epoch, counter = db.execute("SELECT epoch, counter FROM changes WHERE id = 1").fetchone()
        return f"{epoch}:{counter}"

    def get_document(self, key: str) -> Document | None:
        validate_document_key(key)
        with self._read() as db:
            row = db.execute("SELECT data, etag FROM documents WHERE key = ?", (key,)).fetchone()
        return Document(bytes(row[0]), row[1]) if row else None

    def put_document(self, key: str, data: bytes, *, if_match: str | None) -> str:
        validate_document_key(key)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise IntegrityError(f"document {key} of {len(data)} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte limit")
        etag = uuid.uuid4().hex
        with self._connect() as db:
            row = db.execute("SELECT etag FROM documents WHERE key = ?", (key,)).fetchone()
            current = row[0] if row else None
            if current != if_match:
                wanted = "to create it" if if_match is None else f"etag {if_match!r}"
                raise RegistryConflictError(f"document {key} changed: {wanted}, found {current!r}")
            db.execute("INSERT OR REPLACE INTO documents (key, data, etag) VALUES (?, ?, ?)", (key, data, etag))
            self._changed(db)
        return etag

    # --- local room ---------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """A folder on the registry's filesystem for files about to be renamed into place."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _check_staged(manifest: Manifest, staged_dir: Path) -> None:
    """Every file the manifest lists is staged, with the size it says (its sha256 was taken while staging)."""
    for artifact in manifest.artifacts:
        for f in artifact.files:
            try:
                size = (staged_dir / f.path).stat().st_size
            except OSError as exc:
                raise IntegrityError(f"staged file {f.path} is missing: {exc}") from exc
            if size != f.size:
                raise IntegrityError(f"staged file {f.path} has {size} bytes, the manifest says {f.size}")
