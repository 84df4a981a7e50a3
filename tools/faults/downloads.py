"""The device's downloads: two syncs at once, a stale ``.part``, and hostile plans on a small disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgerec.artifacts import DEFAULT_RECIPES, DEFAULT_RUNTIMES
from edgerec.codecs import CODEC_NAMES, max_payload_size
from edgerec.device import EdgeClient
from edgerec.device.storage import ModelStore
from edgerec.device.transport import ServerConnection, TransportConfig
from edgerec.errors import DiskFullError, EdgerecError, IntegrityError, ManifestError
from edgerec.registry import Registry
from edgerec.tools.faults.common import (
    MODEL,
    QUICK_RETRY,
    Summary,
    input_specs,
    installed_problems,
    leftover_files,
    local_prediction_problems,
    serving_update_service,
    versions_under_test,
)
from edgerec.tools.faults.disk import TmpfsUnavailable, leave_free, tmpfs
from edgerec.tools.faults.kills import CHILD_CODE
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)


@dataclass
class DownloadCase:
    """One run of a downloads scenario."""

    name: str
    outcome: str = ""
    details: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class DownloadsReport:
    """Every downloads case, or why some were skipped."""

    cases: list[DownloadCase]
    seconds: float
    skipped: str | None = None

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {p}" for c in self.cases for p in c.problems]

    def summary(self) -> Summary:
        details = "; ".join(f"{c.name}: {c.outcome}{f' ({c.details})' if c.details else ''}" for c in self.cases)
        survived = sum(not c.problems for c in self.cases)
        return Summary("downloads", len(self.cases), survived, self.failures, details, self.seconds, self.skipped)


def planned_update(address: str, data_dir: Path) -> update_pb2.CheckUpdateResponse:
    """The server's plan from the version active in ``data_dir`` to the latest, asked as a device asks."""
    current = ModelStore(data_dir, MODEL).current()
    request = update_pb2.CheckUpdateRequest(
        model=MODEL,
        current_version=current.version if current else 0,
        current_sha256=current.artifact.digest if current else "",
        current_recipe=current.recipe if current else "",
        runtimes=list(DEFAULT_RUNTIMES),
        codecs=list(CODEC_NAMES),
        recipes=list(DEFAULT_RECIPES),
    )
    connection = ServerConnection(address, TransportConfig(retry=QUICK_RETRY))
    try:
        return connection.check_update(request)
    finally:
        connection.close()


def bytes_needed(plan: update_pb2.CheckUpdateResponse) -> int:
    """What a sync of ``plan`` writes at most: its payloads and the files they build."""
    return sum(p.size + p.target_size for p in plan.payloads)


def _old_device(registry: Registry, address: str, data_dir: Path) -> Path:
    """A data dir with the old version installed (made once, at ``data_dir``)."""
    if not data_dir.exists():
        old, _ = versions_under_test(registry)
        with EdgeClient(server=address, model=MODEL, data_dir=data_dir, insecure=True) as client:
            client.sync(target_version=old)
    return data_dir


def _part_overruns(downloads: Path, registry: Registry) -> dict[str, int]:
    """``.part`` files longer than their payload: name -> bytes over."""
    over = {}
    for part in downloads.glob("*.part"):
        with contextlib.suppress(OSError, EdgerecError):
            excess = part.stat().st_size - registry.payload(MODEL, part.name.removesuffix(".part")).size
            if excess > 0:
                over[part.name] = excess
    return over


