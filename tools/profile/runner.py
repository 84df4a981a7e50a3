"""Profile runs: each payload codec over each link, the device side in its own process.

For every (link, codec) the device's data folder starts at the base version, a device
process (:mod:`.device_probe`) offers the server only that codec, downloads, applies,
verifies, switches and predicts once, and reports its phase times; its CPU and peak RSS
come from ``wait4``. Each codec's plan is the server's own (:class:`UpdatePlanner`, which makes
missing payloads first); server preparation time is the registry's ``make_seconds`` of the
payloads that plan sends. A transfer the link would take longer than
``max_transfer_s`` for is not run: its row is estimated from the link model, with the
device-side numbers of a measured run of the same codec, and marked ``measured=False``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from edgerec.device import EdgeClient
from edgerec.device.artifacts import available_runtimes, choose_artifact
from edgerec.device.plan import COPY
from edgerec.registry import ModelRegistry, open_registry
from edgerec.server.payloads import DELTA_CODECS, FULL, PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.tools.links.emulation import ShapedLink, cleanup_leftovers, resolve_method
from edgerec.tools.links.profiles import LinkProfile
from edgerec.tools.links.proxy import LinkCounters
from edgerec.units import format_bytes
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)

DEFAULT_CODECS: tuple[str, ...] = (FULL, *sorted(DELTA_CODECS))
DEFAULT_MAX_TRANSFER_S = 30.0
_PROXY_ENV = {"http_proxy", "https_proxy", "grpc_proxy", "all_proxy", "no_proxy"}

# (runs finished, runs in all, what runs now)
ProgressHook = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile: a registry (a folder or s3://BUCKET/PREFIX), two versions, links and codecs."""

    registry: Path | str
    model: str
    from_version: int
    to_version: int
    links: tuple[LinkProfile, ...]
    codecs: tuple[str, ...] = DEFAULT_CODECS
    method: str = "auto"  # auto | netns | tokenbucket
    recipe: str = "int8"
    window_s: float = 60.0
    max_transfer_s: float = DEFAULT_MAX_TRANSFER_S
    chunk_bytes: int = 64 * 1024
    seed: int = 0
    workdir: Path | None = None  # kept when given; a temporary folder otherwise
    s3_endpoint: str | None = None  # an s3:// registry's endpoint (None: AWS_ENDPOINT_URL, else AWS)

    def __post_init__(self) -> None:
        unknown = [c for c in self.codecs if c != FULL and c not in DELTA_CODECS]
        if unknown:
            raise ValueError(f"unknown codecs {unknown}; choose from {', '.join(DEFAULT_CODECS)}")
        if not self.links or not self.codecs:
            raise ValueError("give at least one link and one codec")
        if len({link.name for link in self.links}) != len(self.links):
            raise ValueError("link names must be unique")
        for link in self.links:
            if link.drop_every_bytes is not None and link.drop_every_bytes < 2 * self.chunk_bytes:
                raise ValueError(
                    f"link {link.name!r} cuts every {link.drop_every_bytes} bytes: with {self.chunk_bytes}-byte "
                    "chunks a device could finish too few chunks between cuts; lower the chunk size"
                )
        if self.to_version <= self.from_version:
            raise ValueError(f"--to ({self.to_version}) must be newer than --from ({self.from_version})")


@dataclass
class ProfileRow:
    """One codec over one link. Times in seconds, sizes in bytes; None where not measured."""

    link: str
    codec: str  # asked for
    codec_used: str  # what the plan sent (a delta larger than the full file is sent full)
    method: str  # netns | tokenbucket
    measured: bool
    rate_bytes_per_s: float
    rtt_s: float
    loss: float
    drop_every_bytes: int | None
    payload_bytes: int
    full_bytes: int
    downloads: int  # payload files fetched (each costs a request round trip)
    wire_factor: float  # bytes the rate limiter counts per payload byte (tbf counts packet headers)
    prep_s: float  # server: making the payloads (once per version pair, shared by devices)
    check_s: float | None = None  # device: CheckUpdate, including connecting
    transfer_s: float | None = None  # device: downloading the payloads
    expected_transfer_s: float | None = None  # payload_bytes * wire factor / rate + one RTT per download
    apply_s: float | None = None  # device: patch, verify, health check, switch
    first_predict_s: float | None = None  # device: load the new version and predict once
    time_to_update_s: float | None = None  # check + transfer + apply + first prediction
    cpu_s: float | None = None  # device CPU during the update and first prediction
    process_cpu_s: float | None = None  # device process CPU, start-up included
    peak_rss_bytes: int | None = None  # device process peak RSS
    wire_bytes: int | None = None  # TCP payload bytes down the link, emulated retransmissions included
    extra_bytes: int | None = None  # wire bytes beyond payload and update check: framing, lost partial chunks
    extra_s: float | None = None  # transfer time beyond the clean-link expectation
    cuts: int | None = None
    lost_segments: int | None = None
    fits_window: bool | None = None
    recommended: bool = False
    advice: str = ""
    note: str = ""

    @property
    def transfer_ratio(self) -> float | None:
        """Measured over expected transfer time (None for an estimated row)."""
        if not self.measured or self.transfer_s is None or not self.expected_transfer_s:
            return None
        return self.transfer_s / self.expected_transfer_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"transfer_ratio": self.transfer_ratio}


