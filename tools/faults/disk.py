"""A full disk: syncs on a tmpfs with too little room (or no inode left) must fail cleanly and keep
the active model; the tmpfs helpers other scenarios use are here too."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import edgerec
import edgerec.device
from edgerec.device import EdgeClient
from edgerec.device.artifacts import choose_artifact
from edgerec.device.storage import ModelStore
from edgerec.errors import DiskFullError
from edgerec.registry import Registry
from edgerec.tools.faults.common import (
    MODEL,
    Summary,
    input_specs,
    installed_problems,
    local_prediction_problems,
    predict_offline,
    versions_under_test,
)

log = logging.getLogger(__name__)

PAGE: Final = 4096
# Where edgerec's code lives (device/ is installed as edgerec.device from its own folder).
_SOURCE_ROOTS: Final = tuple({Path(edgerec.__file__).parent, Path(edgerec.device.__file__).parent})


@dataclass
class DiskFullCase:
    """One sync on a filesystem with ``free_bytes`` left."""

    name: str
    free_bytes: int
    outcome: str = ""  # "DiskFullError", "installed", or what else was raised
    where: str = ""  # the edgerec function the ENOSPC came from
    problems: list[str] = field(default_factory=list)


@dataclass
class DiskFullReport:
    """Every fill level tried, or why the scenario was skipped."""

    cases: list[DiskFullCase]
    seconds: float
    skipped: str | None = None

    @property
    def failures(self) -> list[str]:
        return [f"{c.name} with {c.free_bytes} B free: {p}" for c in self.cases for p in c.problems]

    def summary(self) -> Summary:
        raised = Counter(c.where for c in self.cases if c.outcome == DiskFullError.__name__)
        outcomes = Counter(c.outcome for c in self.cases)
        details = (
            f"outcomes {dict(sorted(outcomes.items()))}; ENOSPC hit in "
            f"{', '.join(f'{w} x{n}' for w, n in sorted(raised.items())) or 'nothing'}"
        )
        survived = sum(not c.problems for c in self.cases)
        return Summary("disk-full", len(self.cases), survived, self.failures, details, self.seconds, self.skipped)


def mount_tmpfs(path: Path, size: int, *, remount: bool = False, inodes: int | None = None) -> None:
    """Mount (or remount) a tmpfs of ``size`` bytes; ``inodes`` caps its files and folders (0: no cap)."""
    options = f"{'remount,' if remount else ''}size={-(-size // PAGE) * PAGE}"
    if inodes is not None:
        options += f",nr_inodes={inodes}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)


class TmpfsUnavailable(Exception):
    """A tmpfs cannot be mounted here (not root, no mount command, or the kernel refused)."""


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` for the block (made if missing), then unmounted."""
    if os.geteuid() != 0:
        raise TmpfsUnavailable("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        raise TmpfsUnavailable("no mount command")
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount_tmpfs(path, size)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise TmpfsUnavailable(f"cannot mount a tmpfs: {detail!r}") from exc
    try:
        yield path
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("umount %s failed (%s); detaching it lazily", path, result.stderr.strip())
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def leave_free(mount_point: Path, free: int) -> None:
    """Resize the tmpfs at ``mount_point`` so that ``free`` bytes (rounded up to a page) are left."""
    mount_tmpfs(mount_point, used_bytes(mount_point) + free, remount=True)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _used_inodes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def _enospc_origin(exc: BaseException) -> str:
    """``file:function`` of the innermost edgerec frame the OSError behind ``exc`` went through."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return "?"
    stack = traceback.extract_tb(cause.__traceback__)
    if not stack:
        return "?"
    ours = [f for f in stack if any(Path(f.filename).is_relative_to(root) for root in _SOURCE_ROOTS)]
    frame = (ours or stack)[-1]
    return f"{Path(frame.filename).name}:{frame.name}"


def run_disk_full(
    registry: Registry,
    address: str,
    *,
    workdir: Path,
    fractions: Sequence[float] = (0.0, 0.02, 0.1, 0.3, 0.6, 0.9, 1.2),
) -> DiskFullReport:
    """Syncs on a tmpfs with too little room: the error must be DiskFullError, the active model must stay usable.

    An update (old version active) is tried with ``fractions`` of the artifact's size free, then
    at the edge (found by bisection: the most space that still fails, so the last write fails);
    a first install with a third of it, and with a bit more than the payload. After each
    series, space is freed and the sync must complete.
    """
    started = time.perf_counter()
    if os.geteuid() != 0:
        return DiskFullReport([], 0.0, skipped="mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        return DiskFullReport([], 0.0, skipped="no mount command")
    old, new = versions_under_test(registry)
    specs = input_specs(registry, new)
    _, manifest = registry.load_manifest(MODEL, new)
    artifact_bytes = sum(f.size for f in choose_artifact(manifest).files)  # what the device installs
    roomy = 8 * artifact_bytes + 4 * 1024 * 1024
    template = workdir / "diskfull-template"  # the old version installed, copied onto the tmpfs for each try
    shutil.rmtree(template, ignore_errors=True)
    with EdgeClient(server=address, model=MODEL, data_dir=template, insecure=True) as client:
        client.sync(target_version=old)
    mount_point = workdir / "diskfull"
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        mount_tmpfs(mount_point, roomy)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        return DiskFullReport([], 0.0, skipped=f"cannot mount a tmpfs: {detail!r}")
    cases: list[DiskFullCase] = []
    update = mount_point / "update"

    def try_update(free: int, name: str = "update") -> DiskFullCase:
        shutil.rmtree(update, ignore_errors=True)
        mount_tmpfs(mount_point, roomy + used_bytes(mount_point), remount=True)
        shutil.copytree(template, update)
        case = _full_disk_sync(name, update, mount_point, free, registry, address)
        expected = new if case.outcome == "installed" else old
        case.problems += installed_problems(ModelStore(update, MODEL), registry, expected)
        case.problems += local_prediction_problems(update, specs, expected)
        cases.append(case)
        return case

    try:
        failing, fitting = 0, None
        for fraction in fractions:
            free = int(fraction * artifact_bytes)
            if try_update(free).outcome == "installed":
                fitting = free
                break
            failing = free
        if fitting is None and try_update(roomy).outcome == "installed":
            fitting = roomy
        while fitting is not None and fitting - failing > PAGE:  # the most space that still fails
            middle = (failing + fitting) // 2
            if try_update(middle, "update, at the edge").outcome == "installed":
                fitting = middle
            else:
                failing = middle
        try_update(failing, "update, at the edge")
        cases.append(_freed_sync("update, space freed", update, mount_point, roomy, registry, address, new))
        fresh = mount_point / "fresh"
        for free in (artifact_bytes // 3, int(artifact_bytes * 1.2)):
            case = _full_disk_sync("first install", fresh, mount_point, free, registry, address)
            case.problems += installed_problems(ModelStore(fresh, MODEL), registry, None)
            with EdgeClient(server=None, model=MODEL, data_dir=fresh) as offline:
                prediction, _ = predict_offline(offline, specs, attempts=1)
            if prediction is not None:
                case.problems.append(f"predicted ({prediction.source}) with no model installed and no server")
            cases.append(case)
        cases.append(_freed_sync("first install, space freed", fresh, mount_point, roomy, registry, address, new))
        # Bytes to spare but no inode left: the first thing the sync creates (its staging folder) fails.
        # Last, because a tmpfs whose inode cap was lifted (nr_inodes=0) cannot be capped again.
        no_inodes = mount_point / "no-inodes"
        shutil.copytree(template, no_inodes)
        case = _full_disk_sync("update, no inode left", no_inodes, mount_point, roomy, registry, address, inodes=True)
        mount_tmpfs(mount_point, roomy + used_bytes(mount_point), remount=True, inodes=0)
        case.problems += installed_problems(ModelStore(no_inodes, MODEL), registry, old)
        case.problems += local_prediction_problems(no_inodes, specs, old)
        cases.append(case)
        cases.append(_freed_sync("no inode left, then freed", no_inodes, mount_point, roomy, registry, address, new))
        if not any(c.outcome == DiskFullError.__name__ for c in cases):
            cases[0].problems.append("no fill level made the sync run out of space")
    finally:
        result = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("umount %s failed (%s); detaching it lazily", mount_point, result.stderr.strip())
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
    return DiskFullReport(cases, time.perf_counter() - started)


def _full_disk_sync(
    name: str,
    data_dir: Path,
    mount_point: Path,
    free: int,
    registry: Registry,
    address: str,
    *,
    inodes: bool = False,
) -> DiskFullCase:
    """One sync with ``free`` bytes left (and, with ``inodes``, no inode left) on the tmpfs."""
    case = DiskFullCase(name, free)
    ModelStore(data_dir, MODEL)  # its folders exist before the space is measured
    cap = _used_inodes(mount_point) if inodes else None
    mount_tmpfs(mount_point, used_bytes(mount_point) + free, remount=True, inodes=cap)
    with EdgeClient(server=address, model=MODEL, data_dir=data_dir, insecure=True) as client:
        try:
            client.sync()
            case.outcome = "installed"
        except DiskFullError as exc:
            case.outcome, case.where = type(exc).__name__, _enospc_origin(exc)
        except Exception as exc:  # anything else is a finding
            case.outcome = type(exc).__name__
            case.where = _enospc_origin(exc)
            nospace = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            case.problems.append(
                f"raised {type(exc).__name__}{' (ENOSPC, untranslated)' if nospace else ''} at {case.where}: {exc}"
            )
        if leftover := sorted(p.name for p in client.store.staging_dir.iterdir()):
            case.problems.append(f"staging left behind: {leftover}")
    log.info("disk full (%s, %d B free): %s at %s %s", name, free, case.outcome, case.where, case.problems or "")
    return case


def _freed_sync(
    name: str, data_dir: Path, mount_point: Path, size: int, registry: Registry, address: str, new: int
) -> DiskFullCase:
    case = DiskFullCase(name, size)
    mount_tmpfs(mount_point, size + used_bytes(mount_point), remount=True)
    with EdgeClient(server=address, model=MODEL, data_dir=data_dir, insecure=True) as client:
        try:
            result = client.sync()
            case.outcome = "installed" if result.updated else "current"
        except Exception as exc:
            case.outcome = type(exc).__name__
            case.problems.append(f"sync after freeing space raised {type(exc).__name__}: {exc}")
        store = client.store
    case.problems += installed_problems(store, registry, new)
    return case
