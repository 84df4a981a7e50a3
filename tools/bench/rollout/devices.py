"""A population of simulated devices talking to a real server: CheckUpdate, install, feedback, ReportStatus.

Each device asks ``CheckUpdate`` with its id, channel, labels, runtimes and current version (and a
fresh nonce), verifies the answer with the SDK's :class:`~edgerec.trust.UpdateVerifier` (signatures,
freshness, version floor, recipe), installs what it is offered through the shared
:class:`~.library.VersionLibrary` (the SDK's file check and health check on the device's hardware),
records outcome feedback per version, and sends a ``StatusReport`` with its per-version outcomes and
install failures, as the SDK's reporter does.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import grpc
import numpy as np

from edgerec.codecs import CODEC_NAMES
from edgerec.errors import EdgerecError
from edgerec.reference.data import ClickGenerator
from edgerec.tools.bench.rollout.clicks import Feedback, SlateSettings, draw_candidates, show_and_click
from edgerec.tools.bench.rollout.hardware import FLUSH_TO_ZERO, IEEE
from edgerec.tools.bench.rollout.library import Latency, VersionLibrary
from edgerec.trust import UpdateVerifier
from edgerec.v1 import telemetry_pb2, telemetry_pb2_grpc, update_pb2, update_pb2_grpc

__all__ = ["Fleet", "SimDevice", "make_population"]

RECIPES: Final = ("int8", "fp32")
RUNTIMES: Final = ("onnxruntime",)
APP_VERSION: Final = "5.2.0"
RPC_TIMEOUT_S: Final = 30.0
# A report carries at most this many versions' outcomes and install failures (telemetry.proto).
MAX_REPORTED_VERSIONS: Final = 8
MAX_REPORTED_FAILURES: Final = 16
REGIONS: Final = ("eu", "us", "apac")
# The CPU label of devices whose hardware flushes subnormals to zero.
FTZ_CPU: Final = "armv7"

Clock = Callable[[], float]


@dataclass
class VersionTally:
    """One version's cumulative outcomes on one device."""

    version: int
    active_since_unix_s: float
    predictions: int = 0
    impressions: int = 0
    clicks: int = 0
    score_sum: float = 0.0
    latency: Latency | None = None


@dataclass
class SimDevice:
    """One simulated device of one model."""

    device_id: str
    labels: dict[str, str]
    hardware: str
    channel: str = "stable"
    active_version: int = 0
    active_digest: str = ""
    active_recipe: str = ""
    highest_activated: int = 0
    # Versions this device activated, in order, with the artifact digest of each.
    ran: list[tuple[int, str]] = field(default_factory=list)
    tallies: dict[int, VersionTally] = field(default_factory=dict)
    install_failures: list[tuple[int, str, float]] = field(default_factory=list)
    syncs_updated: int = 0
    syncs_current: int = 0
    syncs_failed: int = 0
    last_error: str = ""
    last_attempt_unix_s: float = 0.0
    # A silent device checks for updates but never reports (a crashed reporter, a blocked port).
    silent: bool = False

    def request(self, model: str) -> update_pb2.CheckUpdateRequest:
        """The CheckUpdate this device sends now (a fresh nonce each time)."""
        return update_pb2.CheckUpdateRequest(
            model=model,
            current_version=self.active_version,
            current_sha256=self.active_digest,
            current_recipe=self.active_recipe,
            runtimes=list(RUNTIMES),
            codecs=list(CODEC_NAMES),
            recipes=list(RECIPES),
            device_id=self.device_id,
            nonce=secrets.token_bytes(16),
            channel=self.channel,
            labels=self.labels,
            app_version=APP_VERSION,
        )

    def report(self, model: str, now: float) -> telemetry_pb2.StatusReport:
        """This device's status report: what it runs, per-version outcomes (newest first), install failures."""
        tallies = sorted(self.tallies.values(), key=lambda t: t.active_since_unix_s, reverse=True)
        outcomes = [_outcomes(t) for t in tallies[:MAX_REPORTED_VERSIONS]]
        predictions = sum(t.predictions for t in self.tallies.values())
        current = self.tallies.get(self.active_version)
        latency = current.latency if current is not None else None
        return telemetry_pb2.StatusReport(
            device_id=self.device_id,
            model=model,
            active_version=self.active_version,
            recipe=self.active_recipe,
            predictions_by_source={"local": predictions} if predictions else {},
            latency=_percentiles(latency, predictions),
            sync=telemetry_pb2.SyncOutcomes(
                updated=self.syncs_updated,
                up_to_date=self.syncs_current,
                failed=self.syncs_failed,
                last_error=self.last_error,
                last_attempt_unix_s=self.last_attempt_unix_s,
            ),
            created_unix_s=now,
            outcomes=outcomes,
            install_failures=[
                telemetry_pb2.InstallFailure(version=v, error=e, unix_s=t)
                for v, e, t in reversed(self.install_failures[-MAX_REPORTED_FAILURES:])
            ],
            channel=self.channel,
            labels=self.labels,
            runtimes=list(RUNTIMES),
            app_version=APP_VERSION,
        )

    def ever_ran(self, version: int) -> bool:
        return any(v == version for v, _ in self.ran)


