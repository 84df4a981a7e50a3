"""Fleet benchmark: many fresh devices updating at once from a default ``edgerec serve``.

Run ``python -m edgerec.tools.bench.fleet [--devices 1000] [--rate 128kbit] [--out bench-out/fleet]``; it
writes ``fleet.md`` (the targets, then each run), ``fleet.csv`` (one summary row per run), ``fleet.json``
(everything, every device) and ``devices_done.png``.

A reference DLRM (``--size``, trained briefly: accuracy does not matter here, and publishing gets
validation data for its accuracy gate) is published with the default recipes into a temporary
registry and served by ``edgerec serve`` in a subprocess with its default settings and a signing
key, on loopback. Against it the fleet simulator (:mod:`edgerec.tools.profile.fleet`, in a process of
its own so its CPU and memory are its own) runs two fleets, each against a freshly started server:

- the target run: ``--devices`` fresh devices at ``--rate`` each, started over ``--ramp``;
- a comparison run: ``--compare-devices`` at ``--compare-rate``, all at once (the fleet issue measured
  64 devices at 1 Mbit/s taking 194 s instead of the 11 s their links allow).

Every device comes from 127.0.0.1 without a token: to the server they are one device (carrier NAT),
and they verify the manifest's signature, every chunk and every payload's sha256.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Final

from edgerec.tools.bench.servers import serve
from edgerec.tools.links.profiles import format_bitrate, parse_duration
from edgerec.tools.profile.fleet import FleetReport, FleetSettings, run_fleet
from edgerec.tools.profile.fleet import report as out
from edgerec.units import format_bytes, parse_rate

MODULE: Final = "edgerec.tools.bench.fleet"
logger = logging.getLogger(MODULE)
MODEL_NAME: Final = "ctr"

# Targets (the fleet issue), for the target run.
MAX_RATIO: Final = 1.15
MAX_SERVER_PEAK_RSS_BYTES: Final = 300 * 10**6
MAX_SERVER_CPU_S_PER_GB: Final = 15.0
# What the issue measured for 64 devices at 1 Mbit/s (default server), shown beside the comparison run.
ISSUE_COMPARISON: Final = "194 s instead of 11 s (17.6x), 765 RESOURCE_EXHAUSTED retries"


@dataclass(frozen=True)
class Settings:
    size: str
    out: Path
    train_samples: int
    devices: int
    rate: str
    ramp_s: float
    compare_devices: int  # 0: no comparison run
    compare_rate: str
    deadline_s: float  # each device's, from its start


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    limit: str
    met: bool


# --- the registry and the server ----------------------------------------------------------------


def build(settings: Settings, work: Path) -> tuple[Path, Path, Path]:
    """Train and publish the reference model (default recipes); return the registry and a key pair."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions, publish
    from edgerec.signing import generate_keypair

    config = ReferenceConfig.from_name(settings.size)
    generator = ClickGenerator(config, seed=0)
    started = time.perf_counter()
    model = build_and_train(config, generator, day=0, num_samples=settings.train_samples, epochs=1)
    program = export_program(model, work / "model.pt2", generator.day(99, 4))
    held_out = generator.day(3, 5_000)
    options = PublishOptions(validation={**held_out.inputs(), "labels": held_out.labels})
    registry = Registry(work / "registry")
    publish(program, MODEL_NAME, registry, options)
    generate_keypair(work / "server.pem", work / "server.pub")
    logger.info("trained and published %s in %.1f s", settings.size, time.perf_counter() - started)
    return registry.root, work / "server.pem", work / "server.pub"


# --- the fleets ---------------------------------------------------------------------------------


class _LogProgress:
    """Logs the fleet's progress every tenth of its devices."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.logged = -1

    def __call__(self, done: int, total: int, state: str) -> None:
        step = done * 10 // total
        if step > self.logged:
            self.logged = step
            logger.info("%s: %d of %d devices done (%s)", self.label, done, total, state)


def _run_in_child(settings: FleetSettings, label: str) -> FleetReport:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgerec").setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    return run_fleet(settings, _LogProgress(label), label=label)


@dataclass(frozen=True)
class Scenario:
    """One fleet: ``devices`` at ``rate`` each, started over ``ramp_s``."""

    devices: int
    rate: str
    ramp_s: float

    @property
    def label(self) -> str:
        at_once = ", at once" if self.ramp_s == 0 else f", ramp {self.ramp_s:g} s"
        return f"{self.devices} devices at {format_bitrate(parse_rate(self.rate))}{at_once}"


def run_scenario(
    scenario: Scenario, registry: Path, keys: tuple[Path, Path], work: Path, deadline_s: float
) -> FleetReport:
    """One fleet against a freshly started server; the simulator runs in a fresh process of its own."""
    private, public = keys
    with serve(registry, private, work / f"serve-{scenario.devices}.log") as (address, pid):
        settings = FleetSettings(
            server=address,
            model=MODEL_NAME,
            devices=scenario.devices,
            rate_bytes_per_s=parse_rate(scenario.rate),
            ramp_s=scenario.ramp_s,
            deadline_s=deadline_s,
            trusted_keys=(public,),
            server_pid=pid,
        )
        logger.info("%s, against edgerec serve (pid %d)", scenario.label, pid)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_run_in_child, settings, scenario.label).result()


def compute_targets(report: FleetReport) -> list[Target]:
    """The issue's targets, judged on the target run."""
    s = report.summary()
    rss, per_gb = s["server_peak_rss_bytes"], s["server_cpu_s_per_gb"]
    return [
        Target(
            "every device finishes, none fails",
            f"{s['finished']} of {s['devices']} finished, {s['failed']} failed",
            f"{s['devices']} finished, 0 failed",
            s["failed"] == 0,
        ),
        Target(
            "fleet completion vs the link-limited ideal",
            f"{s['completion_s']:.1f} s / {s['ideal_s']:.1f} s = {s['ratio']:.2f}x"
            + ("" if s["all_finished"] else " (not every device finished)"),
            f"<= {MAX_RATIO:g}x, every device finished",
            s["all_finished"] and s["ratio"] <= MAX_RATIO,
        ),
        Target(
            "server peak RSS",
            format_bytes(rss) if rss is not None else "-",
            f"<= {format_bytes(MAX_SERVER_PEAK_RSS_BYTES)}",
            rss is not None and rss <= MAX_SERVER_PEAK_RSS_BYTES,
        ),
        Target(
            "server CPU-seconds per GB delivered (gRPC path)",
            f"{per_gb:.1f} s/GB" if per_gb is not None else "- (nothing delivered)",
            f"<= {MAX_SERVER_CPU_S_PER_GB:g} s/GB",
            per_gb is not None and per_gb <= MAX_SERVER_CPU_S_PER_GB,
        ),
    ]