def concurrent_syncs(
    registry: Registry, address: str, workdir: Path, *, lock_wait_s: float, download_seconds: float = 1.0
) -> DownloadCase:
    """Two processes sync one data dir at once (rate-limited so they overlap): one installs, the other
    waits for it (``lock_wait_s``) or gives up with SyncBusyError; no ``.part`` ever outgrows its payload."""
    name = f"two syncs at once, lock wait {lock_wait_s:g} s"
    case = DownloadCase(name)
    template = _old_device(registry, address, workdir / "downloads-template")
    data_dir = workdir / f"concurrent-{lock_wait_s:g}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(template, data_dir)
    payload = sum(p.size for p in planned_update(address, data_dir).payloads)
    spec = {
        "mode": "plain-sync",
        "server": address,
        "data_dir": str(data_dir),
        "rate": max(payload / download_seconds, 16 * 1024),
        "chunk_bytes": 16 * 1024,
        "lock_wait_s": lock_wait_s,
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    overruns: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while any(child.poll() is None for child in children) and time.monotonic() < deadline:
        overruns |= _part_overruns(data_dir / MODEL / "downloads", registry)
        time.sleep(0.005)
    outcomes = []
    for child in children:
        try:
            stdout, _ = child.communicate(timeout=max(deadline - time.monotonic(), 1))
            outcomes.append(str(json.loads(stdout.strip().splitlines()[-1])["outcome"]))
        except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError):
            child.kill()
            child.wait()
            outcomes.append("no answer")
    case.outcome = " + ".join(sorted(outcomes))
    allowed = {"installed", "current", "SyncBusyError"} if lock_wait_s < download_seconds else {"installed", "current"}
    if sorted(outcomes).count("installed") != 1 or not set(outcomes) <= allowed:
        case.problems.append(f"outcomes {outcomes}: one sync must install, the other {sorted(allowed - {'installed'})}")
    if overruns:
        case.problems.append(f".part files outgrew their payload: {overruns}")
    case.problems += installed_problems(ModelStore(data_dir, MODEL), registry, versions_under_test(registry)[1])
    if leftovers := leftover_files(ModelStore(data_dir, MODEL)):
        case.problems.append(f"download files never removed: {leftovers}")
    if not case.problems:
        shutil.rmtree(data_dir, ignore_errors=True)
    return case


def stale_part(registry: Registry, address: str, workdir: Path, *, damage: str) -> DownloadCase:
    """The biggest payload's ``.part`` is longer than the payload ("longer") or holds other bytes
    ("wrong-bytes"): the next sync starts it over, never fails on it, and installs."""
    case = DownloadCase(f"a .part with {'more bytes than its payload' if damage == 'longer' else 'wrong bytes'}")
    template = _old_device(registry, address, workdir / "downloads-template")
    data_dir = workdir / f"stale-part-{damage}"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(template, data_dir)
    plan = planned_update(address, data_dir)
    biggest = max((p for p in plan.payloads if p.payload_id), key=lambda p: p.size)
    part = ModelStore(data_dir, MODEL).download_path(biggest.payload_id)
    size = biggest.size + 4096 if damage == "longer" else biggest.size // 2
    part.write_bytes(os.urandom(size))
    with EdgeClient(server=address, model=MODEL, data_dir=data_dir, insecure=True) as client:
        try:
            result = client.sync()
            case.outcome = "installed" if result.updated else "current"
            case.details = f"{size} B .part for a {biggest.size} B payload; fetched {result.payload_bytes} B"
        except EdgerecError as exc:
            case.outcome = type(exc).__name__
            case.problems.append(f"the sync failed on a stale .part: {type(exc).__name__}: {exc}")
        store = client.store
    case.problems += installed_problems(store, registry, versions_under_test(registry)[1])
    if leftovers := leftover_files(store):
        case.problems.append(f"download files never removed: {leftovers}")
    if not case.problems:
        shutil.rmtree(data_dir, ignore_errors=True)
    return case


class HostilePlanService:
    """A real update service whose plans claim payloads of ``claim(payload)`` bytes and stream zeros for them.

    The signed manifest is the server's own; only the unsigned plan lies, as a man-in-the-middle's would.
    """

    def __init__(self, registry: Registry, claim: Callable[[update_pb2.Payload], int]) -> None:
        from edgerec.server.payloads import PayloadStore
        from edgerec.server.planner import UpdatePlanner
        from edgerec.server.update_service import ModelUpdateService

        outer = self

        class Service(ModelUpdateService):
            def CheckUpdate(self, request: Any, context: Any) -> update_pb2.CheckUpdateResponse:
                response = super().CheckUpdate(request, context)
                for payload in response.payloads:
                    if payload.codec != "copy":
                        payload.size = claim(payload)
                        payload.payload_id = payload.sha256 = sha256_hex(f"hostile {payload.path}".encode())
                        outer.claims[payload.payload_id] = payload.size
                return response

            def FetchPayload(self, request: Any, context: Any) -> Iterator[update_pb2.PayloadChunk]:
                size = outer.claims.get(request.payload_id)
                if size is None:
                    yield from super().FetchPayload(request, context)
                    return
                block = bytes(64 * 1024)
                offset = request.offset
                while context.is_active() and offset < size:
                    outer.sent += len(block)
                    yield update_pb2.PayloadChunk(offset=offset, data=block, total_size=size, crc32=zlib.crc32(block))
                    offset += len(block)

        self.claims: dict[str, int] = {}
        self.sent = 0
        self.service = Service(registry, UpdatePlanner(registry, PayloadStore(registry)))

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """This service on a free loopback port; yields its address."""
        with serving_update_service(self.service) as address:
            yield address


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HOSTILE_CLAIMS: Final[dict[str, Callable[[update_pb2.Payload], int]]] = {
    "a 2**40-byte payload": lambda payload: 1 << 40,
    "payloads at their codec's bound": lambda payload: max_payload_size(payload.codec, payload.target_size),
}
"""What a hostile plan claims for each payload it replaces."""


