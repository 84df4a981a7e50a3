"""``python -m edgerec.tools.faults``: every scenario against one registry and server, then a summary table."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgerec.device.transport import DEFAULT_RECEIVE_WINDOW_BYTES
from edgerec.tools.faults.common import (
    MODEL,
    PACKAGE,
    Summary,
    format_summary,
    open_registry,
    serving,
    versions_under_test,
)
from edgerec.tools.faults.disk import run_disk_full
from edgerec.tools.faults.downloads import run_downloads
from edgerec.tools.faults.drops import run_drops
from edgerec.tools.faults.kills import run_directed_kills, run_kills

log = logging.getLogger(PACKAGE)


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
        prog=f"python -m {PACKAGE}", description=__doc__.split("\n\n")[0] if __doc__ else ""
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
