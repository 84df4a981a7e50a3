"""Dropped links: fresh devices sync through a proxy that cuts the connection at seeded offsets."""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgerec.device import EdgeClient, RetryPolicy
from edgerec.device.transport import DEFAULT_RECEIVE_WINDOW_BYTES, TransportConfig
from edgerec.errors import EdgerecError, TransportError
from edgerec.registry import Registry
from edgerec.tools.faults.common import MODEL, Summary, installed_problems, leftover_files, ratio, versions_under_test
from edgerec.tools.links.cutting import LinkProxy

log = logging.getLogger(__name__)


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
        return ratio(self.wire_bytes - self.payload_bytes, self.payload_bytes)

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
