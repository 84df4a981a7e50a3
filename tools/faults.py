"""Fault injection for device sync: dropped links, SIGKILLed syncs and a full disk, all real.

Run ``python -m edgerec.tools.faults --drops 200 --kills 100 [--registry DIR]``. It builds (or
takes) a registry with two versions of the reference model, serves it on loopback and runs:

drops
    Fresh devices sync the latest version through a :class:`~edgerec.tools.linkproxy.LinkProxy`
    that cuts the TCP connection at seeded random offsets (1-3 cuts, or every N bytes). Each
    sync must end with the registry's exact files, and the bytes the device received on the
    wire (every connection, framing included) must stay within ``max_overhead`` of the payload.
kills
    A device sync runs in a subprocess (``python -c``, rate-limited) and is SIGKILLed either at a
    seeded random wall-clock instant or at a seeded random line of one phase (download, patch,
    verify, switch: phases the SDK's observer names; the child stops there and the parent kills
    it). Devices start with no model, with the old version active, or with the new one active but
    damaged (a repair, from the old version when it is intact). A fresh
    process on the same data dir must then predict from a fully verified model (old or new,
    every file's sha256 checked against the manifest and the registry) or have none if none
    was ever activated (or the active one is damaged), and complete the sync, resuming the
    ``.part`` download rather than restarting it. "Directed" kills stop at the sync phases around
    each rename and the switch, and also require that no download file is left behind.
disk-full
    The device data dir lives on a tmpfs (``mount -t tmpfs``, root only; skipped otherwise) too
    small for the update, at fill levels from empty to one page short (so every write in the
    pipeline runs out of space once), and with bytes to spare but no inode left (so the staging
    folder cannot be made): the sync must raise DiskFullError and leave the active model intact
    and loadable; once space is freed the sync must complete.
downloads
    Two processes sync one data dir at once: one installs, the other waits for it or gives up
    with SyncBusyError, and no ``.part`` ever outgrows its payload. A ``.part`` longer than its
    payload, or holding wrong bytes, is started over by the next sync, never an error. A hostile
    plan (a real server lying in its unsigned plan: a 2**40-byte payload, or payloads at their
    codec's bound, all zeros) on a tmpfs with room for the update: refused with a typed error,
    nothing kept in downloads, the active model intact; then the honest update installs there.

Prints a summary table; the exit code is non-zero on any failure. The runs exercise transport and
storage, not trust: devices sync from unsigned servers with verification off (``insecure=True``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import filecmp
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import numpy as np

import edgerec
import edgerec.device
from edgerec.codecs import CODEC_NAMES, max_payload_size
from edgerec.device import EdgeClient, Observer, RetryPolicy, SyncEvent, SyncPhase
from edgerec.device.storage import ModelStore
from edgerec.device.transport import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_RECEIVE_WINDOW_BYTES,
    ServerConnection,
    TransportConfig,
)
from edgerec.errors import (
    DiskFullError,
    EdgerecError,
    IntegrityError,
    ManifestError,
    NoModelAvailableError,
    TransportError,
)
from edgerec.hashing import sha256_file
from edgerec.registry import Registry
from edgerec.tools.linkproxy import LinkProxy
from edgerec.v1 import update_pb2

MODULE: Final = "edgerec.tools.faults"
log = logging.getLogger(MODULE)

MODEL: Final = "ctr"
PHASES: Final = ("download", "patch", "verify", "switch")
KILL_KINDS: Final = (*PHASES, "wall")
"""A kill at a random line of one phase, or ("wall") at a random instant of the whole process."""

# The sync phases (the SDK's observer names them) that open each fault phase. A phase lasts until
# the next one opens; the sync starts in "check".
PHASE_OF: Final = {
    SyncPhase.CHECK: "check",
    SyncPhase.PLAN: "check",
    SyncPhase.DOWNLOAD: "download",
    SyncPhase.APPLY: "patch",
    SyncPhase.VERIFY: "verify",
    SyncPhase.HEALTH: "verify",
    SyncPhase.ACTIVATE: "switch",
}
# Fast retries for the runs (the SDK's defaults wait longer between tries).
QUICK_RETRY: Final = RetryPolicy(backoff_initial_s=0.05)

CHILD_CODE: Final = "import sys; from edgerec.tools.faults import child_main; sys.exit(child_main(sys.argv[1]))"
_KILL_POINT_WAIT_S = 60.0
DEVICE_RECIPES: Final = ("int8", "fp32")  # EdgeClient's default preference
# Where edgerec's code lives (device/ is installed as edgerec.device from its own folder).
_SOURCE_ROOTS: Final = tuple({Path(edgerec.__file__).parent, Path(edgerec.device.__file__).parent})
_PAGE = 4096


# --- the registry and the server ---------------------------------------------------------


def build_registry(root: Path, *, size: str = "small", seed: int = 3, samples: int = 20_000) -> Registry:
    """Train, export and publish two versions of the reference model (v2: one more small day on v1)."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.publish import publish

    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=seed)
    registry = Registry(root)
    sample = generator.day(99, 4)
    v1 = build_and_train(config, generator, day=0, num_samples=samples, epochs=1)
    v2 = build_and_train(config, generator, day=1, num_samples=max(samples // 20, 256), base_state=v1.state_dict())
    for name, model in (("v1", v1), ("v2", v2)):
        publish(export_program(model, root / "sources" / f"{name}.pt2", sample), MODEL, registry)
    log.info("built a %s registry with versions %s in %s", size, registry.versions(MODEL), root)
    return registry


def open_registry(path: Path | None, workdir: Path, *, size: str = "small") -> Registry:
    """The registry at ``path`` if it holds two versions of the model, else one built there (or in ``workdir``)."""
    root = path if path is not None else workdir / "registry"
    if (root / "index.sqlite").exists():
        registry = Registry(root)
        with contextlib.suppress(EdgerecError):
            if len(registry.versions(MODEL, include_partial=False)) >= 2:
                return registry
        raise ValueError(f"{root} is a registry without two versions of {MODEL!r}")
    return build_registry(root, size=size)


def versions_under_test(registry: Registry) -> tuple[int, int]:
    """(old, new): the two latest full versions of the model."""
    versions = registry.versions(MODEL, include_partial=False)
    if len(versions) < 2:
        raise ValueError(f"the registry needs two versions of {MODEL!r}, has {versions}")
    return versions[-2], versions[-1]


@contextlib.contextmanager
def serving(registry: Registry) -> Iterator[str]:
    """A real gRPC server over ``registry`` on a free loopback port; yields its address."""
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0"))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)


# --- checks shared by every scenario ---------------------------------------------------------


def installed_problems(store: ModelStore, registry: Registry, expected: int | None) -> list[str]:
    """Why the active version is not ``expected`` with every file intact and identical to the registry."""
    try:
        current = store.current()
    except EdgerecError as exc:
        return [f"the active version is unreadable: {exc}"]
    version = current.version if current is not None else None
    if version != expected:
        return [f"active version is {version}, expected {expected}"]
    if current is None:
        return []
    problems = []
    published = {f.path: f for f in registry.files(MODEL, current.version) if f.recipe == current.recipe}
    if set(published) != {f.path for f in current.artifact.files}:
        problems.append(f"version {version} ({current.recipe}) lists other files than the registry")
    for f in current.artifact.files:
        local = current.file(f.path)
        if not local.is_file():
            problems.append(f"{f.path} is missing")
            continue
        if sha256_file(local) != f.sha256:
            problems.append(f"{f.path} does not match the active manifest's sha256")
        source = registry.file_path(MODEL, current.version, f.path)
        if f.path in published and not filecmp.cmp(local, source, shallow=False):
            problems.append(f"{f.path} differs from the registry's file")
    return problems


def leftover_files(store: ModelStore) -> list[str]:
    """Files a finished sync should not leave: staging folders and downloads."""
    return sorted(
        str(p.relative_to(store.root)) for folder in (store.staging_dir, store.downloads_dir) for p in folder.iterdir()
    )


def zero_inputs(specs: Sequence[tuple[str, str, Sequence[int]]], batch: int = 2) -> dict[str, np.ndarray]:
    """Zeros for every (name, dtype, shape) input, dynamic dimensions set to ``batch``."""
    return {name: np.zeros([d if d >= 0 else batch for d in shape], dtype=dtype) for name, dtype, shape in specs}


def input_specs(registry: Registry, version: int) -> list[tuple[str, str, list[int]]]:
    _, manifest = registry.load_manifest(MODEL, version)
    return [(spec.name, str(np.dtype(spec.dtype)), list(spec.shape)) for spec in manifest.inputs]


LOCAL_SOURCES: Final = ("local", "cache")  # a cache entry is keyed by version and comes from a verified model


def predict_offline(
    client: EdgeClient, specs: Sequence[tuple[str, str, Sequence[int]]], attempts: int = 3
) -> tuple[Any, str | None]:
    """(prediction, None) or (None, "ErrorType: message") from a client without a server.

    A local answer later than the client's deadline (a loaded machine, the first run of a
    session) is cached when it arrives, so the call is retried a few times before giving up.
    """
    error = None
    for attempt in range(attempts):
        try:
            prediction = client.predict(zero_inputs(specs))
        except EdgerecError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if "deadline" not in str(exc) or attempt == attempts - 1:
                return None, error
            time.sleep(0.2)
            continue
        if str(prediction.source) in LOCAL_SOURCES or attempt == attempts - 1:
            return prediction, None
        time.sleep(0.2)
    return None, error


def local_prediction_problems(
    data_dir: Path, specs: Sequence[tuple[str, str, Sequence[int]]], version: int
) -> list[str]:
    """Why an offline client on ``data_dir`` cannot predict locally with ``version``."""
    with EdgeClient(server=None, model=MODEL, data_dir=data_dir) as client:
        prediction, error = predict_offline(client, specs)
    if prediction is None:
        return [f"no local prediction: {error}"]
    if str(prediction.source) not in LOCAL_SOURCES or prediction.version != version:
        return [f"prediction came from {prediction.source} version {prediction.version}, expected local {version}"]
    if not np.all(np.isfinite(prediction.scores)):
        return ["local prediction is not finite"]
    return []


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# --- scenario summaries --------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One row of the final table."""

    scenario: str
    runs: int
    survived: int
    failures: list[str]
    details: str
    seconds: float
    skipped: str | None = None


def format_summary(rows: Sequence[Summary]) -> str:
    """A plain-text table of the scenarios, then every failure."""
    header = ("scenario", "runs", "survived", "failed", "seconds", "details")
    table = [header] + [
        (
            r.scenario,
            str(r.runs),
            str(r.survived),
            str(len(r.failures)),
            f"{r.seconds:.1f}",
            f"SKIPPED: {r.skipped}" if r.skipped else r.details,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    lines.insert(1, "-" * max(len(line) for line in lines))
    for r in rows:
        lines.extend(f"FAIL {r.scenario}: {failure}" for failure in r.failures)
    return "\n".join(lines)


# --- drops ---------------------------------------------------------------------------------


@dataclass
class DropRun:
    """One sync of a fresh device through a cutting proxy."""

    index: int
    mode: str  # "cuts" (a list of per-connection cut points) or "every" (every connection after N bytes)
    plan: list[int]
    max_overhead: float
    cuts: int = 0
    connections: int = 0
    attempts: int = 0
    payload_bytes: int = 0  # the payloads' size: what the device had to receive
    wire_bytes: int = 0  # bytes down through the proxy: every connection, attempt, header and lost chunk
    device_bytes: int = 0  # payload bytes the SDK counted in its successful sync
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # a wrong or missing model, files left behind

    @property
    def overhead(self) -> float:
        """Wire bytes over the payload size, as a fraction of it."""
        return _ratio(self.wire_bytes - self.payload_bytes, self.payload_bytes)

    @property
    def over_budget(self) -> str | None:
        if not self.payload_bytes or self.overhead <= self.max_overhead:
            return None
        return (
            f"received {self.wire_bytes} B for {self.payload_bytes} B of payload: {self.overhead:.2%} over, "
            f"more than {self.max_overhead:.0%} ({self.cuts} cuts)"
        )


@dataclass
class DropsReport:
    """Every drop run, and a clean sync through the same kind of proxy for comparison."""

    runs: list[DropRun]
    baseline: DropRun
    seconds: float

    @property
    def correctness_failures(self) -> list[str]:
        return [f"drop #{r.index}: {p}" for r in [self.baseline, *self.runs] for p in r.problems]

    @property
    def overhead_failures(self) -> list[str]:
        return [f"drop #{r.index}: {r.over_budget}" for r in [self.baseline, *self.runs] if r.over_budget]

    @property
    def failures(self) -> list[str]:
        return self.correctness_failures + self.overhead_failures

    @property
    def survived(self) -> int:
        return sum(not r.problems and not r.over_budget for r in self.runs)

    @property
    def worst_overhead(self) -> float:
        return max((r.overhead for r in self.runs), default=0.0)

    @property
    def mean_overhead(self) -> float:
        return sum(r.overhead for r in self.runs) / len(self.runs) if self.runs else 0.0

    @property
    def lost_per_cut(self) -> float:
        """Mean wire bytes each cut cost beyond a clean sync."""
        cuts = sum(r.cuts for r in self.runs)
        extra = sum(r.wire_bytes - self.baseline.wire_bytes for r in self.runs)
        return extra / cuts if cuts else 0.0

    def summary(self, name: str = "drops") -> Summary:
        cuts = sum(r.cuts for r in self.runs)
        details = (
            f"{cuts} cuts, {sum(r.connections for r in self.runs)} connections; wire overhead mean "
            f"{self.mean_overhead:.2%} max {self.worst_overhead:.2%} (bound {self.baseline.max_overhead:.0%}; "
            f"clean sync {self.baseline.overhead:.2%} of {self.baseline.payload_bytes} B; "
            f"{self.lost_per_cut / 1024:.1f} KiB lost per cut); {len(self.overhead_failures)} over the bound; "
            f"SDK payload bytes re-received {sum(r.device_bytes - r.payload_bytes for r in self.runs)}; "
            f"{sum(r.attempts > 1 for r in self.runs)} syncs the app had to retry"
        )
        return Summary(name, len(self.runs), self.survived, self.failures, details, self.seconds)


def run_drops(
    registry: Registry,
    address: str,
    count: int,
    *,
    workdir: Path,
    seed: int = 0,
    max_overhead: float = 0.05,
    chunk_bytes: int | None = None,
    receive_window_bytes: int | None = DEFAULT_RECEIVE_WINDOW_BYTES,
    download_seconds: float | None = None,
    plans: Sequence[tuple[str, list[int]]] | None = None,
    attempts: int = 3,
) -> DropsReport:
    """``count`` fresh devices sync the latest version through a proxy that cuts the link.

    Four runs in five take 1-3 cuts at seeded random points of the transfer; every fifth cuts
    every connection after a random quarter to half of it. ``plans`` ((mode, counts) pairs)
    replaces the random ones. ``download_seconds`` rate-limits the device so that the download
    would take that long (an app on a metered link passes ``rate``; the server paces the stream at
    it). ``chunk_bytes`` overrides the SDK's chunk size and ``receive_window_bytes`` sets a fixed
    HTTP/2 receive window (None, the SDK's default: gRPC's BDP-probed one). A sync that still fails with a
    TransportError (the SDK retries a cut CheckUpdate and resumes a cut download itself) is retried
    by the "app", up to ``attempts`` times.
    """
    started = time.perf_counter()
    rng = random.Random(f"drops-{seed}")
    _, new = versions_under_test(registry)
    host, port = address.rsplit(":", 1)
    retry = RetryPolicy(backoff_initial_s=0.05, backoff_max_s=1.0)
    config = TransportConfig(retry=retry, receive_window_bytes=receive_window_bytes)
    if chunk_bytes is not None:
        config = dataclasses.replace(config, max_chunk_bytes=chunk_bytes)
    root = workdir / "drops"

    rate: float | None = None

    def one(index: int, mode: str, plan: list[int]) -> DropRun:
        run = DropRun(index, mode, plan, max_overhead)
        every = plan[0] if mode == "every" else None
        cuts = plan if mode == "cuts" else ()
        with LinkProxy(host, int(port), cut_after=cuts, drop_every_bytes=every) as proxy:
            _drop_sync(run, proxy, registry, new, root / str(index), config, rate, max(attempts, 1))
        log.info(
            "drop %d: %s %s -> %d cuts, %d connections, overhead %.2f%%%s",
            index,
            mode,
            plan,
            run.cuts,
            run.connections,
            100 * run.overhead,
            f" FAILED: {[*run.problems, run.over_budget or '']}" if run.problems or run.over_budget else "",
        )
        return run

    baseline = one(-1, "cuts", [])
    wire = max(baseline.wire_bytes, 2)
    if download_seconds is not None:
        rate = max(baseline.payload_bytes / download_seconds, 32 * 1024)
    if plans is None:
        plans = []
        for index in range(count):
            if index % 5 == 4:
                plans.append(("every", [rng.randint(wire // 4, wire // 2)]))
            else:
                offsets = sorted(rng.sample(range(1, wire), rng.randint(1, 3)))
                plans.append(("cuts", [b - a for a, b in zip([0, *offsets], offsets, strict=False)]))
    runs = [one(index, mode, plan) for index, (mode, plan) in enumerate(plans)]
    return DropsReport(runs, baseline, time.perf_counter() - started)


def _drop_sync(
    run: DropRun,
    proxy: LinkProxy,
    registry: Registry,
    new: int,
    data_dir: Path,
    config: TransportConfig,
    rate: float | None,
    attempts: int,
) -> None:
    started = time.perf_counter()
    shutil.rmtree(data_dir, ignore_errors=True)
    result = None
    config = dataclasses.replace(config, rate_bytes_per_s=rate)
    with EdgeClient(proxy.address, MODEL, data_dir, transport=config, insecure=True) as client:
        while result is None and run.attempts < attempts:
            run.attempts += 1
            try:
                result = client.sync()
            except TransportError as exc:
                log.info("drop %d: sync attempt %d failed (%s); the app retries", run.index, run.attempts, exc)
            except EdgerecError as exc:
                run.problems.append(f"sync raised {type(exc).__name__}: {exc}")
                break
        store = client.store
    stats = proxy.stats()
    run.cuts, run.connections, run.wire_bytes = stats.cuts, stats.connections, stats.bytes_down
    run.seconds = time.perf_counter() - started
    if result is None:
        if not run.problems:
            run.problems.append(f"no successful sync in {attempts} attempts")
        return
    run.payload_bytes = sum(int(p["size"]) for p in result.payloads)  # type: ignore[call-overload]
    run.device_bytes = result.payload_bytes
    run.problems += installed_problems(store, registry, new)
    if leftovers := leftover_files(store):
        run.problems.append(f"files left behind: {leftovers}")
    if not run.problems:
        shutil.rmtree(data_dir, ignore_errors=True)


# --- kills ---------------------------------------------------------------------------------

STARTS: Final = ("fresh", "old", "damaged")
"""A device with no model; with the old version active; with the new one active but a file corrupted."""


@dataclass(frozen=True)
class KillPoint:
    """Where a sync child stops for its SIGKILL: line ``at`` of fault ``phase``, or the ``hits``-th time
    the sync reaches the observer's ``event`` (a :class:`SyncPhase` value)."""

    phase: str | None = None
    at: int = 0
    event: str | None = None
    hits: int = 1

    def describe(self) -> str:
        if self.event is None:
            return f"{self.phase} line {self.at}"
        return f"at {self.event} #{self.hits}" if self.hits > 1 else f"at {self.event}"


DIRECTED_KILLS: Final = (
    # The payload complete and checked, its .part not renamed yet.
    ("fresh", KillPoint(event=SyncPhase.DOWNLOADED)),
    # Mid-.part: three chunks written, the fourth not yet; the next process must resume after the third.
    ("fresh", KillPoint(event=SyncPhase.PROGRESS, hits=3)),
    ("old", KillPoint(event=SyncPhase.ACTIVATE)),
    ("old", KillPoint(event=SyncPhase.SWITCH)),
    ("old", KillPoint(event=SyncPhase.PRUNE)),
    ("old", KillPoint(event=SyncPhase.ACTIVATED)),
    ("damaged", KillPoint(event=SyncPhase.ACTIVATE)),
)
"""Instants where a crash is most likely to break something: around each rename and the switch."""


@dataclass
class KillRun:
    """One device sync killed with SIGKILL, then a fresh process on the same data dir."""

    index: int
    start: str  # one of STARTS
    kind: str  # a phase, "wall" (seconds after spawn) or "line" (a directed KillPoint)
    at: float  # the line of that phase, or the seconds
    point: str = ""
    killed: bool = False
    phase: str = ""  # the phase the sync was in when it died
    active_after_kill: int | None = None
    part_bytes: int = 0  # bytes in .part files the fresh process found and consumed
    resumable: bool = False  # a non-empty .part of a payload to fetch was there
    resumed: bool = False  # ... and the fresh sync fetched only the rest
    reused_payloads: int = 0  # finished .payload files the fresh sync used as they were
    leftovers: list[str] = field(default_factory=list)  # download files left once the fresh sync finished
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def label(self) -> str:
        what = self.point or f"{self.kind} @ {self.at:g}"
        return f"kill #{self.index} ({self.start}, {what}, died in {self.phase or '?'})"


@dataclass
class KillsReport:
    """Every kill run and the calibration of each starting state."""

    runs: list[KillRun]
    calibration: dict[str, dict[str, Any]]
    old: int
    new: int
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    leftovers_fail: bool = False  # directed kills also require a clean downloads folder

    @property
    def failures(self) -> list[str]:
        own = [f"{r.label()}: {p}" for r in self.runs for p in r.problems]
        if self.leftovers_fail:
            own += [f"{r.label()}: download files never removed: {r.leftovers}" for r in self.runs if r.leftovers]
        return self.problems + own

    @property
    def survived(self) -> int:
        return sum(not r.problems and not (self.leftovers_fail and r.leftovers) for r in self.runs)

    @property
    def resumable(self) -> int:
        return sum(r.resumable for r in self.runs)

    @property
    def resumed(self) -> int:
        return sum(r.resumed for r in self.runs)

    def summary(self, name: str = "kills") -> Summary:
        phases = Counter(r.phase for r in self.runs if r.killed)
        starts = Counter(r.start for r in self.runs)
        details = (
            f"resumed {self.resumed}/{self.resumable} .part downloads ({sum(r.part_bytes for r in self.runs)} B kept); "
            f"{sum(r.reused_payloads for r in self.runs)} finished payloads reused; "
            f"starts {', '.join(f'{s} {n}' for s, n in sorted(starts.items()))}; "
            f"died in {', '.join(f'{p} {n}' for p, n in sorted(phases.items()))}; "
            f"{sum(not r.killed for r in self.runs)} finished before the kill; "
            f"new version already active after {sum(r.active_after_kill == self.new for r in self.runs)}; "
            f"{sum(bool(r.leftovers) for r in self.runs)} left download files behind"
        )
        return Summary(name, len(self.runs), self.survived, self.failures, details, self.seconds)


@dataclass(frozen=True)
class KillBench:
    """What every kill run of one scenario shares: templates of each starting state, the server, sizes."""

    registry: Registry
    address: str
    root: Path
    old: int
    new: int
    templates: dict[str, Path | None]
    specs: list[tuple[str, str, list[int]]]
    chunk_bytes: int
    timeout_s: float

    @classmethod
    def prepare(cls, registry: Registry, address: str, root: Path, chunk_bytes: int, timeout_s: float) -> KillBench:
        """Install the old version (and the new one, then corrupt it) once, to copy for every run."""
        old, new = versions_under_test(registry)
        shutil.rmtree(root, ignore_errors=True)
        templates: dict[str, Path | None] = {"fresh": None, "old": root / "template-old"}
        with EdgeClient(server=address, model=MODEL, data_dir=root / "template-old", insecure=True) as client:
            client.sync(target_version=old)
        damaged = root / "template-damaged"
        shutil.copytree(root / "template-old", damaged)
        with EdgeClient(server=address, model=MODEL, data_dir=damaged, insecure=True) as client:
            client.sync(target_version=new)
            current = client.store.current()
        assert current is not None
        largest = max(current.artifact.files, key=lambda f: f.size)
        with current.file(largest.path).open("r+b") as f:  # a bad flash sector in the middle of the weights
            f.seek(largest.size // 2)
            chunk = f.read(64)
            f.seek(largest.size // 2)
            f.write(bytes(b ^ 0xFF for b in chunk))
        templates["damaged"] = damaged
        specs = input_specs(registry, new)
        return cls(registry, address, root, old, new, templates, specs, chunk_bytes, timeout_s)

    def data_dir(self, name: str, start: str) -> Path:
        """A fresh copy of ``start``'s template."""
        data_dir = self.root / name
        shutil.rmtree(data_dir, ignore_errors=True)
        template = self.templates[start]
        if template is not None:
            shutil.copytree(template, data_dir)
        else:
            data_dir.mkdir(parents=True)
        return data_dir

    def calibrate(self, start: str, download_seconds: float) -> dict[str, Any]:
        """Sync once in-process (sizes, warm payloads), then in a traced child: lines per phase, seconds."""
        data_dir = self.data_dir(f"calibrate-{start}", start)
        with EdgeClient(server=self.address, model=MODEL, data_dir=data_dir, insecure=True) as client:
            payload = sum(int(p["size"]) for p in client.sync().payloads)  # type: ignore[call-overload]
        rate = max(payload / download_seconds, 32 * 1024)
        data_dir = self.data_dir(f"calibrate-{start}", start)
        began = time.monotonic()
        outcome = self.run_child_sync(data_dir, rate, None, None, self.root / f"calibrate-{start}.log")
        seconds = time.monotonic() - began
        shutil.rmtree(data_dir, ignore_errors=True)
        done = outcome.get("done") or {}
        error = None if done else f"the child did not finish: {outcome.get('error')} {outcome.get('stderr', '')}"
        return {
            "payload_bytes": payload,
            "rate": rate,
            "seconds": seconds,
            "counts": done.get("counts", {}),
            "error": error,
        }

    def run_child_sync(
        self, data_dir: Path, rate: float | None, point: KillPoint | None, kill_after_s: float | None, log_path: Path
    ) -> dict[str, Any]:
        """A device sync in a ``python -c`` child, SIGKILLed at ``point`` or ``kill_after_s`` after its spawn."""
        spec: dict[str, Any] = {
            "mode": "sync",
            "server": self.address,
            "data_dir": str(data_dir),
            "rate": rate,
            "chunk_bytes": self.chunk_bytes,
        }
        if point is not None:
            spec |= dataclasses.asdict(point)
        return _run_child_sync(spec, kill_after_s, self.timeout_s, log_path)

    def kill_and_recover(
        self, run: KillRun, rate: float | None, point: KillPoint | None, kill_after_s: float | None
    ) -> Path:
        """Kill a sync of a fresh copy of ``run.start`` as told, recover in a fresh process, judge; return the dir."""
        began = time.perf_counter()
        data_dir = self.data_dir(str(run.index), run.start)
        outcome = self.run_child_sync(data_dir, rate, point, kill_after_s, self.root / f"{run.index}-sync.log")
        run.killed, run.phase = bool(outcome["killed"]), str(outcome["phase"])
        if not run.killed and outcome["done"] is None:
            run.problems.append(f"the sync child failed on its own: {outcome.get('error')} {outcome.get('stderr', '')}")
        recover = {"mode": "recover", "server": self.address, "data_dir": str(data_dir), "inputs": self.specs}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD_CODE, json.dumps(recover)],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
            report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            run.problems.append(f"the recovering process failed: {exc!r}")
            return data_dir
        _judge_recovery(run, report, self.registry, data_dir, self.old, self.new)
        run.seconds = time.perf_counter() - began
        return data_dir


def run_kills(
    registry: Registry,
    address: str,
    count: int,
    *,
    workdir: Path,
    seed: int = 0,
    download_seconds: float = 0.8,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timeout_s: float = 120.0,
) -> KillsReport:
    """``count`` syncs SIGKILLed at seeded random points, each followed by a fresh process that must recover.

    Runs cycle through the starting states (STARTS); kinds cycle, in a seeded order, through
    the four phases and "wall". The child's rate limit makes the download last about
    ``download_seconds``.
    """
    started = time.perf_counter()
    rng = random.Random(f"kills-{seed}")
    bench = KillBench.prepare(registry, address, workdir / "kills", chunk_bytes, timeout_s)
    report = KillsReport([], {}, bench.old, bench.new)
    for start in STARTS:
        report.calibration[start] = calibration = bench.calibrate(start, download_seconds)
        if calibration.get("error"):
            report.problems.append(f"calibration of a {start} device failed: {calibration['error']}")
    if report.problems:
        report.seconds = time.perf_counter() - started
        return report
    kinds: list[str] = []
    while len(kinds) < count:
        block = list(KILL_KINDS)
        rng.shuffle(block)
        kinds += block
    for index in range(count):
        start = STARTS[index % len(STARTS)]
        calibration = report.calibration[start]
        kind = kinds[index]
        point = None
        if kind == "wall":
            at: float = rng.uniform(0.0, float(calibration["seconds"]))
        else:
            lines = int(calibration["counts"].get(kind, 0))
            if lines == 0:
                report.problems.append(f"a {start} sync never enters the {kind} phase; cannot kill there")
                continue
            at = rng.randint(1, lines)
            point = KillPoint(phase=kind, at=int(at))
        run = KillRun(index, start, kind, at)
        data_dir = bench.kill_and_recover(run, float(calibration["rate"]), point, at if kind == "wall" else None)
        report.runs.append(run)
        _log_kill(run)
        if not run.problems:
            shutil.rmtree(data_dir, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def run_directed_kills(
    registry: Registry,
    address: str,
    *,
    workdir: Path,
    points: Sequence[tuple[str, KillPoint]] = DIRECTED_KILLS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    timeout_s: float = 120.0,
) -> KillsReport:
    """One kill at each of ``points`` ((start, KillPoint) pairs); the download folder must end up empty too."""
    started = time.perf_counter()
    bench = KillBench.prepare(registry, address, workdir / "directed-kills", chunk_bytes, timeout_s)
    report = KillsReport([], {}, bench.old, bench.new, leftovers_fail=True)
    for index, (start, point) in enumerate(points):
        run = KillRun(index, start, "line", 0, point=point.describe())
        data_dir = bench.kill_and_recover(run, None, point, None)
        if not run.killed:
            run.problems.append("the sync never reached the kill point (did the device code change?)")
        report.runs.append(run)
        _log_kill(run)
        if not run.problems and not run.leftovers:
            shutil.rmtree(data_dir, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _log_kill(run: KillRun) -> None:
    log.info(
        "%s: %s; active after kill %s; resumable %s resumed %s; leftovers %s%s",
        run.label(),
        "killed" if run.killed else "finished",
        run.active_after_kill,
        run.resumable,
        run.resumed,
        run.leftovers,
        f" FAILED: {run.problems}" if run.problems else "",
    )


def _run_child_sync(
    spec: dict[str, Any], kill_after_s: float | None, timeout_s: float, log_path: Path
) -> dict[str, Any]:
    """Run a device sync in a child; SIGKILL it at its kill point, or ``kill_after_s`` after spawn.

    Returns {"killed": bool, "phase": last phase entered, "done": the child's final report or None}.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, json.dumps(spec)], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    spawned = time.monotonic()
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                events.put(json.loads(line))
        events.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outcome: dict[str, Any] = {"killed": False, "phase": "start", "done": None}
    try:
        while True:
            limit = spawned + (kill_after_s if kill_after_s is not None else timeout_s)
            try:
                event = events.get(timeout=max(limit - time.monotonic(), 0.0))
            except queue.Empty:
                if kill_after_s is None:
                    outcome["error"] = f"no kill point or end within {timeout_s:.0f} s"
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    outcome["killed"] = kill_after_s is not None
                break
            if event is None:
                break
            if event.get("event") == "phase":
                outcome["phase"] = event["phase"]
            elif event.get("event") == "kill-point":
                proc.send_signal(signal.SIGKILL)
                outcome["killed"] = True
                break
            elif event.get("event") == "done":
                outcome["done"] = event
    finally:
        if proc.poll() is None and not outcome["killed"]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=10)
    while not events.empty():  # what the child said before it died
        event = events.get()
        if event is not None and event.get("event") == "phase":
            outcome["phase"] = event["phase"]
        elif event is not None and event.get("event") == "done":
            outcome["done"] = event
    outcome["killed"] = outcome["killed"] and outcome["done"] is None
    if outcome["done"] is None and not outcome["killed"]:
        outcome["error"] = outcome.get("error") or f"exit code {proc.returncode}"
        outcome["stderr"] = log_path.read_text()[-2000:]
    return outcome


def _judge_recovery(
    run: KillRun, report: dict[str, Any], registry: Registry, data_dir: Path, old: int, new: int
) -> None:
    """Check the fresh process's findings: (a) a verified old or new model, or none; (b) a completed, resumed sync."""
    problems = run.problems
    if report.get("crash"):
        problems.append(f"the recovering process crashed: {report['crash']}")
    before = report.get("active_before")
    run.active_after_kill = before
    outcomes: dict[str, set[int | None]] = {"fresh": {None, new}, "old": {old, new}, "damaged": {new}}
    allowed = outcomes[run.start]
    intact = False
    if report.get("error_before"):
        problems.append(f"after the kill the store is unreadable: {report['error_before']}")
    elif before not in allowed:
        problems.append(f"after the kill version {before} is active, expected one of {sorted(allowed, key=str)}")
    if before is not None:
        recipe = report.get("recipe_before")
        published = {f.path: f.sha256 for f in registry.files(MODEL, before) if f.recipe == recipe}
        intact = report.get("files_before") == published and not report.get("file_problems")
        if not intact and run.start != "damaged":
            problems.append(
                f"after the kill version {before}'s files are not the registry's: {report.get('file_problems')}"
            )
    prediction = report.get("prediction") or {}
    if prediction.get("source") in LOCAL_SOURCES:
        if not intact or prediction.get("version") != before or not prediction.get("finite"):
            problems.append(f"after the kill a local prediction came from an unverified model: {prediction}")
    elif intact:
        problems.append(
            f"after the kill version {before} is intact, yet no local prediction: {report.get('predict_error')}"
        )
    elif not str(report.get("predict_error", "")).startswith(NoModelAvailableError.__name__):
        problems.append(f"no usable model, yet predict gave {prediction or report.get('predict_error')}")
    sync = report.get("sync")
    if sync is None:
        problems.append(f"the recovering sync failed: {report.get('sync_error')}")
        return
    problems += installed_problems(ModelStore(data_dir, MODEL), registry, new)
    if report.get("staging_after"):
        problems.append(f"staging left behind: {report['staging_after']}")
    # Resume accounting: the downloads the fresh sync consumed (gone afterwards) against what it fetched.
    after = report.get("downloads_after", {})
    consumed = {name: size for name, size in report.get("downloads_before", {}).items() if name not in after}
    run.part_bytes = sum(size for name, size in consumed.items() if name.endswith(".part"))
    finished = {name: size for name, size in consumed.items() if name.endswith(".payload")}
    run.reused_payloads = len(finished)
    run.resumable = any(name.endswith(".part") and size > 0 for name, size in consumed.items())
    expected = int(sync["planned_bytes"]) - run.part_bytes - sum(finished.values()) if sync["updated"] else 0
    fetched = int(sync["payload_bytes"])
    if run.resumable:
        run.resumed = fetched == expected
        if not run.resumed:
            problems.append(
                f"the fresh sync fetched {fetched} B; resuming {run.part_bytes} B of .part would fetch {expected} B"
            )
    elif fetched != expected:
        problems.append(f"the fresh sync fetched {fetched} B, expected {expected} B")
    run.leftovers = sorted(after)


# --- the children --------------------------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class PhaseTracer(Observer):
    """Follows a sync's phases through the SDK's observer and stops it at a kill point.

    For a point at a line of a phase it counts the lines edgerec runs in each phase
    (``sys.settrace``, installed by the caller); for a point at an event it counts that event.
    There it reports the kill point and waits for its SIGKILL.
    """

    def __init__(self, point: KillPoint, emit: Callable[[dict[str, Any]], None]) -> None:
        self.point = point
        self.emit = emit
        self.phase = "check"
        self.counts: Counter[str] = Counter()
        self._event_hits = 0

    def on_sync(self, event: SyncEvent) -> None:
        phase = PHASE_OF.get(event.phase, self.phase)
        if phase != self.phase:
            self.phase = phase
            self.emit({"event": "phase", "phase": phase})
        if self.point.event == event.phase:
            self._event_hits += 1
            if self._event_hits == self.point.hits:
                self._stop(str(event.phase))

    def global_trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        module = str(frame.f_globals.get("__name__", ""))
        if event != "call" or not module.startswith("edgerec.") or module == MODULE:
            return None
        return self.local_trace

    def local_trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if event == "line":
            self.counts[self.phase] += 1
            point = self.point
            if point.phase == self.phase and self.counts[self.phase] == point.at:
                self._stop(f"line {frame.f_lineno}")
        return self.local_trace

    def _stop(self, where: str) -> None:
        self.emit({"event": "kill-point", "phase": self.phase, "at": where})
        time.sleep(_KILL_POINT_WAIT_S)  # the parent kills this process now
        os._exit(70)


def child_main(spec_json: str) -> int:
    """Entry point of the ``python -c`` children: ``sync`` (traced, killable) or ``recover``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec: dict[str, Any] = json.loads(spec_json)
    if spec["mode"] == "sync":
        return _child_sync(spec)
    if spec["mode"] == "plain-sync":
        _emit(_child_plain_sync(spec))
        return 0
    _emit(_child_recover(spec))
    return 0


def _child_plain_sync(spec: dict[str, Any]) -> dict[str, Any]:
    """One sync, untraced: its outcome ("installed", "current" or the error's class) as the last line."""
    rate = float(spec["rate"]) if spec.get("rate") else None
    config = TransportConfig(max_chunk_bytes=int(spec["chunk_bytes"]), retry=QUICK_RETRY, rate_bytes_per_s=rate)
    with EdgeClient(spec["server"], MODEL, spec["data_dir"], transport=config, insecure=True) as client:
        client.store.lock_wait_s = float(spec["lock_wait_s"])
        try:
            result = client.sync()
        except EdgerecError as exc:
            return {"event": "done", "outcome": type(exc).__name__, "error": str(exc)}
    return {"event": "done", "outcome": "installed" if result.updated else "current"}


def _child_sync(spec: dict[str, Any]) -> int:
    point = KillPoint(spec.get("phase"), int(spec.get("at") or 0), spec.get("event"), int(spec.get("hits") or 1))
    tracer = PhaseTracer(point, _emit)
    rate = float(spec["rate"]) if spec.get("rate") else None
    config = TransportConfig(max_chunk_bytes=int(spec["chunk_bytes"]), retry=QUICK_RETRY, rate_bytes_per_s=rate)
    with EdgeClient(
        spec["server"], MODEL, spec["data_dir"], transport=config, insecure=True, observer=tracer
    ) as client:
        counting = point.event is None  # a kill at a line of a phase counts lines; one at an event needs no trace
        if counting:
            sys.settrace(tracer.global_trace)
        try:
            result = client.sync()
        finally:
            sys.settrace(None)
    _emit({"event": "done", "version": result.version, "counts": dict(tracer.counts)})
    return 0


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def _child_recover(spec: dict[str, Any]) -> dict[str, Any]:
    """What a fresh process finds on the data dir, then the outcome of its sync."""
    data_dir = Path(spec["data_dir"])
    report: dict[str, Any] = {}
    try:
        with EdgeClient(server=None, model=MODEL, data_dir=data_dir) as offline:
            store = offline.store
            report["downloads_before"] = _listing(store.downloads_dir)
            try:
                current = store.current()
            except EdgerecError as exc:
                report["error_before"] = f"{type(exc).__name__}: {exc}"
                current = None
            report["active_before"] = current.version if current else None
            if current is not None:
                report["recipe_before"] = current.recipe
                files = {
                    f.path: sha256_file(current.file(f.path))
                    for f in current.artifact.files
                    if current.file(f.path).is_file()
                }
                report["files_before"] = files
                report["file_problems"] = [f.path for f in current.artifact.files if files.get(f.path) != f.sha256]
            prediction, error = predict_offline(offline, spec["inputs"])
            if prediction is not None:
                report["prediction"] = {
                    "source": str(prediction.source),
                    "version": prediction.version,
                    "finite": bool(np.all(np.isfinite(prediction.scores))),
                }
            else:
                report["predict_error"] = error
        with EdgeClient(
            server=spec["server"],
            model=MODEL,
            data_dir=data_dir,
            transport=TransportConfig(retry=QUICK_RETRY),
            insecure=True,
        ) as client:
            try:
                result = client.sync()
                report["sync"] = {
                    "version": result.version,
                    "updated": result.updated,
                    "payload_bytes": result.payload_bytes,
                    "planned_bytes": sum(int(p["size"]) for p in result.payloads),  # type: ignore[call-overload]
                    "codec": result.codec,
                }
            except EdgerecError as exc:
                report["sync_error"] = f"{type(exc).__name__}: {exc}"
            report["downloads_after"] = _listing(client.store.downloads_dir)
            report["staging_after"] = sorted(_listing(client.store.staging_dir))
    except Exception:
        report["crash"] = traceback.format_exc()[-3000:]
    return report


# --- disk full -----------------------------------------------------------------------------


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
    options = f"{'remount,' if remount else ''}size={-(-size // _PAGE) * _PAGE}"
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
    files = registry.files(MODEL, new)
    recipe = next(r for r in (*DEVICE_RECIPES, files[0].recipe) if any(f.recipe == r for f in files))
    artifact_bytes = sum(f.size for f in files if f.recipe == recipe)  # what the device installs
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
        while fitting is not None and fitting - failing > _PAGE:  # the most space that still fails
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


# --- the device's downloads: two syncs at once, an over-long .part, a hostile payload on a small disk -----


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
        runtimes=["onnxruntime"],
        codecs=list(CODEC_NAMES),
        recipes=list(DEVICE_RECIPES),
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
        from concurrent import futures

        import grpc

        from edgerec.v1 import update_pb2_grpc

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="faults-hostile"))
        update_pb2_grpc.add_ModelUpdateServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(grace=0).wait()


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


# --- the command line ----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSettings:
    """What ``main`` runs."""

    drops: int
    kills: int
    throttled_drops: int
    directed_kills: bool
    disk_full: bool
    downloads: bool
    registry: Path | None
    size: str
    seed: int
    workdir: Path | None
    max_overhead: float
    download_seconds: float
    verbose: bool
    receive_window: int | None = DEFAULT_RECEIVE_WINDOW_BYTES
    chunk_bytes: int | None = None


def parse_args(argv: Sequence[str] | None) -> FaultSettings:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--drops", type=int, default=200, help="syncs through a link cut at random offsets")
    parser.add_argument("--kills", type=int, default=100, help="syncs SIGKILLed at random points")
    parser.add_argument(
        "--throttled-drops", type=int, help="drop runs with a rate-limited device (default: a tenth of --drops)"
    )
    parser.add_argument("--no-directed-kills", action="store_true", help="skip the kills at fixed dangerous lines")
    parser.add_argument("--no-disk-full", action="store_true", help="skip the full-disk scenario")
    parser.add_argument(
        "--no-downloads", action="store_true", help="skip two syncs at once, stale .part files and hostile plans"
    )
    parser.add_argument("--registry", type=Path, help="registry to use (built there if missing)")
    parser.add_argument("--size", choices=("tiny", "small"), default="small", help="reference model size to build")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="device data dirs and logs (default: a temporary dir, removed)")
    parser.add_argument("--max-overhead", type=float, default=0.05, help="wire bytes allowed over the payload")
    parser.add_argument("--download-seconds", type=float, default=0.8, help="rate-limit killed syncs to this long")
    parser.add_argument(
        "--receive-window",
        type=int,
        default=0,
        help="a fixed HTTP/2 receive window in bytes for the drop runs (default 0: gRPC's BDP-probed window)",
    )
    parser.add_argument(
        "--chunk-bytes", type=int, default=0, help="the device's chunk size for the drop runs (default 0: the SDK's)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every run and the SDK's warnings")
    a = parser.parse_args(argv)
    throttled = a.throttled_drops if a.throttled_drops is not None else a.drops // 10
    if min(a.drops, a.kills, throttled) < 0:
        parser.error("counts must be >= 0")
    return FaultSettings(
        a.drops,
        a.kills,
        throttled,
        not a.no_directed_kills,
        not a.no_disk_full,
        not a.no_downloads,
        a.registry,
        a.size,
        a.seed,
        a.workdir,
        a.max_overhead,
        a.download_seconds,
        a.verbose,
        a.receive_window or None,
        a.chunk_bytes or None,
    )


def run(settings: FaultSettings, workdir: Path) -> list[Summary]:
    """Every scenario the settings ask for, against one registry and server."""
    started = time.perf_counter()
    registry = open_registry(settings.registry, workdir, size=settings.size)
    old, new = versions_under_test(registry)
    log.warning(
        "registry %s: versions %d and %d of %s (%.1f s)", registry.root, old, new, MODEL, time.perf_counter() - started
    )
    rows: list[Summary] = []
    with serving(registry) as address:
        if settings.drops:
            drops = run_drops(
                registry,
                address,
                settings.drops,
                workdir=workdir,
                seed=settings.seed,
                max_overhead=settings.max_overhead,
                receive_window_bytes=settings.receive_window,
                chunk_bytes=settings.chunk_bytes,
            )
            rows.append(drops.summary())
        if settings.throttled_drops:
            throttled = run_drops(
                registry,
                address,
                settings.throttled_drops,
                workdir=workdir,
                seed=settings.seed + 1,
                max_overhead=settings.max_overhead,
                receive_window_bytes=settings.receive_window,
                chunk_bytes=settings.chunk_bytes,
                download_seconds=0.5,
            )
            rows.append(throttled.summary("drops, rate-limited"))
        if settings.kills:
            kills = run_kills(
                registry,
                address,
                settings.kills,
                workdir=workdir,
                seed=settings.seed,
                download_seconds=settings.download_seconds,
            )
            rows.append(kills.summary())
        if settings.directed_kills:
            rows.append(run_directed_kills(registry, address, workdir=workdir).summary("kills, directed"))
        if settings.disk_full:
            rows.append(run_disk_full(registry, address, workdir=workdir).summary())
        if settings.downloads:
            rows.append(run_downloads(registry, address, workdir=workdir).summary())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO if settings.verbose else logging.WARNING)
    if not settings.verbose:  # every cut makes the SDK warn; the table reports them
        for name in ("edgerec.device", "edgerec.server"):
            logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if settings.workdir is not None:
            workdir = settings.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgerec-faults-")))
        rows = run(settings, workdir)
    failed = sum(len(r.failures) for r in rows)
    print(format_summary(rows))
    print(f"total {time.perf_counter() - started:.1f} s: {'FAILED' if failed else 'all survived'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