def _outcomes(tally: VersionTally) -> telemetry_pb2.VersionOutcomes:
    return telemetry_pb2.VersionOutcomes(
        version=tally.version,
        predictions=tally.predictions,
        latency=_percentiles(tally.latency, tally.predictions),
        impressions=tally.impressions,
        clicks=tally.clicks,
        score_sum=tally.score_sum,
        active_since_unix_s=tally.active_since_unix_s,
    )


def _percentiles(latency: Latency | None, count: int) -> telemetry_pb2.LatencyPercentiles:
    if latency is None or not count:
        return telemetry_pb2.LatencyPercentiles()
    return telemetry_pb2.LatencyPercentiles(p50_s=latency.p50_s, p90_s=latency.p90_s, p99_s=latency.p99_s, count=count)


def make_population(size: int, *, seed: int = 0, ftz_fraction: float = 0.3) -> list[SimDevice]:
    """``size`` devices: exactly ``round(ftz_fraction * size)`` of them (a seeded draw) are 32-bit ARM
    devices whose hardware flushes subnormals to zero; each has a ``cpu`` and a ``region`` label."""
    rng = np.random.default_rng([seed, 17])
    ftz = set(rng.permutation(size)[: round(ftz_fraction * size)].tolist())
    devices = []
    for index in range(size):
        cpu = FTZ_CPU if index in ftz else ("arm64" if rng.random() < 0.7 else "x86_64")
        region = REGIONS[int(rng.integers(len(REGIONS)))]
        devices.append(
            SimDevice(
                device_id=f"sim-{seed}-{index:05d}",
                labels={"cpu": cpu, "region": region},
                hardware=FLUSH_TO_ZERO if index in ftz else IEEE,
            )
        )
    return devices


@dataclass(frozen=True)
class RoundStats:
    """What one round of checks did across the fleet."""

    checks: int
    installed: int
    install_failures: int
    errors: int
    reports: int


