"""The device's on-disk model store: installed versions, staging, downloads, and the switch.

``<data_dir>/device-id`` holds the device's stable id (:func:`stable_device_id`), shared by every
model in the data dir. Layout under ``<data_dir>/<model>/``::

    state.json            {"current": N, "previous": M, "highest": H, "held_back": R, "released": S};
                          replaced atomically: the switch (see StoreState)
    floor.json            {"highest": H, "held_back": R, "released": S}, replaced atomically after
                          state.json: the anti-rollback floor and rollback hold in a second place
    versions/<N>/         an installed version: manifest.pb, install.json, artifact files
    staging/<N>/          a version being built; removed at start if a sync died
    downloads/<id>.part   a payload being received (resumable), <id>.payload when complete
    sync.lock             held (flock) by the one sync allowed at a time on this model

A version directory is complete before it is renamed into ``versions/``, and it is
active only once ``state.json`` names it, so a crash at any point leaves the previous
state intact. The current and previous versions are kept; older ones are pruned.

A ``state.json`` that is missing (with versions installed) or unreadable is rebuilt from what
is on disk: ``floor.json`` and the installed versions whose files verify against their manifest
(a warning is logged). Losing either file loses neither the floor nor the hold.

Everything the store writes is private (files 0600, folders 0700). The model folder and the
three managed folders must be real folders: a store whose folder is a symbolic link is refused
(DataDirError), and cleaning removes links, never what they point to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerec.device.observer import SyncPhase
from edgerec.errors import DataDirError, DiskFullError, EdgerecError, IntegrityError, ManifestError, SyncBusyError
from edgerec.fsutil import (
    PRIVATE_DIR,
    atomic_output,
    atomic_write_bytes,
    fsync_dir,
    is_link_or_not_dir,
    make_private_dirs,
    open_private,
    remove_entry,
)
from edgerec.hashing import BLOCK_SIZE, HashingWriter, sha256_file
from edgerec.manifest import (
    Artifact,
    Manifest,
    SignedManifest,
    find_artifact,
    parse_manifest,
    validate_model_name,
)
from edgerec.tokens import DEVICE_ID_PATTERN

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


DEVICE_ID_FILE = "device-id"


def stable_device_id(data_dir: Path | str) -> str:
    """This device's id, kept in ``<data_dir>/device-id``: made once at random, the same in every later process.

    Two processes starting at once agree (the file appears whole, and only once). A damaged file is
    replaced by a new id, with a warning.
    """
    folder = Path(data_dir)
    make_private_dirs(folder)
    path = folder / DEVICE_ID_FILE
    found = _read_device_id(path)
    if found is not None:
        return found
    made = f"edgerec-{secrets.token_hex(12)}"
    if path.exists() or path.is_symlink():
        log.warning("%s is damaged: this device gets a new id, %s", path, made)
        remove_entry(path)
    staged = folder / f".{DEVICE_ID_FILE}.{secrets.token_hex(6)}"
    fd = open_private(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(made.encode())
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: its id stands
            os.link(staged, path)  # appears whole, never half-written
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(folder)
    return _read_device_id(path) or made


def _read_device_id(path: Path) -> str | None:
    """The id in ``path`` if it holds a valid one (a regular file, not a link), else None."""
    try:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = f.read(256)
    text = raw.decode("ascii", errors="replace").strip()
    return text if DEVICE_ID_PATTERN.fullmatch(text) else None


LOCK_FILE = "sync.lock"
DEFAULT_LOCK_WAIT_S = 5.0
"""How long a sync waits for another one on the same model before SyncBusyError (a short overlap passes)."""
_PAYLOAD_ID = re.compile(r"[0-9a-f]{64}")
_DOWNLOAD_SUFFIXES = (".part", ".payload")


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

    def __init__(self, data_dir: Path | str, model: str, *, lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> None:
        self.root = Path(data_dir) / validate_model_name(model)
        self.model = model
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.downloads_dir = self.root / "downloads"
        # A second sync on this model waits this long for the first, then raises SyncBusyError.
        self.lock_wait_s = lock_wait_s
        make_private_dirs(self.root.parent)
        for folder in (self.root, self.versions_dir, self.staging_dir, self.downloads_dir):
            if is_link_or_not_dir(folder):
                raise DataDirError(f"{folder} is a symbolic link or not a folder; the SDK only manages real folders")
            make_private_dirs(folder)
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

    @contextmanager
    def sync_lock(self) -> Iterator[None]:
        """Hold this model's sync lock: one sync at a time per data dir, across threads and processes.

        Waits up to ``lock_wait_s`` for a sync holding it, then raises SyncBusyError. The lock is
        the kernel's (flock), so a sync that dies releases it with its process.
        """
        fd = open_private(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            deadline = time.monotonic() + self.lock_wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SyncBusyError(
                            f"{self.model}: another sync holds {self.root / LOCK_FILE} (waited {self.lock_wait_s:g} s)"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def begin_staging(self, version: int) -> Path:
        """A fresh, empty, private staging folder for ``version``."""
        folder = self.staging_dir / str(version)
        remove_entry(folder)
        folder.mkdir(mode=PRIVATE_DIR)
        return folder

    def download_path(self, payload_id: str) -> Path:
        """Where the payload ``payload_id`` (64 lowercase hex digits, else ManifestError) is received."""
        if not _PAYLOAD_ID.fullmatch(payload_id):
            raise ManifestError(f"payload id {payload_id[:80]!r} is not 64 lowercase hex digits")
        return self.downloads_dir / f"{payload_id}.part"

    def downloaded_bytes(self, payload_id: str) -> int:
        """Bytes of ``payload_id`` already here (its finished file or its ``.part``); 0 when none."""
        part = self.download_path(payload_id)
        for path in (part.with_suffix(".payload"), part):
            if _is_regular_file(path):
                return path.stat().st_size
        return 0

    def remove_stale_downloads(self, keep: Iterable[str]) -> list[str]:
        """Remove every download that is not of a payload id in ``keep``; returns the names removed."""
        wanted = set(keep)
        removed = []
        for entry in sorted(os.listdir(self.downloads_dir)):
            path = self.downloads_dir / entry
            stem, suffix = os.path.splitext(entry)
            if suffix in _DOWNLOAD_SUFFIXES and stem in wanted and _is_regular_file(path):
                continue
            remove_entry(path)
            removed.append(entry)
        if removed:
            log.info("%s: removed %d stale download(s): %s", self.model, len(removed), ", ".join(removed))
        return removed

    def free_bytes(self) -> int:
        """Bytes free for this store (for its user) on the filesystem holding it."""
        return shutil.disk_usage(self.root).free

    def check_room(self, needed: int, what: str) -> None:
        """Raise DiskFullError unless ``needed`` more bytes fit; nothing is written either way."""
        free = self.free_bytes()
        if needed > free:
            raise DiskFullError(
                f"no space left for {what} in {self.root}: it needs {needed} more bytes, {free} are free"
            )

    def activate(
        self,
        signed: SignedManifest,
        manifest: Manifest,
        recipe: str,
        staged: Path,
        on_step: Callable[[SyncPhase], None] | None = None,
    ) -> InstalledVersion:
        """Move a verified staged version into place and make it current, keeping the old one.

        ``on_step`` hears ACTIVATE (before the staged folder is moved into place), SWITCH (before
        ``state.json`` names it) and PRUNE (before old versions are removed): the points where a crash
        leaves the most to recover from.
        """
        step = on_step or _no_step
        artifact = find_artifact(manifest, recipe)
        if artifact is None:
            raise ManifestError(f"manifest has no {recipe!r} artifact")
        verify_files(staged, artifact)
        _write_private(staged / "manifest.pb", signed.SerializeToString())
        _write_private(staged / "install.json", json.dumps({"recipe": recipe}).encode())
        _fsync_tree(staged)
        step(SyncPhase.ACTIVATE)
        state = self._state()  # before the new folder is in place (a store without state.json reads as fresh)
        final = self.versions_dir / str(manifest.version)
        if final.exists():  # a re-install of the same version (its files were damaged): move it aside first,
            # so a crash in between leaves either folder under a name clean_stale() knows, never none.
            aside = self.staging_dir / f"{manifest.version}.replaced"
            remove_entry(aside)
            os.replace(final, aside)
        os.replace(staged, final)
        fsync_dir(self.versions_dir)
        remove_entry(self.staging_dir / f"{manifest.version}.replaced")
        previous = state.current if state.current != manifest.version else state.previous
        hold_ends = manifest.version >= (state.held_back or state.released or 0)
        step(SyncPhase.SWITCH)
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
        step(SyncPhase.PRUNE)
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
        """Remove what a dead sync left in staging (partial downloads are kept to resume); links are not followed."""
        for entry in os.listdir(self.staging_dir):
            remove_entry(self.staging_dir / entry)

    def clear_downloads(self) -> None:
        """Remove every kept download: called once the device is up to date and none can be reused."""
        self.remove_stale_downloads(())

    def _prune(self, keep: set[int | None]) -> None:
        for entry in os.listdir(self.versions_dir):
            if entry.isdigit() and int(entry) not in keep:
                remove_entry(self.versions_dir / entry)


def verify_files(directory: Path, artifact: Artifact) -> None:
    """Raise IntegrityError unless every artifact file under ``directory`` has its size and sha256."""
    for f in artifact.files:
        path = directory / f.path
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise IntegrityError(f"{f.path} is missing") from exc
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{f.path} is not a regular file")
        size = st.st_size
        if size != f.size:
            raise IntegrityError(f"{f.path} has {size} bytes, manifest says {f.size}")
        digest = sha256_file(path)
        if digest != f.sha256:
            raise IntegrityError(f"{f.path} sha256 {digest[:16]}… differs from the manifest's {f.sha256[:16]}…")


def _read_small(path: Path) -> bytes:
    """A state file's bytes (one more than a state holds at most, so an oversized one is noticed)."""
    with path.open("rb") as f:
        return f.read(_MAX_STATE_BYTES + 1)


def copy_verified(source: Path, out: Path, size: int, sha256: str) -> None:
    """Copy the regular file ``source`` to a new private file ``out`` (atomically), reading no more than
    ``size`` bytes and never through a symbolic link; IntegrityError unless it has ``size`` bytes with ``sha256``."""
    try:
        fd = open_private(source, os.O_RDONLY)
    except OSError as exc:
        raise IntegrityError(f"cannot read {source.name} as a regular file: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise IntegrityError(f"{source.name} is not a regular file of {size} bytes")
        with atomic_output(out) as dst:
            writer = HashingWriter(dst)
            while block := src.read(min(BLOCK_SIZE, size + 1 - writer.size)):
                if writer.size + len(block) > size:
                    raise IntegrityError(f"{source.name} grew past {size} bytes while being copied")
                writer.write(block)
            if writer.size != size or writer.hexdigest != sha256:
                raise IntegrityError(f"{source.name} does not have the sha256 its manifest gives")


def _no_step(phase: SyncPhase) -> None:
    pass


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new private file at ``path`` (the caller fsyncs)."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(folder)