@dataclass(frozen=True)
class Recommendation:
    """The fastest codec for a link, and whether an update fits the time window."""

    link: str
    codec: str
    time_to_update_s: float
    window_s: float
    fits_window: bool
    budget_bytes: int | None  # payload bytes that would fit the window, when the update does not
    advice: str


@dataclass
class ProfileReport:
    settings: ProfileSettings
    method: str
    rows: list[ProfileRow]
    recommendations: list[Recommendation]
    total_s: float
    workdir: Path | None = None


@dataclass(frozen=True)
class CodecPlan:
    """What the server sends a device on the base version that offers one codec."""

    codec: str
    codec_used: str
    payload_bytes: int
    full_bytes: int
    downloads: int
    response_bytes: int
    prep_s: float
    note: str = ""


def plan_codecs(
    registry: ModelRegistry, model: str, from_version: int, to_version: int, recipe: str, codecs: Sequence[str]
) -> dict[str, CodecPlan]:
    """Each codec's plan as the server makes it (payloads made first if missing), with their making times."""
    planner = UpdatePlanner(registry, PayloadStore(registry))  # no delta worker: missing payloads are made now
    _, base_manifest = registry.load_manifest(model, from_version)
    base = choose_artifact(base_manifest, [recipe], available_runtimes())
    plans: dict[str, CodecPlan] = {}
    for codec in codecs:
        request = update_pb2.CheckUpdateRequest(
            model=model,
            current_version=from_version,
            current_sha256=base.digest,
            current_recipe=recipe,
            runtimes=list(available_runtimes()),
            codecs=[codec],
            recipes=[recipe],
            target_version=to_version,
        )
        response = planner.plan(request)
        sent = [p for p in response.payloads if p.codec != COPY]
        prep_s = sum(registry.payload(model, p.payload_id).make_seconds for p in sent)
        notes = [f"{p.path} sent {p.codec}" for p in sent if codec != FULL and p.codec != codec]
        used = sorted({p.codec for p in sent}) or [COPY]
        plans[codec] = CodecPlan(
            codec=codec,
            codec_used="+".join(used),
            payload_bytes=response.payload_bytes,
            full_bytes=response.full_bytes,
            downloads=len(sent),
            response_bytes=response.ByteSize(),
            prep_s=prep_s,
            note="; ".join(notes),
        )
        log.info(
            "%s: %s, %d payload bytes, prepared in %.2fs",
            codec,
            plans[codec].codec_used,
            plans[codec].payload_bytes,
            prep_s,
        )
    return plans