class Fleet:
    """The population, its connection to the server and its shared versions; one round at a time.

    A round is one check interval: every device checks for an update (and installs what it is
    offered), records a round of outcome feedback with the version it runs, and reports.
    """

    def __init__(
        self,
        devices: Sequence[SimDevice],
        *,
        model: str,
        address: str,
        verifier: UpdateVerifier,
        library: VersionLibrary,
        generator: ClickGenerator,
        slates: SlateSettings,
        clock: Clock,
        seed: int = 0,
        workers: int = 8,
    ) -> None:
        self.devices = list(devices)
        self.model = model
        self.verifier = verifier
        self.library = library
        self.generator = generator
        self.slates = slates
        self.clock = clock
        self.seed = seed
        self._channel = grpc.insecure_channel(address)
        self._update = update_pb2_grpc.ModelUpdateStub(self._channel)  # type: ignore[no-untyped-call]
        self._telemetry = telemetry_pb2_grpc.TelemetryStub(self._channel)  # type: ignore[no-untyped-call]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-device")
        self._lock = threading.Lock()
        self.rounds = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._channel.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_round(self, devices: Iterable[SimDevice] | None = None) -> RoundStats:
        """One check interval of ``devices`` (default: all): check and install, feedback, report."""
        chosen = list(self.devices if devices is None else devices)
        outcomes = list(self._pool.map(self.check, chosen))
        self.feedback(chosen)
        reports = sum(self._pool.map(self.send_report, chosen))
        self.rounds += 1
        return RoundStats(
            checks=len(chosen),
            installed=outcomes.count("installed"),
            install_failures=outcomes.count("install_failed"),
            errors=outcomes.count("error"),
            reports=reports,
        )

    def check(self, device: SimDevice) -> str:
        """One CheckUpdate of ``device``, verified, and the install of what it offers.

        Returns "current", "installed", "install_failed" or "error" (the device keeps its version).
        """
        request = device.request(self.model)
        now = self.clock()
        device.last_attempt_unix_s = now
        try:
            response = self._update.CheckUpdate(request, timeout=RPC_TIMEOUT_S)
            answer = self.verifier.verify_answer(
                request, response, highest_activated=device.highest_activated, now=datetime.now(UTC)
            )
        except (grpc.RpcError, EdgerecError) as exc:
            device.syncs_failed += 1
            device.last_error = f"{type(exc).__name__}: {exc}"[:512]
            return "error"
        if answer.manifest is None or answer.artifact is None:
            device.syncs_current += 1
            return "current"
        manifest, artifact = answer.manifest, answer.artifact
        error = self.library.install(manifest, artifact, device.hardware)
        if error:
            device.syncs_failed += 1
            device.last_error = f"{error}: version {manifest.version} failed its health check"
            device.install_failures.append((manifest.version, error, now))
            return "install_failed"
        device.active_version = manifest.version
        device.active_digest = artifact.digest
        device.active_recipe = artifact.recipe
        device.highest_activated = max(device.highest_activated, manifest.version)
        device.ran.append((manifest.version, artifact.digest))
        device.tallies[manifest.version] = VersionTally(manifest.version, active_since_unix_s=now)
        device.syncs_updated += 1
        return "installed"

    def feedback(self, devices: Sequence[SimDevice]) -> None:
        """One round of recommendations: each device scores candidates with its version, shows the best, gets clicks."""
        candidates = draw_candidates(self.generator, self.rounds, len(devices), self.slates)
        per = self.slates.rows_per_device
        groups: dict[tuple[str, str], list[int]] = {}
        for index, device in enumerate(devices):
            if device.active_digest:
                groups.setdefault((device.active_digest, device.hardware), []).append(index)
        rng = np.random.default_rng([self.seed, 23, self.rounds])
        inputs = candidates.inputs()
        for (digest, hardware), members in sorted(groups.items()):
            rows = (np.asarray(members)[:, None] * per + np.arange(per)[None, :]).ravel()
            feeds = {name: np.ascontiguousarray(array[rows]) for name, array in inputs.items()}
            runner = self.library.runner(digest, hardware)
            scores = np.asarray(runner.run(feeds)[runner.output_names[0]], dtype=np.float32).ravel()
            latency = self.library.latency(digest, hardware, feeds)
            results = show_and_click(scores, candidates.true_prob[rows], self.slates, rng)
            for index, result in zip(members, results, strict=True):
                _add(devices[index], result, latency)

    def send_report(self, device: SimDevice) -> bool:
        """``device``'s status report to the server; False when it is silent or the call failed."""
        if device.silent:
            return False
        try:
            self._telemetry.ReportStatus(device.report(self.model, self.clock()), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            return False
        return True


def _add(device: SimDevice, feedback: Feedback, latency: Latency) -> None:
    tally = device.tallies[device.active_version]
    tally.predictions += feedback.predictions
    tally.impressions += feedback.impressions
    tally.clicks += feedback.clicks
    tally.score_sum += feedback.score_sum
    tally.latency = latency
