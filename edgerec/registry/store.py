"""The model registry: published versions and payloads in a folder, indexed by SQLite.

Layout under the registry root::

    index.sqlite                              versions, files and payloads
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
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgerec.errors import ModelNotFoundError, PayloadNotFoundError, VersionNotFoundError
from edgerec.fsutil import fsync_dir
from edgerec.manifest import PARTIAL_BASE, PARTIAL_OF, Manifest, SignedManifest, parse_manifest, validate_model_name

log = logging.getLogger(__name__)

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
"""


@dataclass(frozen=True)
class VersionFile:
    """One file of a published version, as the index knows it."""

    model: str
    version: int
    recipe: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PayloadRecord:
    """A stored payload: turns the file with ``base_sha256`` ("" for none) into ``target_sha256``."""

    payload_id: str
    model: str
    codec: str
    base_sha256: str
    target_sha256: str
    size: int
    make_seconds: float


class Registry:
    """A registry rooted at a folder; safe to share between threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.root / "index.sqlite", timeout=30.0)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

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

    def model_dir(self, model: str) -> Path:
        return self.root / "models" / validate_model_name(model)

    def version_dir(self, model: str, version: int) -> Path:
        return self.model_dir(model) / str(version)

    def file_path(self, model: str, version: int, path: str) -> Path:
        """Absolute path of an artifact file of a version."""
        return self.version_dir(model, version) / path

    def payload_path(self, model: str, payload_id: str) -> Path:
        return self.root / "payloads" / validate_model_name(model) / f"{payload_id}.erpatch"

    # --- versions ---------------------------------------------------------------

    def add_version(self, manifest: Manifest, signed: SignedManifest, staged_dir: Path) -> None:
        """Publish a version whose artifact files are already written under ``staged_dir``.

        ``manifest.version`` must be the next version (see :meth:`next_version`); the
        staged folder is moved into place and indexed in one transaction.
        """
        target = self.version_dir(manifest.model, manifest.version)
        (staged_dir / "manifest.pb").write_bytes(signed.SerializeToString())
        with self._connect() as db:
            latest = db.execute("SELECT MAX(version) FROM versions WHERE model = ?", (manifest.model,)).fetchone()[0]
            if manifest.version != (latest or 0) + 1:
                raise VersionNotFoundError(
                    f"{manifest.model} version {manifest.version} is not next after {latest or 0}"
                )
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
                    [
                        (manifest.model, manifest.version, artifact.recipe, f.path, f.size, f.sha256)
                        for f in artifact.files
                    ],
                )
        log.info("published %s version %d", manifest.model, manifest.version)

    def next_version(self, model: str) -> int:
        """The number the next published version gets (partial versions count too)."""
        versions = self.versions(model)
        return (versions[-1] if versions else 0) + 1

    def models(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT model FROM versions ORDER BY model")]

    def versions(self, model: str, *, include_partial: bool = True) -> list[int]:
        """Published versions of ``model``, oldest first (empty if the model is unknown)."""
        where = "" if include_partial else " AND partial_of IS NULL"
        with self._connect() as db:
            rows = db.execute(f"SELECT version FROM versions WHERE model = ?{where} ORDER BY version", (model,))
            return [row[0] for row in rows]

    def latest_version(self, model: str) -> int | None:
        """The newest full (not partial) version."""
        versions = self.versions(model, include_partial=False)
        return versions[-1] if versions else None

    def partial_versions(self, model: str, base_version: int, partial_of: int) -> list[int]:
        """Partial versions built for devices on ``base_version`` toward ``partial_of``, newest first."""
        with self._connect() as db:
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
        with self._connect() as db:
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

    # --- payloads ---------------------------------------------------------------

    def find_payload(self, model: str, codec: str, base_sha256: str, target_sha256: str) -> PayloadRecord | None:
        with self._connect() as db:
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
        with self._connect() as db:
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

    def scratch_dir(self) -> Path:
        """A folder on the registry's filesystem for files about to be renamed into place."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path