def expected_transfer_s(payload_bytes: int, downloads: int, link: LinkProfile, wire_factor: float) -> float:
    """The link model: bytes (with framing the shaper counts) at the TCP rate, plus a round trip per download."""
    return payload_bytes * wire_factor / link.effective_rate_bytes_per_s + downloads * link.rtt_s


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While profiling, SIGTERM raises SystemExit so that links are torn down (SIGINT already does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device_env() -> dict[str, str]:
    """The environment for a device process: no HTTP proxy variables (gRPC would honour them)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> resource.struct_rusage:
    """Reap ``proc`` with wait4 (its own CPU and peak RSS); kill it after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return usage
            if time.monotonic() > deadline:
                raise TimeoutError(f"device process did not finish in {timeout_s:.0f}s")
            time.sleep(0.02)
    finally:
        if proc.returncode is None:
            proc.kill()
            _, status, _ = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class ProbeResult:
    measured: dict[str, Any]
    usage: resource.struct_rusage | None
    error: str = ""


def run_device(command: Sequence[str], folder: Path, timeout_s: float) -> ProbeResult:
    """Run one device process; its JSON line on stdout and stderr go to files in ``folder``."""
    out_path, err_path = folder / "probe.json", folder / "probe.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, env=_device_env())
    try:
        usage = _wait(proc, timeout_s)
    except TimeoutError as exc:
        return ProbeResult({}, None, str(exc))
    lines = out_path.read_text().strip().splitlines()
    try:
        measured: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        measured = {}
    if proc.returncode != 0 or "error" in measured or not measured:
        tail = err_path.read_text().strip().splitlines()[-3:]
        reason = str(measured.get("error") or f"exit code {proc.returncode}: {' | '.join(tail)}")
        return ProbeResult(measured, usage, reason)
    return ProbeResult(measured, usage)


class Profiler:
    """Runs a profile: server, payloads, base install, then each link and codec."""

    def __init__(self, settings: ProfileSettings, progress: ProgressHook | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda done, total, label: None)
        self.registry = open_registry(settings.registry, s3_endpoint=settings.s3_endpoint)
        self.method = resolve_method(settings.method)
        self.public_key: Path | None = None  # the profile server's signing key, once made
        self.server_port = 0

    def run(self) -> ProfileReport:
        started = time.perf_counter()
        s = self.settings
        cleanup_leftovers()
        owned = s.workdir is None
        workdir = Path(tempfile.mkdtemp(prefix="edgerec-profile-")) if s.workdir is None else s.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            with _sigterm_unwinds():
                rows = self._run_in(workdir)
        finally:
            if owned:
                shutil.rmtree(workdir, ignore_errors=True)
        recommendations = recommend(rows, s.window_s, {link.name: link for link in s.links}, s.from_version)
        return ProfileReport(
            s, self.method, rows, recommendations, time.perf_counter() - started, None if owned else workdir
        )

    def _run_in(self, workdir: Path) -> list[ProfileRow]:
        from edgerec.server.app import ServerConfig, start_server
        from edgerec.signing import generate_keypair

        s = self.settings
        total = len(s.links) * len(s.codecs)
        self.progress(0, total, "making payloads")
        plans = plan_codecs(self.registry, s.model, s.from_version, s.to_version, s.recipe, s.codecs)
        keys = workdir / "keys"
        shutil.rmtree(keys, ignore_errors=True)
        keys.mkdir()
        generate_keypair(keys / "server.pem", keys / "server.pub")
        self.public_key = keys / "server.pub"
        server = start_server(
            ServerConfig(
                registry=s.registry, s3_endpoint=s.s3_endpoint, listen="127.0.0.1:0", signing_key=keys / "server.pem"
            )
        )
        try:
            self.server_port = server.port
            template = workdir / "base"
            shutil.rmtree(template, ignore_errors=True)
            self.progress(0, total, f"installing version {s.from_version} on the device")
            with EdgeClient(
                f"127.0.0.1:{server.port}",
                s.model,
                template,
                recipes=(s.recipe,),
                trusted_keys=[self.public_key],
            ) as client:
                client.sync(s.from_version)
            rows: list[ProfileRow] = []
            deferred: list[ProfileRow] = []
            done = 0
            for link in s.links:
                self.progress(done, total, f"{link.name}: building the link")
                with ShapedLink(link, server.port, self.method, seed=s.seed) as shaped:
                    for codec in s.codecs:
                        plan = plans[codec]
                        self.progress(done, total, f"{link.name}: {codec}")
                        row = self._row(link, plan, shaped.method, shaped.wire_factor)
                        if (row.expected_transfer_s or 0.0) > s.max_transfer_s:
                            deferred.append(row)
                        else:
                            self._measure(row, shaped, plan, workdir / "runs" / f"{link.name}-{codec}", template)
                        rows.append(row)
                        done += 1
                        self.progress(done, total, f"{link.name}: {codec} done")
            for row in deferred:
                self._estimate(row, plans[row.codec], rows, workdir, template)
            return rows
        finally:
            server.stop(grace=0)

    def _row(self, link: LinkProfile, plan: CodecPlan, method: str, wire_factor: float) -> ProfileRow:
        return ProfileRow(
            link=link.name,
            codec=plan.codec,
            codec_used=plan.codec_used,
            method=method,
            measured=False,
            rate_bytes_per_s=link.rate_bytes_per_s,
            rtt_s=link.rtt_s,
            loss=link.loss,
            drop_every_bytes=link.drop_every_bytes,
            payload_bytes=plan.payload_bytes,
            full_bytes=plan.full_bytes,
            downloads=plan.downloads,
            wire_factor=wire_factor,
            prep_s=plan.prep_s,
            expected_transfer_s=expected_transfer_s(plan.payload_bytes, plan.downloads, link, wire_factor),
            note=plan.note,
        )

    def _probe_command(self, target: str, data_dir: Path, codec: str, timeout_s: float) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "edgerec.tools.profile.device_probe",
            "--server",
            target,
            "--model",
            s.model,
            "--data-dir",
            str(data_dir),
            "--version",
            str(s.to_version),
            "--codec",
            codec,
            "--recipe",
            s.recipe,
            "--chunk-bytes",
            str(s.chunk_bytes),
            "--timeout",
            f"{timeout_s:.0f}",
            "--trusted-key",
            str(self.public_key),
        ]

    def _fresh_device(self, folder: Path, template: Path) -> Path:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        data_dir = folder / "device"
        shutil.copytree(template, data_dir)
        return data_dir

    def _measure(self, row: ProfileRow, shaped: ShapedLink, plan: CodecPlan, folder: Path, template: Path) -> None:
        """Run the device process over ``shaped`` and fill ``row`` with what it measured."""
        data_dir = self._fresh_device(folder, template)
        expected = row.expected_transfer_s or 0.0
        timeout_s = 120.0 + 5 * expected
        before = shaped.counters()
        command = shaped.command(self._probe_command(shaped.device_target, data_dir, row.codec, timeout_s))
        result = run_device(command, folder, timeout_s + 30)
        counters = shaped.counters() - before
        if result.error:
            row.note = "; ".join(filter(None, [row.note, f"failed: {result.error}"]))
            log.error("%s over %s failed: %s", row.codec, row.link, result.error)
            return
        m = result.measured
        row.measured = True
        row.codec_used = str(m["codec_used"])
        row.payload_bytes = int(m["payload_bytes"])
        row.downloads = len(m["downloads"])
        row.check_s = float(m["check_s"])
        row.transfer_s = float(m["transfer_s"])
        row.apply_s = float(m["apply_s"])
        row.first_predict_s = float(m["first_predict_s"])
        row.time_to_update_s = row.check_s + row.transfer_s + row.apply_s + row.first_predict_s
        row.cpu_s = float(m["cpu_s"])
        if result.usage is not None:
            row.process_cpu_s = result.usage.ru_utime + result.usage.ru_stime
            row.peak_rss_bytes = result.usage.ru_maxrss * 1024
        self._link_numbers(row, counters, int(m["check_response_bytes"]))
        if m.get("fell_back_to_full"):
            row.note = "; ".join(filter(None, [row.note, "delta failed; fell back to full"]))
        assert row.transfer_s is not None and row.expected_transfer_s is not None
        row.extra_s = row.transfer_s - row.expected_transfer_s

    def _link_numbers(self, row: ProfileRow, counters: LinkCounters, response_bytes: int) -> None:
        row.wire_bytes = counters.bytes_down + counters.retransmitted_bytes
        row.extra_bytes = row.wire_bytes - row.payload_bytes - response_bytes
        row.cuts = counters.cuts
        row.lost_segments = counters.lost_segments

    def _estimate(
        self,
        row: ProfileRow,
        plan: CodecPlan,
        rows: Sequence[ProfileRow],
        workdir: Path,
        template: Path,
    ) -> None:
        """Fill a row not run over its link: the link model for the network, a measured run for the device."""
        link = next(link for link in self.settings.links if link.name == row.link)
        device = next((r for r in rows if r.codec == row.codec and r.measured), None)
        if device is None:
            device = self._calibrate(row, workdir, template)
        same_link = next((r for r in rows if r.link == row.link and r.measured and r.check_s is not None), None)
        row.transfer_s = row.expected_transfer_s
        if same_link is not None:  # the update check does not depend on the codec
            row.check_s = same_link.check_s
        else:  # connect, then one request: two round trips and the response at the link rate
            row.check_s = 2 * link.rtt_s + plan.response_bytes * row.wire_factor / link.effective_rate_bytes_per_s
        estimated = "est." + (" (cuts not modelled)" if link.drop_every_bytes else "")
        row.note = "; ".join(filter(None, [row.note, estimated]))
        if device is None or device.apply_s is None or device.first_predict_s is None:
            return
        row.apply_s, row.first_predict_s = device.apply_s, device.first_predict_s
        row.cpu_s, row.process_cpu_s, row.peak_rss_bytes = device.cpu_s, device.process_cpu_s, device.peak_rss_bytes
        assert row.transfer_s is not None and row.check_s is not None
        row.time_to_update_s = row.check_s + row.transfer_s + row.apply_s + row.first_predict_s

    def _calibrate(self, row: ProfileRow, workdir: Path, template: Path) -> ProfileRow | None:
        """One unshaped run on loopback, for the device-side numbers of a codec no link measured."""
        folder = workdir / "runs" / f"loopback-{row.codec}"
        data_dir = self._fresh_device(folder, template)
        command = self._probe_command(f"127.0.0.1:{self.server_port}", data_dir, row.codec, 600.0)
        result = run_device(command, folder, 630.0)
        if result.error:
            log.error("calibration run of %s failed: %s", row.codec, result.error)
            return None
        m, usage = result.measured, result.usage
        return replace(
            row,
            measured=True,
            apply_s=float(m["apply_s"]),
            first_predict_s=float(m["first_predict_s"]),
            cpu_s=float(m["cpu_s"]),
            process_cpu_s=usage.ru_utime + usage.ru_stime if usage else None,
            peak_rss_bytes=usage.ru_maxrss * 1024 if usage else None,
        )


