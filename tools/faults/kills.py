"""SIGKILLed syncs: a device sync in a child process killed at a random or chosen line, then a fresh
process that must recover (the children's code is here too)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import numpy as np

from edgerec.device import EdgeClient, Observer, SyncEvent, SyncPhase
from edgerec.device.storage import ModelStore
from edgerec.device.transport import DEFAULT_CHUNK_BYTES, TransportConfig
from edgerec.errors import EdgerecError, NoModelAvailableError
from edgerec.hashing import sha256_file
from edgerec.registry import Registry
from edgerec.tools.faults.common import (
    LOCAL_SOURCES,
    MODEL,
    PACKAGE,
    QUICK_RETRY,
    Summary,
    input_specs,
    installed_problems,
    predict_offline,
    versions_under_test,
)

log = logging.getLogger(__name__)

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

CHILD_CODE: Final = "import sys; from edgerec.tools.faults.kills import child_main; sys.exit(child_main(sys.argv[1]))"
_KILL_POINT_WAIT_S = 60.0


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
        if event != "call" or not module.startswith("edgerec.") or module.startswith(PACKAGE):
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
