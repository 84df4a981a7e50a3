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

and, on a registry in SeaweedFS (``weed mini`` on loopback, started by the benchmark, telemetry off;
the model published to it as well):

- ``http``: the target fleet fetching payloads over HTTP (Range GETs of the plan's presigned URLs)
  straight from SeaweedFS: the edgerec server only plans. The same fleet then runs against a
  do-nothing gRPC server that answers every CheckUpdate with one stored answer of the edgerec
  server (the floor: what gRPC alone costs a fleet's connections and checks);
- ``kill``: ``--kill-devices`` devices (gRPC payloads) spread over two replicas on that registry; one
  replica is killed with SIGKILL while they download, and every device must finish through the other.

``--scenarios`` picks which run (default: all four). Every device comes from 127.0.0.1 without a token:
to the server they are one device (carrier NAT), and they verify the manifest's signature, every chunk
and every payload's sha256.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

from edgerec.registry import ModelRegistry
from edgerec.tools.bench.report import Target, loadavg, machine_context, targets_table
from edgerec.tools.bench.servers import serve, serving
from edgerec.tools.links.profiles import format_bitrate, parse_duration
from edgerec.tools.profile.fleet import FleetReport, FleetSettings, run_fleet
from edgerec.tools.profile.fleet import report as out
from edgerec.tools.seaweed import ACCESS_KEY, SECRET_KEY, seaweed_s3
from edgerec.units import format_bytes, parse_rate

MODULE: Final = "edgerec.tools.bench.fleet"
logger = logging.getLogger(MODULE)
MODEL_NAME: Final = "ctr"
SERVICE: Final = "edgerec.v1.ModelUpdate"

# Targets (the fleet issue), for the target run.
MAX_RATIO: Final = 1.15
MAX_SERVER_PEAK_RSS_BYTES: Final = 300 * 10**6
MAX_SERVER_CPU_S_PER_GB: Final = 15.0
MAX_HTTP_SERVER_CPU_S_PER_GB: Final = 1.0
# The edgerec control plane against a gRPC server that does nothing but answer (same fleet, same run).
MAX_FLOOR_RATIO: Final = 1.5
SCENARIOS: Final = ("target", "compare", "http", "kill")
FLOOR_SERVER_FLAG: Final = "--floor-server"
FLOOR: Final = "http-floor"  # the http fleet against a do-nothing gRPC server (a report, not a scenario)
BUCKET: Final = "edgerec-bench"
# The kill run's replica dies when its devices are this far into their downloads (at the link rate).
KILL_AT_FRACTION: Final = 0.4
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
    compare_devices: int
    compare_rate: str
    kill_devices: int
    deadline_s: float  # each device's, from its start
    scenarios: tuple[str, ...] = SCENARIOS


# --- the registry and the server ----------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """The trained reference model, its local registry and the server's key pair."""

    program: Path
    validation: dict[str, Any]  # held-out inputs and labels for the accuracy gate
    registry: Path
    private_key: Path
    public_key: Path

    def publish_to(self, registry: ModelRegistry) -> None:
        from edgerec.server.publish import PublishOptions, publish

        publish(self.program, MODEL_NAME, registry, PublishOptions(validation=self.validation))


def build(size: str, train_samples: int, work: Path) -> Built:
    """Train and publish the reference model (default recipes) to a local registry; make a key pair."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions, publish
    from edgerec.signing import generate_keypair

    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=0)
    started = time.perf_counter()
    model = build_and_train(config, generator, day=0, num_samples=train_samples, epochs=1)
    program = export_program(model, work / "model.pt2", generator.day(99, 4))
    held_out = generator.day(3, 5_000)
    validation = {**held_out.inputs(), "labels": held_out.labels}
    registry = Registry(work / "registry")
    publish(program, MODEL_NAME, registry, PublishOptions(validation=validation))
    generate_keypair(work / "server.pem", work / "server.pub")
    logger.info("trained and published %s in %.1f s", size, time.perf_counter() - started)
    return Built(program, validation, registry.root, work / "server.pem", work / "server.pub")


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
    """One fleet: ``devices`` at ``rate`` each, started over ``ramp_s``; ``name`` is one of SCENARIOS."""

    name: str
    devices: int
    rate: str
    ramp_s: float

    @property
    def label(self) -> str:
        at_once = ", at once" if self.ramp_s == 0 else f", ramp {self.ramp_s:g} s"
        where = {
            "http": ", payloads over HTTP from SeaweedFS",
            "kill": ", two replicas on SeaweedFS, one killed (SIGKILL) mid-download",
        }.get(self.name, "")
        return f"{self.name}: {self.devices} devices at {format_bitrate(parse_rate(self.rate))}{at_once}{where}"

    def fleet(self, server: tuple[str, int], deadline_s: float, public_key: Path, **more: object) -> FleetSettings:
        """The fleet's settings against ``server`` (its address and process id, which is sampled)."""
        return FleetSettings(
            server=server[0],
            model=MODEL_NAME,
            devices=self.devices,
            rate_bytes_per_s=parse_rate(self.rate),
            ramp_s=self.ramp_s,
            deadline_s=deadline_s,
            trusted_keys=(public_key,),
            server_pid=server[1],
            **more,  # type: ignore[arg-type]
        )


def _simulate(settings: FleetSettings, label: str) -> FleetReport:
    """The fleet in a fresh process of its own, so its CPU and memory are its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_run_in_child, settings, label).result()


def run_local(scenario: Scenario, built: Built, work: Path, deadline_s: float) -> FleetReport:
    """One fleet against a freshly started server on the local registry."""
    with serve(built.registry, built.private_key, work / f"serve-{scenario.name}.log") as server:
        logger.info("%s, against edgerec serve (pid %d)", scenario.label, server[1])
        return _simulate(scenario.fleet(server, deadline_s, built.public_key), scenario.label)


@contextmanager
def seaweed_registry(built: Built, work: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """SeaweedFS on loopback with the model published to a bucket in it; yields the registry's URL and the
    environment (credentials, endpoint) a server needs for it."""
    from edgerec.registry.s3 import S3Registry

    with seaweed_s3(work / "seaweed") as s3:
        s3.make_bucket(BUCKET)
        started = time.perf_counter()
        built.publish_to(S3Registry(BUCKET, "fleet", client=s3.client(), cache_dir=work / "publish-cache"))
        logger.info("published to SeaweedFS (%s) in %.1f s", s3.endpoint, time.perf_counter() - started)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": s3.endpoint}
        yield f"s3://{BUCKET}/fleet", env


def run_http(
    scenario: Scenario, built: Built, url: str, env: Mapping[str, str], work: Path, deadline_s: float
) -> tuple[FleetReport, FleetReport]:
    """The fleet against a server on the SeaweedFS registry, fetching payloads from the plan's URLs; then
    the same fleet against the floor server answering with that server's answer."""
    extra = ["--registry-cache", str(work / "cache-http")]
    answer = work / "floor-answer.bin"
    with serve(url, built.private_key, work / "serve-http.log", extra, env) as server:
        logger.info("%s, against edgerec serve (pid %d)", scenario.label, server[1])
        report = _simulate(scenario.fleet(server, deadline_s, built.public_key, http=True), scenario.label)
        answer.write_bytes(_check_update(server[0]))
    label = f"{scenario.label}; the floor: a do-nothing gRPC server"
    command = [sys.executable, "-m", MODULE, FLOOR_SERVER_FLAG, str(answer)]
    with serving(command, work / "serve-floor.log") as floor:
        logger.info("%s (pid %d)", label, floor[1])
        return report, _simulate(scenario.fleet(floor, deadline_s, built.public_key, http=True), label)


def run_floor_server(answer_file: Path) -> None:
    """A ModelUpdate server that does nothing: every CheckUpdate gets the bytes of ``answer_file`` (the
    request is not even parsed), on a thread pool as large as ``edgerec serve``'s."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from edgerec.server.app import DEFAULT_WORKERS

    answer = answer_file.read_bytes()
    check = grpc.unary_unary_rpc_method_handler(lambda request, context: answer)
    service = grpc.method_handlers_generic_handler(SERVICE, {"CheckUpdate": check})
    server = grpc.server(ThreadPoolExecutor(max_workers=DEFAULT_WORKERS), handlers=[service])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving the floor on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def run_kill(
    scenario: Scenario, built: Built, url: str, env: Mapping[str, str], work: Path, deadline_s: float
) -> FleetReport:
    """The fleet over two replicas on the SeaweedFS registry; the first is killed mid-download.

    Devices alternate which replica they start on; the survivor is the one sampled.
    """
    with (
        serve(url, built.private_key, work / "serve-a.log", ["--registry-cache", str(work / "cache-a")], env) as doomed,
        serve(
            url, built.private_key, work / "serve-b.log", ["--registry-cache", str(work / "cache-b")], env
        ) as survivor,
    ):
        settings = scenario.fleet(survivor, deadline_s, built.public_key, also=(doomed[0],))
        plan_bytes = _plan_bytes(survivor[0])
        # The child takes a few seconds to start; then each device downloads for plan / rate seconds.
        kill_after = 5.0 + scenario.ramp_s + KILL_AT_FRACTION * plan_bytes / settings.rate_bytes_per_s
        killer = threading.Timer(kill_after, _kill, (doomed,))
        logger.info("%s: replica pid %d dies in %.0f s", scenario.label, doomed[1], kill_after)
        killer.start()
        try:
            return _simulate(settings, scenario.label)
        finally:
            killer.cancel()


def _kill(server: tuple[str, int]) -> None:
    logger.info("kill -9 replica %s (pid %d)", *server)
    os.kill(server[1], signal.SIGKILL)


def _check_update(address: str) -> bytes:
    """A fresh device's CheckUpdate answer from the server at ``address``, as the bytes it sent."""
    import grpc

    from edgerec.artifacts import DEFAULT_RECIPES
    from edgerec.tools.profile.fleet.device import check_update_request

    request = check_update_request(MODEL_NAME, DEFAULT_RECIPES, "bench-probe").SerializeToString()
    with grpc.insecure_channel(address) as channel:
        answer: bytes = channel.unary_unary(f"/{SERVICE}/CheckUpdate", None, None)(request, timeout=60)
    return answer


def _plan_bytes(address: str) -> int:
    from edgerec.v1 import update_pb2

    return int(update_pb2.CheckUpdateResponse.FromString(_check_update(address)).payload_bytes)


def compute_targets(reports: Mapping[str, FleetReport]) -> list[Target]:
    """The fleet issue's targets, for each scenario that ran."""
    targets: list[Target] = []
    if "target" in reports:
        targets += _grpc_targets(reports["target"])
    if "http" in reports:
        targets += _http_targets(reports["http"], reports.get(FLOOR))
    if "kill" in reports:
        targets += _kill_targets(reports["kill"])
    return targets


def _all_finished(s: Mapping[str, object], what: str) -> Target:
    return Target(
        f"{what}: every device finishes, none fails",
        f"{s['finished']} of {s['devices']} finished, {s['failed']} failed",
        f"{s['devices']} finished, 0 failed",
        s["failed"] == 0,
    )


def _grpc_targets(report: FleetReport) -> list[Target]:
    s = report.summary()
    rss, per_gb = s["server_peak_rss_bytes"], s["server_cpu_s_per_gb"]
    return [
        _all_finished(s, "gRPC"),
        Target(
            "gRPC: fleet completion vs the link-limited ideal",
            f"{s['completion_s']:.1f} s / {s['ideal_s']:.1f} s = {s['ratio']:.2f}x"
            + ("" if s["all_finished"] else " (not every device finished)"),
            f"<= {MAX_RATIO:g}x, every device finished",
            s["all_finished"] and s["ratio"] <= MAX_RATIO,
        ),
        Target(
            "gRPC: server peak RSS",
            format_bytes(rss) if rss is not None else "-",
            f"<= {format_bytes(MAX_SERVER_PEAK_RSS_BYTES)}",
            rss is not None and rss <= MAX_SERVER_PEAK_RSS_BYTES,
        ),
        Target(
            "gRPC: server CPU-seconds per GB delivered",
            f"{per_gb:.1f} s/GB" if per_gb is not None else "- (nothing delivered)",
            f"<= {MAX_SERVER_CPU_S_PER_GB:g} s/GB",
            per_gb is not None and per_gb <= MAX_SERVER_CPU_S_PER_GB,
        ),
    ]


def _http_targets(report: FleetReport, floor: FleetReport | None) -> list[Target]:
    s = report.summary()
    per_gb, delivered = s["server_cpu_s_per_gb"], s["bytes_delivered"]
    share = s["bytes_http"] / delivered if delivered else 0.0
    targets = [
        _all_finished(s, "HTTP"),
        Target(
            "HTTP: edgerec server CPU-seconds per GB delivered",
            (f"{per_gb:.2f} s/GB" if per_gb is not None else "-") + f" ({share:.0%} of the bytes over HTTP)",
            f"<= {MAX_HTTP_SERVER_CPU_S_PER_GB:g} s/GB",
            per_gb is not None and per_gb <= MAX_HTTP_SERVER_CPU_S_PER_GB,
        ),
    ]
    if floor is not None:
        f = floor.summary()
        ours, nothing = _cpu_ms_per_device(s), _cpu_ms_per_device(f)
        ratio = ours / nothing if ours is not None and nothing else None
        targets.append(
            Target(
                "HTTP: server CPU per device against a do-nothing gRPC server (same fleet)",
                f"{ours:.2f} ms vs {nothing:.2f} ms ({ratio:.2f}x; floor {f['server_cpu_s_per_gb']:.2f} s/GB)"
                if ratio is not None and ours is not None and nothing is not None
                else "-",
                f"<= {MAX_FLOOR_RATIO:g}x",
                ratio is not None and ratio <= MAX_FLOOR_RATIO,
            )
        )
    return targets


def _cpu_ms_per_device(summary: Mapping[str, Any]) -> float | None:
    cpu = summary["server_cpu_s"]
    return None if cpu is None else 1000 * cpu / summary["devices"]


def _kill_targets(report: FleetReport) -> list[Target]:
    s = report.summary()
    chunk = report.settings.chunk_bytes()
    corrupt = report.errors_by_code().get("IntegrityError", 0)
    return [
        _all_finished(s, "kill -9 of a replica"),
        Target(
            "kill -9: no corrupt payload",
            f"{corrupt} integrity errors (every payload's sha256 checked)",
            "0",
            corrupt == 0,
        ),
        Target(
            "kill -9: no byte taken twice beyond one chunk per cut",
            f"{format_bytes(s['redundant_bytes'])} taken twice over {s['failovers']} failovers",
            f"<= {format_bytes(chunk)} per failover",
            s["redundant_bytes"] <= chunk * s["failovers"] and s["failovers"] > 0,
        ),
    ]


# --- output -------------------------------------------------------------------------------------


def render_markdown(reports: Sequence[FleetReport], targets: Sequence[Target], context: Mapping[str, str]) -> str:
    lines = ["# Fleet benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "## Targets", "", *targets_table(targets)]
    for report in reports:
        lines += ["", f"## {report.label}", "", "| what | value |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in out.summary_rows(report)]
        if report.label.startswith("compare:"):
            lines += [f"| the fleet issue measured | {ISSUE_COMPARISON} |"]
    lines += [
        "",
        "Ideal: the last device's start plus the plan's payload bytes at the device rate. Device times: finished "
        "devices, from their start. Server CPU: user + system seconds of the server process (the surviving "
        "replica in the kill run) while the fleet ran, over the payload bytes the devices received from any "
        "source. Errors by code: every failed call, by gRPC status (HTTP_UNAVAILABLE: a payload URL failed and "
        "the device moved on). Bytes taken twice: a finished device's received bytes beyond its plan.",
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
        **machine_context(load_before),
        "versions": f"grpcio {grpc.__version__}",
        "settings": (
            f"reference model {settings.size} (int8 plan of {format_bytes(plan_bytes)} for a fresh device), "
            f"default `edgerec serve` with a signing key in a subprocess, devices from 127.0.0.1 without tokens, "
            f"each verifying signatures, chunks and sha256; device deadline {settings.deadline_s:g} s"
        ),
    }


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    parser.add_argument("--out", type=Path, default=Path("bench-out/fleet"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--devices", type=int, default=1000, help="devices of the target and http runs")
    parser.add_argument("--rate", default="128kbit", help="each device's link rate (target, http and kill runs)")
    parser.add_argument("--ramp", default="10s", help="devices start over this time (target, http and kill runs)")
    parser.add_argument("--compare-devices", type=int, default=64)
    parser.add_argument("--compare-rate", default="1mbit")
    parser.add_argument("--kill-devices", type=int, default=500)
    parser.add_argument("--deadline", default="300s", help="each device's time to finish, from its start")
    parser.add_argument("--train-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    chosen = tuple(name.strip() for name in args.scenarios.split(",") if name.strip())
    if not chosen or any(name not in SCENARIOS for name in chosen):
        parser.error(f"--scenarios: give some of {', '.join(SCENARIOS)}")
    if min(args.devices, args.compare_devices, args.kill_devices) < 1:
        parser.error("need --devices, --compare-devices and --kill-devices >= 1")
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
        kill_devices=args.kill_devices,
        deadline_s=parse_duration(args.deadline),
        scenarios=tuple(name for name in SCENARIOS if name in chosen),
    )


def scenarios(settings: Settings) -> list[Scenario]:
    """The chosen runs, in the order of SCENARIOS."""
    every = {
        "target": Scenario("target", settings.devices, settings.rate, settings.ramp_s),
        "compare": Scenario("compare", settings.compare_devices, settings.compare_rate, 0.0),
        "http": Scenario("http", settings.devices, settings.rate, settings.ramp_s),
        "kill": Scenario("kill", settings.kill_devices, settings.rate, settings.ramp_s),
    }
    return [every[name] for name in settings.scenarios]


def run(settings: Settings) -> tuple[list[FleetReport], list[Target]]:
    runs = scenarios(settings)
    reports: dict[str, FleetReport] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        built = build(settings.size, settings.train_samples, work)
        for scenario in runs:
            if scenario.name in ("target", "compare"):
                reports[scenario.name] = run_local(scenario, built, work, settings.deadline_s)
        on_s3 = [scenario for scenario in runs if scenario.name in ("http", "kill")]
        if on_s3:
            with seaweed_registry(built, work) as (url, env):
                for scenario in on_s3:
                    if scenario.name == "http":
                        reports["http"], reports[FLOOR] = run_http(scenario, built, url, env, work, settings.deadline_s)
                    else:
                        reports["kill"] = run_kill(scenario, built, url, env, work, settings.deadline_s)
    names = [
        name for scenario in runs for name in ((scenario.name, FLOOR) if scenario.name == "http" else (scenario.name,))
    ]
    ordered = [reports[name] for name in names]
    return ordered, compute_targets(reports)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [FLOOR_SERVER_FLAG] and len(args) == 2:  # how run_http starts the floor server
        run_floor_server(Path(args[1]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgerec").setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    settings = parse_args(argv)
    load_before = loadavg()
    reports, targets = run(settings)
    write_outputs(reports, targets, _context(settings, load_before, reports[0].plan_bytes), settings.out)
    logger.info("%s", (settings.out / "fleet.md").read_text())
    logger.info("wrote %s", ", ".join(str(settings.out / n) for n in ("fleet.md", "fleet.csv", "fleet.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
