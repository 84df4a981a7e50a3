"""The model registry: published versions, their files and payloads (folder + SQLite)."""

from edgerec.registry.store import PayloadRecord, Registry, VersionFile

__all__ = ["PayloadRecord", "Registry", "VersionFile"]
