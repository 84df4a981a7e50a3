"""The device's on-disk model store: installed versions, staging, downloads, and the switch.

Layout under ``<data_dir>/<model>/``::

    state.json            {"current": N, "previous": M, "highest": H}; replaced atomically: the switch
                          (H, the highest version ever activated, survives rollbacks and restarts,
                          so an older manifest can never be replayed)
    versions/<N>/         an installed version: manifest.pb, install.json, artifact files
    staging/<N>/          a version being built; removed at start if a sync died
    downloads/<id>.part   a payload being received (resumable), <id>.payload when complete

A version directory is complete before it is renamed into ``versions/``, and it is
active only once ``state.json`` names it, so a crash at any point leaves the previous
state intact. The current and previous versions are kept; older ones are pruned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgerec.errors import IntegrityError, ManifestError
from edgerec.fsutil import atomic_write_bytes, fsync_dir
from edgerec.hashing import sha256_file
from edgerec.manifest import (
    Artifact,
    Manifest,
    SignedManifest,
    find_artifact,
    parse_manifest,
    validate_model_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledVersion:
    """A version installed on this device, with the artifact it runs."""

    version: int
    recipe: str
    manifest: Manifest
    artifact: Artifact
    directory: Path

    @property
    def entrypoint(self) -> Path:
        return self.directory / self.artifact.entrypoint

    def file(self, path: str) -> Path:
        return self.directory / path


class ModelStore:
    """Installed versions of one model under a data directory."""

    def __init__(self, data_dir: Path | str, model: str) -> None:
        self.root = Path(data_dir) / validate_model_name(model)
        self.model = model
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.downloads_dir = self.root / "downloads"
        for folder in (self.versions_dir, self.staging_dir, self.downloads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._restore_replaced()

    def _restore_replaced(self) -> None:
        """Put back a version folder that a re-install moved aside when the process died before replacing it."""
        for aside in self.staging_dir.glob("*.replaced"):
            final = self.versions_dir / aside.name.removesuffix(".replaced")
            if not final.exists():
                os.replace(aside, final)
                fsync_dir(self.versions_dir)
                log.warning("%s: restored version folder %s after an interrupted re-install", self.model, final.name)

    # --- reading ----------------------------------------------------------------

    def _state(self) -> dict[str, int | None]:
        path = self.root / "state.json"
        if not path.exists():
            return {"current": None, "previous": None, "highest": None}
        try:
            state = json.loads(path.read_text())
            return {key: state.get(key) for key in ("current", "previous", "highest")}
        except (ValueError, AttributeError) as exc:
            raise ManifestError(f"{path} is unreadable: {exc}") from exc

    def _write_state(self, current: int | None, previous: int | None, highest: int | None) -> None:
        state = {"current": current, "previous": previous, "highest": highest}
        atomic_write_bytes(self.root / "state.json", json.dumps(state).encode())

    def highest_activated(self) -> int:
        """The highest version this device ever activated (0 if none); rollbacks do not lower it."""
        state = self._state()
        return int(state["highest"] or state["current"] or 0)

    def state_stamp(self) -> tuple[int, int] | None:
        """Changes whenever the active version changes (mtime and inode of the state file)."""
        try:
            st = (self.root / "state.json").stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> InstalledVersion | None:
        """The active version, or None before the first install."""
        version = self._state()["current"]
        return self.installed(version) if version else None

    def previous(self) -> InstalledVersion | None:
        version = self._state()["previous"]
        return self.installed(version) if version else None

    def installed(self, version: int) -> InstalledVersion:
        """Read an installed version's manifest and chosen artifact (not its file hashes)."""
        directory = self.versions_dir / str(version)
        try:
            signed = SignedManifest()
            signed.ParseFromString((directory / "manifest.pb").read_bytes())
            recipe = json.loads((directory / "install.json").read_text())["recipe"]
        except (OSError, ValueError, KeyError) as exc:
            raise ManifestError(f"installed version {version} is unreadable: {exc}") from exc
        manifest = parse_manifest(signed)
        artifact = find_artifact(manifest, recipe)
        if artifact is None or manifest.version != version or manifest.model != self.model:
            raise ManifestError(f"installed version {version} does not match its manifest")
        return InstalledVersion(version, recipe, manifest, artifact, directory)

    def verify(self, installed: InstalledVersion) -> None:
        """Check every file's size and sha256 against the manifest; raise IntegrityError."""
        verify_files(installed.directory, installed.artifact)

    # --- writing ----------------------------------------------------------------

    def begin_staging(self, version: int) -> Path:
        """A fresh, empty staging folder for ``version``."""
        folder = self.staging_dir / str(version)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def download_path(self, payload_id: str) -> Path:
        return self.downloads_dir / f"{payload_id}.part"

    def activate(self, signed: SignedManifest, manifest: Manifest, recipe: str, staged: Path) -> InstalledVersion:
        """Move a verified staged version into place and make it current, keeping the old one."""
        artifact = find_artifact(manifest, recipe)
        if artifact is None:
            raise ManifestError(f"manifest has no {recipe!r} artifact")
        verify_files(staged, artifact)
        (staged / "manifest.pb").write_bytes(signed.SerializeToString())
        (staged / "install.json").write_text(json.dumps({"recipe": recipe}))
        _fsync_tree(staged)
        final = self.versions_dir / str(manifest.version)
        if final.exists():  # a re-install of the same version (its files were damaged): move it aside first,
            # so a crash in between leaves either folder under a name clean_stale() knows, never none.
            aside = self.staging_dir / f"{manifest.version}.replaced"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(staged, final)
        fsync_dir(self.versions_dir)
        shutil.rmtree(self.staging_dir / f"{manifest.version}.replaced", ignore_errors=True)
        state = self._state()
        previous = state["current"] if state["current"] != manifest.version else state["previous"]
        self._write_state(manifest.version, previous, max(manifest.version, self.highest_activated()))
        log.info("%s: activated version %d (%s), previous %s", self.model, manifest.version, recipe, previous)
        self._prune(keep={manifest.version, previous})
        return InstalledVersion(manifest.version, recipe, manifest, artifact, final)

    def rollback(self) -> InstalledVersion:
        """Make the previous version current again; raises ManifestError when there is none."""
        state = self._state()
        if not state["previous"]:
            raise ManifestError(f"{self.model}: no previous version to roll back to")
        self._write_state(state["previous"], None, self.highest_activated())
        log.warning("%s: rolled back from %s to %s", self.model, state["current"], state["previous"])
        return self.installed(int(state["previous"]))

    def clean_stale(self) -> None:
        """Remove staging folders a dead sync left behind (partial downloads are kept to resume)."""
        for folder in self.staging_dir.iterdir():
            shutil.rmtree(folder, ignore_errors=True)

    def clear_downloads(self) -> None:
        """Remove every kept download: called once the device is up to date and none can be reused."""
        for path in self.downloads_dir.iterdir():
            path.unlink(missing_ok=True)

    def _prune(self, keep: set[int | None]) -> None:
        for folder in self.versions_dir.iterdir():
            if folder.name.isdigit() and int(folder.name) not in keep:
                shutil.rmtree(folder, ignore_errors=True)


def verify_files(directory: Path, artifact: Artifact) -> None:
    """Raise IntegrityError unless every artifact file under ``directory`` has its size and sha256."""
    for f in artifact.files:
        path = directory / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise IntegrityError(f"{f.path} is missing") from exc
        if size != f.size:
            raise IntegrityError(f"{f.path} has {size} bytes, manifest says {f.size}")
        digest = sha256_file(path)
        if digest != f.sha256:
            raise IntegrityError(f"{f.path} sha256 {digest[:16]}… differs from the manifest's {f.sha256[:16]}…")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(folder)
