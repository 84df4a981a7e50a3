"""The device's on-disk model store: installed versions, staging, downloads, and the switch.

Layout under ``<data_dir>/<model>/``::

    state.json            {"current": N, "previous": M, "highest": H, "held_back": R, "released": S};
                          replaced atomically: the switch (see StoreState)
    floor.json            {"highest": H, "held_back": R, "released": S}, replaced atomically after
                          state.json: the anti-rollback floor and rollback hold in a second place
    versions/<N>/         an installed version: manifest.pb, install.json, artifact files
    staging/<N>/          a version being built; removed at start if a sync died
    downloads/<id>.part   a payload being received (resumable), <id>.payload when complete

A version directory is complete before it is renamed into ``versions/``, and it is
active only once ``state.json`` names it, so a crash at any point leaves the previous
state intact. The current and previous versions are kept; older ones are pruned.

A ``state.json`` that is missing (with versions installed) or unreadable is rebuilt from what
is on disk: ``floor.json`` and the installed versions whose files verify against their manifest
(a warning is logged). Losing either file loses neither the floor nor the hold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerec.errors import EdgerecError, IntegrityError, ManifestError
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

STATE_FILE = "state.json"
FLOOR_FILE = "floor.json"
# Both files hold a few small integers; anything longer is damage.
_MAX_STATE_BYTES = 4096


@dataclass(frozen=True)
class StoreState:
    """Which installed versions are active, and what protects the device from going back.

    ``highest`` is the highest version ever activated: rollbacks do not lower it, so an older
    manifest can never be replayed. ``held_back`` is the version a rollback left (it failed here):
    a sync does not install it again. ``released`` is a held-back version an operator released
    (:meth:`ModelStore.clear_rollback`): the next sync may install it again though it is not newer.
    Activating that version or a newer one ends both.
    """

    current: int | None = None
    previous: int | None = None
    highest: int = 0
    held_back: int | None = None
    released: int | None = None

    @classmethod
    def parse(cls, raw: bytes) -> StoreState:
        """The state in ``raw`` (JSON); ValueError when it is not a well-formed one."""
        if len(raw) > _MAX_STATE_BYTES:
            raise ValueError(f"{len(raw)} bytes, more than a state holds")
        try:
            data = json.loads(raw)
        except RecursionError as exc:  # deeply nested brackets
            raise ValueError("nested too deeply") from exc
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def version(key: str) -> int | None:
            return _version_or_none(key, data.get(key))

        return cls(
            current=version("current"),
            previous=version("previous"),
            highest=version("highest") or 0,
            held_back=version("held_back"),
            released=version("released"),
        )

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    def floor_json(self) -> bytes:
        """What floor.json keeps: the state without the active versions."""
        return json.dumps({"highest": self.highest, "held_back": self.held_back, "released": self.released}).encode()


def _version_or_none(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f"{key} is {value!r}, not a version")
    return value or None


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

    def _state(self) -> StoreState:
        """The store's state; a missing or unreadable state.json is rebuilt from what is on disk."""
        try:
            raw: bytes | None = _read_small(self.root / STATE_FILE)
        except FileNotFoundError:
            raw = None
        floor = self._floor()
        if raw is not None:
            try:
                state = StoreState.parse(raw)
            except ValueError as exc:
                return self._rebuild(f"{STATE_FILE} is unreadable ({exc})", floor)
            # floor.json is written after state.json: its floor can only be the same or, when state.json
            # was replaced by an older copy, higher.
            return dataclasses.replace(state, highest=max(state.highest, floor.highest)) if floor else state
        if floor is None and not any(self.versions_dir.iterdir()):
            return StoreState()  # nothing installed yet
        return self._rebuild(f"{STATE_FILE} is missing", floor)

    def _floor(self) -> StoreState | None:
        """floor.json's floor and hold (no active versions); None when it is missing or unreadable."""
        try:
            return StoreState.parse(_read_small(self.root / FLOOR_FILE))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("%s: ignoring damaged %s: %s", self.model, FLOOR_FILE, exc)
            return None

    def _rebuild(self, why: str, floor: StoreState | None) -> StoreState:
        """A state from floor.json and the installed versions whose files verify; written back when possible.

        The active version becomes the newest such version, except one a rollback left (held back).
        """
        records = floor or StoreState()
        intact: list[int] = []
        for folder in self.versions_dir.iterdir():
            if not folder.name.isdigit():
                continue
            try:
                self.verify(self.installed(int(folder.name)))
            except (EdgerecError, OSError) as exc:
                log.warning("%s: installed version %s is not usable: %s", self.model, folder.name, exc)
                continue
            intact.append(int(folder.name))
        usable = sorted((v for v in intact if v != records.held_back), reverse=True)
        state = dataclasses.replace(
            records,
            current=usable[0] if usable else None,
            previous=usable[1] if len(usable) > 1 else None,
            highest=max([records.highest, *intact]),
        )
        log.warning(
            "%s: %s; rebuilt it from the files on disk: current %s, previous %s, highest activated %d%s",
            self.model,
            why,
            state.current,
            state.previous,
            state.highest,
            f", version {state.held_back} held back" if state.held_back else "",
        )
        try:
            self._write_state(state)
        except OSError as exc:
            log.warning("%s: cannot write the rebuilt state: %s", self.model, exc)
        return state

    def _write_state(self, state: StoreState) -> None:
        """state.json, then floor.json (so floor.json never holds a floor state.json has not reached)."""
        atomic_write_bytes(self.root / STATE_FILE, state.to_json())
        atomic_write_bytes(self.root / FLOOR_FILE, state.floor_json())

    def highest_activated(self) -> int:
        """The highest version this device ever activated (0 if none); rollbacks do not lower it."""
        state = self._state()
        return max(state.highest, state.current or 0)

    def held_back(self) -> int | None:
        """The version a rollback left, which a sync does not install again; None when there is none."""
        return self._state().held_back

    def reinstallable(self) -> int | None:
        """The one version not newer than the floor that a sync may install: held back or released (else None).

        The device activated it before, so installing it again replays nothing; while it is held
        back a sync only verifies it to say so.
        """
        state = self._state()
        return state.held_back or state.released

    def state_stamp(self) -> tuple[int, int] | None:
        """Changes whenever the active version changes (mtime and inode of the state file)."""
        try:
            st = (self.root / "state.json").stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> InstalledVersion | None:
        """The active version, or None before the first install."""
        version = self._state().current
        return self.installed(version) if version else None

    def previous(self) -> InstalledVersion | None:
        version = self._state().previous
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
        state = self._state()  # before the new folder is in place (a store without state.json reads as fresh)
        final = self.versions_dir / str(manifest.version)
        if final.exists():  # a re-install of the same version (its files were damaged): move it aside first,
            # so a crash in between leaves either folder under a name clean_stale() knows, never none.
            aside = self.staging_dir / f"{manifest.version}.replaced"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(staged, final)
        fsync_dir(self.versions_dir)
        shutil.rmtree(self.staging_dir / f"{manifest.version}.replaced", ignore_errors=True)
        previous = state.current if state.current != manifest.version else state.previous
        hold_ends = manifest.version >= (state.held_back or state.released or 0)
        self._write_state(
            StoreState(
                current=manifest.version,
                previous=previous,
                highest=max(manifest.version, state.highest, state.current or 0),
                held_back=None if hold_ends else state.held_back,
                released=None if hold_ends else state.released,
            )
        )
        log.info("%s: activated version %d (%s), previous %s", self.model, manifest.version, recipe, previous)
        self._prune(keep={manifest.version, previous})
        return InstalledVersion(manifest.version, recipe, manifest, artifact, final)

    def rollback(self) -> InstalledVersion:
        """Make the previous version current again and hold back the one left; ManifestError when there is none.

        The version left is not installed again until :meth:`clear_rollback` or a newer version.
        """
        state = self._state()
        if not state.previous:
            raise ManifestError(f"{self.model}: no previous version to roll back to")
        restored = self.installed(state.previous)
        self._write_state(
            dataclasses.replace(
                state,
                current=state.previous,
                previous=None,
                highest=max(state.highest, state.current or 0),
                held_back=state.current,
                released=None,
            )
        )
        log.warning("%s: rolled back from %s to %s", self.model, state.current, state.previous)
        return restored

    def clear_rollback(self) -> int | None:
        """Release the version a rollback held back, so the next sync may install it again; returns it (or None)."""
        state = self._state()
        if state.held_back is None:
            return None
        self._write_state(dataclasses.replace(state, held_back=None, released=state.held_back))
        log.warning("%s: version %d is no longer held back: the next sync may install it", self.model, state.held_back)
        return state.held_back

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


def _read_small(path: Path) -> bytes:
    """A state file's bytes (one more than a state holds at most, so an oversized one is noticed)."""
    with path.open("rb") as f:
        return f.read(_MAX_STATE_BYTES + 1)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(folder)
