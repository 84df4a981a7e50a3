"""``edgerec profile fleet``: simulated devices against a real server on loopback.

No timing assertions: the fleet's times are the benchmark's to judge (``make bench-fleet``); here every
device must finish and verify, the bytes must add up to the plan, and a server sending wrong bytes must
show up as failed devices with the integrity error.
"""

from __future__ import annotations

import json
import os
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from conftest import MODEL
from httptools import PayloadHttpServer
from servertools import registry_server, update_server

from edgerec.cli.main import cli
from edgerec.registry import Registry
from edgerec.server.payload_urls import PayloadUrls
from edgerec.server.payloads import PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.server.update_service import ModelUpdateService
from edgerec.signing import generate_keypair
from edgerec.tools.profile.fleet import FleetReport, FleetSettings, run_fleet
from edgerec.tools.profile.fleet.device import check_update_request
from edgerec.tools.profile.fleet.report import PLOT_NAME, write_csv, write_plot
from edgerec.v1 import update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch  # the published registry needs the server extra

FAST = 25e6  # bytes/s: links far faster than loopback needs, so devices finish in moments
DEVICES = 20

# The JSON type of every summary field; nullable ones may also be None (no device finished, no server pid).
SUMMARY_TYPES: dict[str, type] = {
    "label": str,
    "server": str,
    "model": str,
    "devices": int,
    "rate_bytes_per_s": float,
    "ramp_s": float,
    "device_deadline_s": float,
    "channels": int,
    "plan_bytes": int,
    "finished": int,
    "failed": int,
    "all_finished": bool,
    "completion_s": float,
    "ideal_s": float,
    "ratio": float,
    "device_ideal_s": float,
    "device_p50_s": float,
    "device_p95_s": float,
    "device_max_s": float,
    "bytes_delivered": int,
    "bytes_grpc": int,
    "bytes_http": int,
    "calls": int,
    "retries": int,
    "failovers": int,
    "redundant_bytes": int,
    "server_cpu_s": float,
    "server_cpu_s_per_gb": float,
    "server_peak_rss_bytes": int,
    "sim_cpu_s": float,
    "sim_peak_rss_bytes": int,
    "elapsed_s": float,
}
NULLABLE = {
    "device_p50_s",
    "device_p95_s",
    "device_max_s",
    "server_cpu_s",
    "server_cpu_s_per_gb",
    "server_peak_rss_bytes",
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fleet-keys")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    return folder / "server.pem", folder / "server.pub"


def _plan_bytes(address: str) -> int:
    """What the plan for a fresh device costs, asked with the plain (sync) stub."""
    with grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        response = stub.CheckUpdate(check_update_request(MODEL, ("int8", "fp32"), "test"), timeout=30)
    assert response.update_available and response.payload_bytes > 0
    return int(response.payload_bytes)


def _settings(address: str, **overrides: Any) -> FleetSettings:
    options: dict[str, Any] = {"devices": DEVICES, "rate_bytes_per_s": FAST, "ramp_s": 0.2, "deadline_s": 300.0}
    return FleetSettings(server=address, model=MODEL, **(options | overrides))


def _check_types(summary: dict[str, Any]) -> None:
    assert set(summary) == set(SUMMARY_TYPES)
    for key, kind in SUMMARY_TYPES.items():
        value = summary[key]
        if value is None:
            assert key in NULLABLE, key
        elif kind is int:
            assert type(value) is int, (key, value)  # a bool is no count
        else:
            assert isinstance(value, kind), (key, value)


def test_fleet_finishes_verifies_and_counts_the_plan(
    published_registry: Registry, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    with registry_server(published_registry, signing_key=private) as address:
        plan = _plan_bytes(address)
        # The server runs in this process: its pid is ours, which exercises the sampler all the same.
        report = run_fleet(_settings(address, trusted_keys=(public,), server_pid=os.getpid()), label="test")

    summary = report.summary()
    assert (summary["finished"], summary["failed"], summary["all_finished"]) == (DEVICES, 0, True)
    assert [r.device_id for r in report.results] == [f"sim-{i:05d}" for i in range(DEVICES)]
    assert all(r.finished and r.error == "" and r.plan_bytes == plan for r in report.results)
    assert all(r.bytes_by_source == {"grpc": plan} for r in report.results)
    assert report.plan_bytes == plan
    assert (summary["bytes_grpc"], summary["bytes_http"]) == (DEVICES * plan, 0)
    assert summary["bytes_delivered"] == DEVICES * plan
    # Every device from one address shares the server's streams per device: some were told to wait.
    assert set(report.errors_by_code()) <= {"RESOURCE_EXHAUSTED"}
    assert summary["calls"] == sum(r.calls for r in report.results) >= 2 * DEVICES
    assert summary["server_cpu_s"] is not None and summary["server_peak_rss_bytes"] > 0
    assert report.server is not None and len(report.server.samples) >= 2
    _check_types(summary)

    write_csv([report], tmp_path / "fleet.csv")
    header, row = (tmp_path / "fleet.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["label", "server", "model"] and row.startswith("test,")
    plot = write_plot([report, report], tmp_path / PLOT_NAME)
    assert plot.stat().st_size > 10_000


def test_devices_refuse_a_manifest_signed_by_another_key(
    published_registry: Registry, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgerec.errors import UnknownKeyError

    other = tmp_path / "other.pub"
    generate_keypair(tmp_path / "other.pem", other)
    with registry_server(published_registry, signing_key=keys[0]) as address, pytest.raises(UnknownKeyError):
        run_fleet(_settings(address, devices=2, trusted_keys=(other,)))


class CorruptingService(ModelUpdateService):
    """The real service, except FetchPayload flips one byte of each stream's first chunk.

    ``fix_crc``: the chunk's CRC-32 is recomputed, so only the payload's sha256 can tell.
    """

    def __init__(self, registry: Registry, *, fix_crc: bool) -> None:
        super().__init__(registry, UpdatePlanner(registry, PayloadStore(registry), None))
        self.fix_crc = fix_crc

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        for i, chunk in enumerate(super().FetchPayload(request, context)):
            if i == 0:
                data = bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:]
                crc = zlib.crc32(data) if self.fix_crc else chunk.crc32
                chunk = update_pb2.PayloadChunk(offset=chunk.offset, data=data, total_size=chunk.total_size, crc32=crc)
            yield chunk


@pytest.mark.parametrize("fix_crc", [False, True], ids=["chunk-crc", "payload-sha256"])
def test_wrong_bytes_fail_devices_with_the_integrity_error(published_registry: Registry, fix_crc: bool) -> None:
    with update_server(CorruptingService(published_registry, fix_crc=fix_crc)) as address:
        report = run_fleet(_settings(address, devices=5, ramp_s=0.0))

    summary = report.summary()
    assert (summary["finished"], summary["failed"], summary["all_finished"]) == (0, 5, False)
    assert report.failures_by_error() == {"IntegrityError": 5}
    assert report.errors_by_code() == {"IntegrityError": 5}
    detail = "CRC-32" if not fix_crc else "sha256"
    assert all(detail in r.detail for r in report.results)
    assert summary["device_p50_s"] is None and summary["server_cpu_s"] is None
    _check_types(summary)


class UrlsAt(PayloadUrls):
    """Lists one URL per payload: ``server``'s (a test HTTP server), as an object store's link would be."""

    def __init__(self, registry: Registry, server: PayloadHttpServer) -> None:
        super().__init__(registry)
        self.server = server

    def urls(self, model: str, payload_id: str) -> list[str]:
        return [self.server.url(payload_id)]


def _payload_bytes(registry: Registry, address: str) -> dict[str, bytes]:
    """The bytes of every payload of a fresh device's plan, by payload id, read from the registry."""
    with grpc.insecure_channel(address) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        response = stub.CheckUpdate(check_update_request(MODEL, ("int8", "fp32"), "test"), timeout=30)
    out = {}
    for payload in response.payloads:
        with registry.open_payload(MODEL, payload.payload_id) as f:
            out[payload.payload_id] = f.read()
    return out


@pytest.mark.parametrize("behaviour", ["honest", "die-after", "expired"])
def test_http_devices_take_the_plans_urls_then_fall_back_to_the_server(
    published_registry: Registry, behaviour: str
) -> None:
    registry = published_registry
    with registry_server(registry) as plain:
        payloads = _payload_bytes(registry, plain)
    plan = sum(len(data) for data in payloads.values())
    with PayloadHttpServer(payloads, behaviour, die_after=10_000) as http:
        service = ModelUpdateService(
            registry, UpdatePlanner(registry, PayloadStore(registry), urls=UrlsAt(registry, http))
        )
        with update_server(service) as address:
            report = run_fleet(_settings(address, devices=4, ramp_s=0.0, http=True))

    summary = report.summary()
    assert (summary["finished"], summary["failed"], summary["redundant_bytes"]) == (4, 0, 0)
    assert summary["bytes_http"] + summary["bytes_grpc"] == 4 * plan
    assert all(r.plan_bytes == plan for r in report.results)
    if behaviour == "honest":
        assert (summary["bytes_http"], report.errors_by_code()) == (4 * plan, {})
        assert {path for path, _ in http.requests} == set(payloads)
    elif behaviour == "die-after":  # the bytes before the cut (then no listener) count, the rest come from the server
        assert 0 < summary["bytes_http"] <= 4 * len(payloads) * 10_000
        assert report.errors_by_code()["HTTP_UNAVAILABLE"] >= 1
    else:
        assert summary["bytes_http"] == 0
        assert report.errors_by_code()["HTTP_UNAVAILABLE"] == 4 * len(payloads)
    _check_types(summary)


class CutService(ModelUpdateService):
    """The real service, except each FetchPayload stream ends with UNAVAILABLE (a server gone) after ``chunks``."""

    def __init__(self, registry: Registry, chunks: int) -> None:
        super().__init__(registry, UpdatePlanner(registry, PayloadStore(registry), None))
        self.chunks = chunks

    def FetchPayload(
        self, request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext
    ) -> Iterator[update_pb2.PayloadChunk]:
        for i, chunk in enumerate(super().FetchPayload(request, context)):
            if i == self.chunks:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the replica went away")
            yield chunk


def test_devices_fail_over_to_the_next_server_and_resume_where_they_were(published_registry: Registry) -> None:
    plan = 0
    with (
        update_server(CutService(published_registry, chunks=3)) as cutting,
        registry_server(published_registry) as steady,
    ):
        plan = _plan_bytes(steady)
        report = run_fleet(_settings(cutting, also=(steady,), devices=6, ramp_s=0.0))

    summary = report.summary()
    assert (summary["finished"], summary["failed"]) == (6, 0)
    # Devices 0, 2, 4 start on the cutting server: each is cut once per payload, fails over and resumes.
    starting_there = [r for r in report.results if int(r.device_id[-1]) % 2 == 0]
    assert all(r.failovers >= 1 and r.bytes_by_source["grpc"] == plan for r in starting_there)
    assert all(r.failovers == 0 for r in report.results if r not in starting_there)
    assert report.errors_by_code().get("UNAVAILABLE", 0) == summary["failovers"] >= 3
    assert summary["redundant_bytes"] == 0 and summary["bytes_grpc"] == 6 * plan
    _check_types(summary)


def test_a_server_that_refuses_connections_is_skipped(published_registry: Registry) -> None:
    with registry_server(published_registry) as steady:
        plan = _plan_bytes(steady)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
            dead = f"127.0.0.1:{sock.getsockname()[1]}"
            report = run_fleet(_settings(steady, also=(dead,), devices=4, ramp_s=0.0))

    assert report.summary()["finished"] == 4
    assert [r.failovers >= 1 for r in report.results] == [False, True, False, True]
    assert all(r.bytes_by_source["grpc"] == plan for r in report.results)


def _cli_json(address: str, tmp_path: Path, name: str) -> dict[str, Any]:
    args = ["profile", "fleet", "--server", address, "--model", MODEL, "--devices", "3", "--rate", "200mbit"]
    args += ["--ramp", "0s", "--deadline", "120s", "--json", "--no-progress"]
    args += ["--json-file", str(tmp_path / f"{name}.json"), "--csv", str(tmp_path / f"{name}.csv")]
    args += ["--plots", str(tmp_path / name)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    printed: dict[str, Any] = json.loads(result.stdout)
    assert json.loads((tmp_path / f"{name}.json").read_text()) == printed
    assert (tmp_path / name / PLOT_NAME).stat().st_size > 10_000
    return printed


def test_cli_json_keeps_its_types_whether_devices_finish_or_fail(published_registry: Registry, tmp_path: Path) -> None:
    with registry_server(published_registry) as address:
        good = _cli_json(address, tmp_path, "good")
    with update_server(CorruptingService(published_registry, fix_crc=True)) as address:
        bad = _cli_json(address, tmp_path, "bad")

    assert good["summary"]["finished"] == 3 and bad["summary"]["failed"] == 3
    for printed in (good, bad):
        assert set(printed) == {"summary", "bytes_by_source", "errors_by_code", "failures_by_error", "devices"} | {
            "server_samples"
        }
        _check_types(printed["summary"])
        assert set(printed["bytes_by_source"]) == {"grpc", "http"}
        assert all(type(v) is int for v in printed["errors_by_code"].values())
        assert len(printed["devices"]) == 3
    device_types = [{k: type(v) for k, v in d.items()} for d in good["devices"] + bad["devices"]]
    assert all(types == device_types[0] for types in device_types)
    assert bad["failures_by_error"] == {"IntegrityError": 3}


def test_cli_reports_an_unknown_model_before_any_device_starts(published_registry: Registry) -> None:
    with registry_server(published_registry) as address:
        result = CliRunner().invoke(
            cli, ["profile", "fleet", "--server", address, "--model", "nope", "--devices", "2", "--no-progress"]
        )
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output and "Traceback" not in result.output


def test_the_ideal_is_the_last_start_plus_the_plan_at_the_link_rate() -> None:
    settings = FleetSettings(server="127.0.0.1:1", model=MODEL, devices=2, rate_bytes_per_s=16_000, ramp_s=1.0)
    report = FleetReport(
        settings,
        plan_bytes=160_000,
        device_deadline_s=60.0,
        results=[],
        elapsed_s=0.0,
        sim_cpu_s=0.0,
        sim_peak_rss_bytes=0,
    )
    # the last device starts half-way through the ramp of two; then 10 s at its link rate
    assert report.ideal_s == pytest.approx(10.5)


# --- the benchmark's verdicts (``make bench-fleet`` runs the fleets; here only its judging) ------


def _synthetic(*, finished: int, failed: int, end_s: float, server_cpu_s: float, peak_rss: int) -> FleetReport:
    from collections import Counter

    from edgerec.tools.profile.fleet.device import DeviceResult
    from edgerec.tools.profile.fleet.sampler import SampledUsage

    settings = FleetSettings(server="127.0.0.1:1", model=MODEL, devices=finished + failed, rate_bytes_per_s=16_000)
    plan = 1_600_000  # 100 s at the link rate
    results = [
        DeviceResult(
            f"sim-{i:05d}",
            start_s=0.0,
            end_s=end_s,
            finished=i < finished,
            error="" if i < finished else "attempts (last: RESOURCE_EXHAUSTED)",
            plan_bytes=plan,
            bytes_by_source=Counter({"grpc": plan if i < finished else 0}),
        )
        for i in range(finished + failed)
    ]
    usage = SampledUsage(cpu_s=server_cpu_s, peak_rss_bytes=peak_rss)
    return FleetReport(settings, plan, 300.0, results, end_s, 1.0, 50_000_000, server=usage, label="synthetic")


def test_bench_targets_are_met_only_when_every_figure_is_within_its_limit() -> None:
    from edgerec.tools.bench.fleet import compute_targets

    # 10 devices, 16 MB delivered, ramp 10 s: ideal 109 s
    good = _synthetic(finished=10, failed=0, end_s=120.0, server_cpu_s=0.2, peak_rss=200 * 10**6)
    assert [t.met for t in compute_targets({"target": good})] == [True, True, True, True]
    slow = _synthetic(finished=10, failed=0, end_s=130.0, server_cpu_s=0.3, peak_rss=301 * 10**6)
    assert [t.met for t in compute_targets({"target": slow})] == [True, False, False, False]
    # Within the ratio, but a device failed: neither completion target is met.
    failing = _synthetic(finished=9, failed=1, end_s=100.0, server_cpu_s=0.1, peak_rss=100 * 10**6)
    assert [t.met for t in compute_targets({"target": failing})] == [False, False, True, True]
    # Over HTTP the server's CPU per GB must stay within 1 s (16 MB delivered: 0.016 s).
    assert [t.met for t in compute_targets({"http": good})] == [True, False]
    cheap = _synthetic(finished=10, failed=0, end_s=120.0, server_cpu_s=0.01, peak_rss=200 * 10**6)
    assert [t.met for t in compute_targets({"http": cheap})] == [True, True]
    # Against the do-nothing server of the same run: at most 1.5 times its CPU per device.
    floor = _synthetic(finished=10, failed=0, end_s=120.0, server_cpu_s=0.006, peak_rss=50 * 10**6)
    assert [t.met for t in compute_targets({"http": cheap, "http-floor": floor})] == [True, True, False]
    floor = _synthetic(finished=10, failed=0, end_s=120.0, server_cpu_s=0.007, peak_rss=50 * 10**6)
    assert [t.met for t in compute_targets({"http": cheap, "http-floor": floor})] == [True, True, True]
    # A kill run must show failovers, each costing at most one chunk twice.
    assert [t.met for t in compute_targets({"kill": good})] == [True, True, False]
    for r in good.results:
        r.failovers = 1
    good.results[0].bytes_by_source["grpc"] += good.settings.chunk_bytes()
    assert [t.met for t in compute_targets({"kill": good})] == [True, True, True]
    good.results[1].bytes_by_source["grpc"] += 10 * good.settings.chunk_bytes()
    assert [t.met for t in compute_targets({"kill": good})] == [True, True, False]