def hostile_payload_then_legit(
    registry: Registry, address: str, workdir: Path, mount_point: Path, claim_name: str
) -> DownloadCase:
    """On a disk with room for the update, a hostile plan's payload (zeros) must neither fill the disk nor
    outlive its sync: refused with a typed error, nothing active changed, then the honest update installs."""
    case = DownloadCase(f"hostile plan ({claim_name}), then the honest server")
    old, new = versions_under_test(registry)
    template = _old_device(registry, address, workdir / "downloads-template")
    data_dir = mount_point / "hostile"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(template, data_dir)
    specs = input_specs(registry, old)
    local_prediction_problems(data_dir, specs, old)  # makes the optimized-model cache before space is measured
    leave_free(mount_point, bytes_needed(planned_update(address, data_dir)) + (1 << 20))
    hostile = HostilePlanService(registry, HOSTILE_CLAIMS[claim_name])
    with hostile.serving() as hostile_address, EdgeClient(hostile_address, MODEL, data_dir, insecure=True) as client:
        try:
            client.sync()
            case.problems.append("the hostile plan was installed")
        except (ManifestError, DiskFullError, IntegrityError) as exc:
            case.outcome = type(exc).__name__
        except Exception as exc:  # anything else is a finding
            case.outcome = type(exc).__name__
            case.problems.append(f"the hostile plan raised {type(exc).__name__}: {exc}")
        downloads = sum(p.stat().st_size for p in client.store.downloads_dir.iterdir())
    case.details = f"{hostile.sent} B of zeros sent, {downloads} B kept in downloads"
    if downloads:
        case.problems.append(f"the refused payload left {downloads} B in downloads")
    case.problems += installed_problems(ModelStore(data_dir, MODEL), registry, old)
    case.problems += local_prediction_problems(data_dir, specs, old)
    with EdgeClient(server=address, model=MODEL, data_dir=data_dir, insecure=True) as client:
        try:
            client.sync()
            case.outcome += ", then installed"
        except Exception as exc:
            case.outcome += f", then {type(exc).__name__}"
            case.problems.append(f"the honest sync after the attack raised {type(exc).__name__}: {exc}")
    case.problems += installed_problems(ModelStore(data_dir, MODEL), registry, new)
    if not case.problems:
        shutil.rmtree(data_dir, ignore_errors=True)
    return case


def run_downloads(registry: Registry, address: str, *, workdir: Path) -> DownloadsReport:
    """Two syncs at once (one gives up, one waits), stale ``.part`` files, and hostile plans on a small disk."""
    started = time.perf_counter()
    cases = [
        concurrent_syncs(registry, address, workdir, lock_wait_s=0.0),
        concurrent_syncs(registry, address, workdir, lock_wait_s=60.0),
        stale_part(registry, address, workdir, damage="longer"),
        stale_part(registry, address, workdir, damage="wrong-bytes"),
    ]
    skipped = None
    try:
        _old_device(registry, address, workdir / "downloads-template")
        room = 8 * bytes_needed(planned_update(address, workdir / "downloads-template")) + (64 << 20)
        with tmpfs(workdir / "downloads-disk", room) as mount_point:
            for claim_name in HOSTILE_CLAIMS:
                cases.append(hostile_payload_then_legit(registry, address, workdir, mount_point, claim_name))
    except TmpfsUnavailable as exc:
        skipped = f"hostile plans on a small disk: {exc}"
    for case in cases:
        log.info("downloads: %s: %s %s %s", case.name, case.outcome, case.details, case.problems or "")
    return DownloadsReport(cases, time.perf_counter() - started, skipped)