def recommend(
    rows: Sequence[ProfileRow],
    window_s: float,
    links: dict[str, LinkProfile],
    base_version: int | None = None,
) -> list[Recommendation]:
    """Per link: the codec with the shortest time to update, and whether it fits ``window_s``.

    Codecs within 10% (or 0.1 s) of the fastest count as tied (that is run-to-run noise here);
    of those the one shipping the fewest bytes wins.

    When it does not, the payload that would fit is the window minus the update's fixed costs
    (round trips, apply, first prediction), at the link's rate: a partial update of that size
    (``edgerec publish --budget``) would.
    """
    out: list[Recommendation] = []
    for name, link in links.items():
        candidates = [r for r in rows if r.link == name and r.time_to_update_s is not None]
        for r in candidates:
            r.fits_window = r.time_to_update_s is not None and r.time_to_update_s <= window_s
        if not candidates:
            continue
        fastest = min(r.time_to_update_s or 0.0 for r in candidates)
        tied = [r for r in candidates if (r.time_to_update_s or 0.0) <= fastest + max(0.1 * fastest, 0.1)]
        best = min(tied, key=lambda r: (r.payload_bytes, r.time_to_update_s or 0.0))
        assert best.time_to_update_s is not None
        best.recommended = True
        budget: int | None = None
        if best.time_to_update_s <= window_s:
            advice = f"{best.codec_used}: {best.time_to_update_s:.1f}s, fits the {window_s:.0f}s window"
        else:
            rate = link.effective_rate_bytes_per_s
            fixed_s = best.time_to_update_s - best.payload_bytes * best.wire_factor / rate
            budget = int((window_s - fixed_s) * rate / best.wire_factor)
            if budget < 1000:
                budget = None
                advice = f"no update fits {window_s:.0f}s: round trips, apply and load alone take {fixed_s:.1f}s"
            else:
                advice = (
                    f"{best.codec_used} takes {best.time_to_update_s:.0f}s; a partial update of "
                    f"{format_bytes(budget)} fits {window_s:.0f}s: edgerec publish --budget {_budget_text(budget)}"
                    + (f" --base {base_version}" if base_version is not None else "")
                )
        best.advice = advice
        out.append(
            Recommendation(
                name, best.codec_used, best.time_to_update_s, window_s, bool(best.fits_window), budget, advice
            )
        )
    return out


def _budget_text(budget: int) -> str:
    """A --budget value rounded down to kB (SI, as parse_size reads it)."""
    return f"{budget // 1000}KB"
