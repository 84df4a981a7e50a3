"""Sync: check for a new version, fetch and apply its payloads, verify, health-check, switch.

:class:`Syncer` walks one update down the path: CheckUpdate (through the :class:`UpdateChannel`),
the pure trust rules (:mod:`edgerec.trust`), the unsigned plan's checks (:mod:`edgerec.device.plan`),
payload bytes (:class:`~edgerec.device.transport.fetcher.PayloadFetcher`: URLs, then the servers),
codecs into a staging folder, verification, the golden cases (:mod:`edgerec.device.health`), and
the store's atomic switch. It tells an :class:`~edgerec.device.observer.Observer` each phase as it
starts.

What it builds on: the active version when its files verify. When they do not (a damaged file),
the previous version if that one verifies (a small delta repairs the damage), else nothing (full
files). A device on a partial version (a budgeted approximation of a full one) may move to the
full version it approximates although that version's number is lower: its own signed manifest
names it.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edgerec.artifacts import DEFAULT_RECIPES
from edgerec.codecs import CODEC_NAMES, apply_patch
from edgerec.device.artifacts import available_runtimes
from edgerec.device.health import health_check
from edgerec.device.observer import Observer, SyncEvent, SyncPhase, notify_sync
from edgerec.device.plan import COPY, check_plan
from edgerec.device.storage import InstalledVersion, ModelStore, copy_verified, verify_files
from edgerec.device.transport.base import UpdateChannel
from edgerec.device.transport.fetcher import PayloadFetcher
from edgerec.device.transport.http import HttpClient
from edgerec.errors import (
    DiskFullError,
    EdgerecError,
    HealthCheckError,
    IntegrityError,
    ManifestError,
    ModelRuntimeError,
    PatchError,
    PayloadBudgetError,
    UnknownBaseVersionError,
)
from edgerec.fsutil import make_private_dirs, remove_entry
from edgerec.manifest import PARTIAL_OF, Artifact, Manifest
from edgerec.trust import ED25519, OFF, UpdateVerifier, VerifiedAnswer
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)

INSTALL_FAILURES: tuple[type[Exception], ...] = (
    HealthCheckError,
    IntegrityError,
    PatchError,
    ManifestError,
    ModelRuntimeError,
    DiskFullError,
)
"""Errors of an install that say something about the offered version on this device, and are reported
for the rollout gates. A dropped link or a refused signature says nothing about the version (and a
network could forge the latter), so neither is reported."""

SUPPORTED_CODECS = CODEC_NAMES
# The runtimes installed here (onnxruntime, and litert with the tflite extra): the server plans only those.
SUPPORTED_RUNTIMES = available_runtimes()

# Random bytes sent with each check; the server echoes them in its signed freshness statement.
NONCE_BYTES = 16

# (file path, bytes received for it, its payload size)
FileProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SyncResult:
    """What a sync did. ``codec`` names the payload codecs used ("none" when already current)."""

    version: int
    previous_version: int | None
    updated: bool
    codec: str
    payload_bytes: int
    full_bytes: int
    seconds: float
    recipe: str
    payloads: list[dict[str, object]] = field(default_factory=list)
    # True when a delta failed to apply and the full files were downloaded instead.
    fell_back_to_full: bool = False
    # Why the delta failed ("WrongBaseError: ..."), when the sync fell back to full files.
    fallback_reason: str | None = None
    # The version offered but not installed because this device rolled back from it (see
    # EdgeClient.clear_rollback), with why; None when nothing was held back.
    held_back_version: int | None = None
    held_back_reason: str | None = None
    # "ed25519": signatures and freshness were verified; "off": the caller opted out (insecure).
    verification: str = ED25519
    # The newest full version the server's signed statement named; None when verification is off.
    latest_version: int | None = None
    # The payload bytes this sync fetched, by source: "grpc" (FetchPayload), "http" (the plan's URLs), or
    # an added transport's name. They add up to ``payload_bytes``.
    bytes_by_source: dict[str, int] = field(default_factory=dict)


@dataclass
class _Base:
    """What this sync builds on, and the one version at or below the floor it may install."""

    version: InstalledVersion | None
    reinstallable: int | None


class Syncer:
    """Brings a ModelStore to the server's target version, keeping the old one until the new one works.

    ``connection`` answers update checks (a :class:`~edgerec.device.transport.grpc.ServerConnection`
    or :class:`~edgerec.device.transport.grpc.ServerPool`); ``fetcher`` gets payload bytes (by
    default: the plan's URLs over HTTP, then the connection's servers); ``codecs`` are the payload
    codecs offered to the server (a plan using another one is refused).
    """

    def __init__(
        self,
        store: ModelStore,
        connection: UpdateChannel,
        *,
        verifier: UpdateVerifier,
        recipes: tuple[str, ...] = DEFAULT_RECIPES,
        codecs: tuple[str, ...] = SUPPORTED_CODECS,
        device_id: str = "",
        max_payload_bytes: int = 0,
        channel: str = "",
        labels: Mapping[str, str] | None = None,
        app_version: str = "",
        fetcher: PayloadFetcher | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.verifier = verifier
        # The version the sync in progress installs (None until the answer names one): what an install failure names.
        self.installing: int | None = None
        self.store = store
        self.connection = connection
        self.recipes = recipes
        self.codecs = codecs
        self.device_id = device_id
        self.max_payload_bytes = max_payload_bytes
        # What the release policy reads (unsigned: it picks the offer; the signed statement echoes it).
        self.channel = channel
        self.labels = dict(labels or {})
        self.app_version = app_version
        self.observer = observer
        self._owns_fetcher = fetcher is None
        self.fetcher = fetcher or PayloadFetcher(
            connection.config, servers=connection.payload_transports, http=HttpClient(connection.config)
        )
        self._fetched: Counter[str] = Counter()
        self._fresh_urls: dict[str, list[str]] | None = None

    def close(self) -> None:
        if self._owns_fetcher:
            self.fetcher.close()

    def sync(self, target_version: int = 0, progress: FileProgress | None = None) -> SyncResult:
        """Install the target version if it is newer; on a patch that fails, retry once with full files.

        One sync at a time per data dir: another one waits for the store's sync lock, then raises
        SyncBusyError (see ``ModelStore.sync_lock``).
        """
        self.installing = None
        try:
            with self.store.sync_lock():
                result = self._sync_locked(target_version, progress)
        except BaseException as exc:
            self._event(SyncPhase.FAILED, detail=f"{type(exc).__name__}: {exc}")
            raise
        detail = "updated" if result.updated else "held back" if result.held_back_version else "current"
        self._event(SyncPhase.DONE, version=result.version, detail=detail)
        return result

    def _sync_locked(self, target_version: int, progress: FileProgress | None) -> SyncResult:
        started = time.perf_counter()
        self._fetched = Counter()
        self._fresh_urls = None
        if self.verifier.verification == OFF:
            log.warning(
                "syncing %s with verification OFF (insecure): nothing the server sends is checked for a signature",
                self.store.model,
            )
        self.store.clean_stale()
        base = self._base()
        try:
            response, answer = self._ask(base, target_version)
        except UnknownBaseVersionError as exc:
            log.warning("server cannot diff from what this device runs (%s); asking for full files", exc)
            base = self._nothing()
            response, answer = self._ask(base, target_version)
        active = self._readable_current()
        latest = answer.freshness.latest_version if answer.freshness is not None else None
        held_back = self.store.held_back()
        offered = answer.manifest.version if answer.manifest is not None else None
        if offered is None or offered == held_back:
            self.store.clear_downloads()
            return SyncResult(
                version=active.version if active else 0,
                previous_version=self._previous_version(),
                updated=False,
                codec="none",
                payload_bytes=0,
                full_bytes=response.full_bytes,
                seconds=time.perf_counter() - started,
                recipe=active.recipe if active else "",
                held_back_version=held_back if offered is not None else None,
                held_back_reason=_held_back_reason(offered) if offered is not None else None,
                verification=self.verifier.verification,
                latest_version=latest,
            )
        fallback_reason = None
        self.installing = offered
        try:
            installed = self._install(response, answer, base, target_version, progress)
        except (PatchError, IntegrityError) as exc:
            if base.version is None or all(p.codec == "full" for p in response.payloads):
                raise
            log.warning("applying the delta failed (%s); downloading the full files once instead", exc)
            fallback_reason = f"{type(exc).__name__}: {exc}"
            base = self._nothing()
            self._fresh_urls = None
            response, answer = self._ask(base, target_version)
            installed = self._install(response, answer, base, target_version, progress)
        codecs = sorted({p.codec for p in response.payloads if p.codec != "copy"}) or ["copy"]
        return SyncResult(
            version=installed.version,
            previous_version=active.version if active else None,
            updated=True,
            codec="+".join(codecs),
            payload_bytes=sum(self._fetched.values()),
            full_bytes=response.full_bytes,
            seconds=time.perf_counter() - started,
            recipe=installed.recipe,
            payloads=[
                {"path": p.path, "codec": p.codec, "size": p.size, "target_size": p.target_size}
                for p in response.payloads
            ],
            fell_back_to_full=fallback_reason is not None,
            fallback_reason=fallback_reason,
            verification=self.verifier.verification,
            latest_version=latest,
            bytes_by_source=dict(self._fetched),
        )

    # --- what to build on -------------------------------------------------------------------

    def _base(self) -> _Base:
        """The verified version to build on: the active one, else (damaged) the previous one, else none."""
        reinstallable = self.store.reinstallable()
        current = self._usable_current()
        if current is not None:
            # A partial version's signed manifest names the full version it approximates: moving there
            # replays nothing, though that version's number is lower.
            if reinstallable is None:
                reinstallable = _approximated(current)
            return _Base(current, reinstallable)
        damaged = self._readable_current()
        if damaged is None or reinstallable is not None:
            return _Base(None, reinstallable)
        previous = self._usable_previous()
        if previous is None:
            return _Base(None, None)
        log.warning(
            "%s: repairing version %d from the intact version %d (a delta, not the full files)",
            self.store.model,
            damaged.version,
            previous.version,
        )
        # Re-installing the damaged version, which this device activated before, replays nothing.
        return _Base(previous, damaged.version)

    def _nothing(self) -> _Base:
        """Build on nothing: a device asking for full files (the trust floor relaxes for a damaged copy)."""
        return _Base(None, self.store.reinstallable())

    # --- the checks -------------------------------------------------------------------------

    def _ask(self, base: _Base, target_version: int) -> tuple[update_pb2.CheckUpdateResponse, VerifiedAnswer]:
        """One CheckUpdate (with a fresh nonce) and the verified answer to it."""
        request = self._request(base.version, target_version)
        request.nonce = secrets.token_bytes(NONCE_BYTES)
        # The connection names its token's device when the request names none: the statement echoes that id.
        request.device_id = request.device_id or self.connection.device_id
        self._event(SyncPhase.CHECK, version=request.current_version)
        response = self.connection.check_update(request)
        answer = self.verifier.verify_answer(
            request,
            response,
            highest_activated=self.store.highest_activated(),
            reinstallable=base.reinstallable,
            now=datetime.now(UTC),
        )
        return response, answer

    def _request(self, current: InstalledVersion | None, target_version: int) -> update_pb2.CheckUpdateRequest:
        return update_pb2.CheckUpdateRequest(
            model=self.store.model,
            current_version=current.version if current else 0,
            current_sha256=current.artifact.digest if current else "",
            current_recipe=current.recipe if current else "",
            runtimes=list(SUPPORTED_RUNTIMES),
            codecs=list(self.codecs),
            recipes=list(self.recipes),
            target_version=target_version,
            device_id=self.device_id,
            max_payload_bytes=self.max_payload_bytes,
            channel=self.channel,
            labels=self.labels,
            app_version=self.app_version,
        )

    def _refreshed_urls(
        self, base: _Base, target_version: int, manifest: Manifest, artifact: Artifact
    ) -> dict[str, list[str]]:
        """Fresh payload URLs from a second CheckUpdate (once per sync), if the server still offers that artifact."""
        if self._fresh_urls is None:
            self._fresh_urls = {}
            response, answer = self._ask(base, target_version)
            same = (
                answer.manifest is not None
                and answer.artifact is not None
                and answer.manifest.version == manifest.version
                and answer.artifact.digest == artifact.digest
            )
            if same and answer.artifact is not None:
                plan = check_plan(response.payloads, answer.artifact, base.version, self.codecs)
                self._fresh_urls = {p.payload_id: list(p.urls) for p in plan}
        return self._fresh_urls

    # --- the install ------------------------------------------------------------------------

    def _install(
        self,
        response: update_pb2.CheckUpdateResponse,
        answer: VerifiedAnswer,
        base: _Base,
        target_version: int,
        progress: FileProgress | None,
    ) -> InstalledVersion:
        """Fetch, build, check and activate the verified offered version; on failure nothing changes."""
        manifest, artifact = answer.manifest, answer.artifact
        assert manifest is not None and artifact is not None  # an answer offering an update
        plan = check_plan(response.payloads, artifact, base.version, self.codecs)
        payload_bytes = sum(p.size for p in plan)
        if self.max_payload_bytes and payload_bytes > self.max_payload_bytes:
            raise PayloadBudgetError(
                f"version {manifest.version} costs {payload_bytes} payload bytes, "
                f"over this device's budget of {self.max_payload_bytes}"
            )
        self._event(SyncPhase.PLAN, version=manifest.version, total=payload_bytes)
        self._make_room(plan, manifest.version)

        def fresh_urls(payload_id: str) -> list[str]:
            return self._refreshed_urls(base, target_version, manifest, artifact).get(payload_id, [])

        staged: Path | None = None
        try:
            staged = self.store.begin_staging(manifest.version)
            for payload in plan:
                self._build_file(payload, base.version, staged, progress, fresh_urls)
            self._event(SyncPhase.VERIFY, version=manifest.version)
            verify_files(staged, artifact)
            self._event(SyncPhase.HEALTH, version=manifest.version)
            health_check(staged, manifest, artifact)
            installed = self.store.activate(
                response.manifest,
                manifest,
                response.recipe,
                staged,
                on_step=lambda phase: self._event(phase, version=manifest.version),
            )
        except OSError as exc:
            _discard(staged)
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left for version {manifest.version} in {self.store.root}") from exc
            raise
        except BaseException:
            _discard(staged)
            raise
        self._event(SyncPhase.ACTIVATED, version=manifest.version)
        self.store.clear_downloads()
        return installed

    def _readable_current(self) -> InstalledVersion | None:
        """The active version even when its files are damaged; None when its state cannot be read."""
        try:
            return self.store.current()
        except EdgerecError:
            return None

    def _previous_version(self) -> int | None:
        previous = self.store.previous()
        return previous.version if previous else None

    def _usable_current(self) -> InstalledVersion | None:
        """The active version if its files are intact; a damaged one is reported as none."""
        try:
            current = self.store.current()
            if current is not None:
                self.store.verify(current)
            return current
        except EdgerecError as exc:
            log.warning("active version is damaged (%s)", exc)
            return None

    def _usable_previous(self) -> InstalledVersion | None:
        """The previous version if its files are intact, else None."""
        try:
            previous = self.store.previous()
            if previous is not None:
                self.store.verify(previous)
            return previous
        except EdgerecError as exc:
            log.warning("previous version is not usable either (%s); syncing from scratch", exc)
            return None

    def _make_room(self, plan: list[update_pb2.Payload], version: int) -> None:
        """Drop downloads this plan does not use, then DiskFullError unless what it still needs fits."""
        fetched = [p for p in plan if p.codec != COPY]
        self.store.remove_stale_downloads(p.payload_id for p in fetched)
        needed = sum(max(p.size - self.store.downloaded_bytes(p.payload_id), 0) for p in fetched)
        needed += sum(p.target_size for p in plan)  # the staged files
        self.store.check_room(needed, f"version {version}")

    def _build_file(
        self,
        payload: update_pb2.Payload,
        base: InstalledVersion | None,
        staged: Path,
        progress: FileProgress | None,
        fresh_urls: Callable[[str], list[str]],
    ) -> None:
        """Build one staged file from a checked plan entry (see :func:`edgerec.device.plan.check_plan`)."""
        out = staged / payload.path
        make_private_dirs(out.parent)
        # The plan names a base only as a file of the verified version it builds on.
        base_file = base.file(payload.base_path) if base is not None and payload.base_path else None
        if payload.codec == COPY:
            assert base_file is not None
            self._event(SyncPhase.APPLY, path=payload.path, detail=COPY)
            copy_verified(base_file, out, payload.target_size, payload.target_sha256)
            return
        part = self.store.download_path(payload.payload_id)
        self._event(
            SyncPhase.DOWNLOAD,
            path=payload.path,
            done=self.store.downloaded_bytes(payload.payload_id),
            total=payload.size,
            detail=payload.codec,
        )
        observer, model, path = self.observer, self.store.model, payload.path

        def written(done: int, total: int, source: str) -> None:
            if observer is not None:
                notify_sync(
                    observer, SyncEvent(SyncPhase.PROGRESS, model, path=path, done=done, total=total, source=source)
                )
            if progress is not None:
                progress(path, done, total)

        download = self.fetcher.download(
            model,
            payload,
            part,
            on_write=written if observer is not None or progress is not None else None,
            on_event=self._notify,
            refresh=lambda: fresh_urls(payload.payload_id),
        )
        self._fetched.update(download.bytes_by_source)
        self._event(SyncPhase.APPLY, path=payload.path, detail=payload.codec)
        try:
            apply_patch(
                base_file,
                download.path,
                out,
                codec=payload.codec,
                target_size=payload.target_size,
                target_sha256=payload.target_sha256,
            )
        except (IntegrityError, PatchError):
            download.path.unlink(missing_ok=True)  # a bad payload must be fetched again, not reused
            raise

    # --- the observer -----------------------------------------------------------------------

    def _event(
        self, phase: SyncPhase, *, version: int = 0, path: str = "", done: int = 0, total: int = 0, detail: str = ""
    ) -> None:
        if self.observer is not None:
            event = SyncEvent(
                phase, self.store.model, version=version, path=path, done=done, total=total, detail=detail
            )
            notify_sync(self.observer, event)

    def _notify(self, event: SyncEvent) -> None:
        notify_sync(self.observer, event)


def _approximated(installed: InstalledVersion) -> int | None:
    """The full version a partial version approximates (its signed ``edgerec.partial_of``), if lower; else None."""
    named = installed.manifest.annotations.get(PARTIAL_OF, "")
    if not named.isdigit():
        return None
    version = int(named)
    return version if 0 < version < installed.version else None


def _held_back_reason(version: int) -> str:
    return (
        f"version {version} is held back: this device rolled back from it after it failed here; it is "
        "installed again once an operator clears the rollback (edgerec device clear-rollback) or a newer version comes"
    )


def _discard(staged: Path | None) -> None:
    """Remove a staging folder a failed install leaves (None: it was never made)."""
    if staged is not None:
        remove_entry(staged)