# --- output -------------------------------------------------------------------------------------


def render_markdown(reports: Sequence[FleetReport], targets: Sequence[Target], context: Mapping[str, str]) -> str:
    lines = ["# Fleet benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", f"## Targets ({reports[0].label})", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.limit} | {'met' if t.met else 'NOT met'} |" for t in targets]
    for report in reports:
        lines += ["", f"## {report.label}", "", "| what | value |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in out.summary_rows(report)]
        if report is not reports[0]:
            lines += [f"| the fleet issue measured | {ISSUE_COMPARISON} |"]
    lines += [
        "",
        "Ideal: the last device's start plus the plan's payload bytes at the device rate. Device times: finished "
        "devices, from their start. Server CPU: user + system seconds of the server process while the fleet ran, "
        "over the payload bytes the devices received. Errors by code: every failed call, by gRPC status.",
        "",
        f"![devices done over time]({out.PLOT_NAME})",
        "",
    ]
    return "\n".join(lines)


def write_outputs(
    reports: Sequence[FleetReport], targets: Sequence[Target], context: Mapping[str, str], folder: Path
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    out.write_csv(reports, folder / "fleet.csv")
    data = {"context": dict(context), "targets": [asdict(t) for t in targets], "runs": [r.as_dict() for r in reports]}
    (folder / "fleet.json").write_text(json.dumps(data, indent=2) + "\n")
    out.write_plot(reports, folder / out.PLOT_NAME)
    (folder / "fleet.md").write_text(render_markdown(reports, targets, context))


def _context(settings: Settings, load_before: str, plan_bytes: int) -> dict[str, str]:
    import grpc

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": f"grpcio {grpc.__version__}",
        "load average before / after": f"{load_before} / {_loadavg()}",
        "settings": (
            f"reference model {settings.size} (int8 plan of {format_bytes(plan_bytes)} for a fresh device), "
            f"default `edgerec serve` with a signing key in a subprocess, devices from 127.0.0.1 without tokens, "
            f"each verifying signatures, chunks and sha256; device deadline {settings.deadline_s:g} s"
        ),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    parser.add_argument("--out", type=Path, default=Path("bench-out/fleet"))
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", default="128kbit", help="each device's link rate")
    parser.add_argument("--ramp", default="10s", help="the target run's devices start over this time")
    parser.add_argument("--compare-devices", type=int, default=64, help="0: no comparison run")
    parser.add_argument("--compare-rate", default="1mbit")
    parser.add_argument("--deadline", default="300s", help="each device's time to finish, from its start")
    parser.add_argument("--train-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.compare_devices < 0:
        parser.error("need --devices >= 1 and --compare-devices >= 0")
    for rate in (args.rate, args.compare_rate):
        parse_rate(rate)  # a bad rate fails now, not after training
    return Settings(
        size=args.size,
        out=args.out,
        train_samples=args.train_samples,
        devices=args.devices,
        rate=args.rate,
        ramp_s=parse_duration(args.ramp),
        compare_devices=args.compare_devices,
        compare_rate=args.compare_rate,
        deadline_s=parse_duration(args.deadline),
    )


def scenarios(settings: Settings) -> list[Scenario]:
    """The target run first, then the comparison run (if any)."""
    runs = [Scenario(settings.devices, settings.rate, settings.ramp_s)]
    if settings.compare_devices:
        runs.append(Scenario(settings.compare_devices, settings.compare_rate, 0.0))
    return runs


def run(settings: Settings) -> tuple[list[FleetReport], list[Target]]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        registry, private, public = build(settings, work)
        reports = [
            run_scenario(scenario, registry, (private, public), work, settings.deadline_s)
            for scenario in scenarios(settings)
        ]
    return reports, compute_targets(reports[0])


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgerec").setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    settings = parse_args(argv)
    load_before = _loadavg()
    reports, targets = run(settings)
    write_outputs(reports, targets, _context(settings, load_before, reports[0].plan_bytes), settings.out)
    logger.info("%s", (settings.out / "fleet.md").read_text())
    logger.info("wrote %s", ", ".join(str(settings.out / n) for n in ("fleet.md", "fleet.csv", "fleet.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
