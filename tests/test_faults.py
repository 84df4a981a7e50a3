"""Faults on real sockets, processes and filesystems: dropped links, SIGKILLed syncs, a full disk.

The scenarios live in ``edgerec.tools.faults``; these run them with small counts (the
``slow`` variants with the full ones, as ``python -m edgerec.tools.faults`` does).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerec.registry import Registry
from edgerec.tools import faults
from edgerec.tools.faults import DIRECTED_KILLS, KillBench, KillPoint, KillRun
from edgerec.tools.linkproxy import LinkProxy

pytestmark = pytest.mark.torch

# Bugs these scenarios found in device/ (see the reports in the review notes); the tests flip to
# XPASS, and so fail, once they are fixed: then drop the marks.
WINDOW_LOSS = (
    "device/transport.py: a dropped connection costs up to a whole HTTP/2 flow-control window (BDP-grown, "
    "~100-240 KiB when the device is rate-limited or its CPU busy): gRPC discards messages it buffered but "
    "the app had not read"
)


class OverheadExceeded(AssertionError):
    """A drop run received more than the allowed bytes over its payload (the only failure xfail accepts)."""


class KillPointMissed(Exception):
    """The sync never reached a directed kill point: the device code changed, the test must be updated."""


# --- LinkProxy on its own ----------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server sending 100_000 bytes to each connection and recording what it receives."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    payload = bytes(range(256)) * 390 + bytes(160)

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.sendall(payload)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            received.append(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], received
    listener.close()


def _fetch(port: int, send: bytes = b"") -> bytes:
    data = b""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        try:  # a connection cut at once may already be gone
            conn.sendall(send)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


def test_link_proxy_cuts_exactly_and_counts_both_ways(upstream: tuple[int, list[bytes]]) -> None:
    port, received = upstream
    with LinkProxy("127.0.0.1", port, cut_after=[1234, 0]) as proxy:
        assert len(_fetch(proxy.port, b"hello")) == 1234
        assert _fetch(proxy.port) == b""
        assert len(_fetch(proxy.port, b"x" * 5000)) == 100_000  # the queue is empty: no cut
        stats = proxy.stats()
        assert (stats.connections, stats.cuts, stats.bytes_down) == (3, 2, 1234 + 100_000)
        assert [r.cut for r in proxy.records] == [True, True, False]
        assert proxy.records[2].bytes_up == 5000
    assert b"x" * 5000 in received


def test_link_proxy_drops_every_connection_and_closes_its_threads(upstream: tuple[int, list[bytes]]) -> None:
    port, _ = upstream
    before = {t for t in threading.enumerate() if t.name.startswith("linkproxy")}
    proxy = LinkProxy("127.0.0.1", port, drop_every_bytes=30_000)
    with proxy:
        assert [len(_fetch(proxy.port)) for _ in range(3)] == [30_000] * 3
        proxy.cut_after(10, 10**9)  # queued cuts come first
        assert len(_fetch(proxy.port)) == 10
        idle = socket.create_connection(("127.0.0.1", proxy.port))  # not cut, left open: close() must end it
        deadline = time.monotonic() + 5
        while proxy.connections < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert proxy.stats().cuts == 4
    idle.close()
    leftover = {t for t in threading.enumerate() if t.name.startswith("linkproxy")} - before
    assert not [t for t in leftover if t.is_alive()]


# --- the scenarios, on a small reference model ------------------------------------------


@pytest.fixture(scope="module")
def small_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, str]]:
    """Two versions of the small reference model (~1.6 MB int8) on a real server on loopback.

    Small, not tiny: a tiny model's payload (~75 KB) is too close to the protocol's fixed bytes
    (manifest, headers) for a 5 % bound on the wire to mean anything.
    """
    pytest.importorskip("torch")
    registry = faults.build_registry(tmp_path_factory.mktemp("faults-registry"), size="small", samples=5_000)
    with faults.serving(registry) as address:
        yield registry, address


def _check_overhead(report: faults.DropsReport) -> None:
    if report.overhead_failures:
        raise OverheadExceeded("\n".join(report.overhead_failures))


def test_drops_end_with_the_registry_files_and_resume(small_served: tuple[Registry, str], tmp_path: Path) -> None:
    """Five seeded runs of 1-3 cuts; the 5 % wire bound is checked where it fails reliably (below)."""
    registry, address = small_served
    report = faults.run_drops(registry, address, 5, workdir=tmp_path, seed=1)
    assert not report.correctness_failures, report.correctness_failures
    assert all(r.cuts >= 1 for r in report.runs), [(r.plan, r.cuts) for r in report.runs]
    # Resumed, never restarted: the SDK took in each payload byte once.
    assert all(r.device_bytes == r.payload_bytes for r in report.runs)
    assert report.baseline.overhead < 0.01  # the protocol's own bytes on a clean sync


@pytest.mark.xfail(strict=True, raises=OverheadExceeded, reason=WINDOW_LOSS)
def test_drops_of_a_rate_limited_device_cost_at_most_5_percent(
    small_served: tuple[Registry, str], tmp_path: Path
) -> None:
    registry, address = small_served
    plans = [("cuts", [400_000, 400_000, 400_000])] * 2
    report = faults.run_drops(registry, address, 0, workdir=tmp_path, download_seconds=0.5, plans=plans)
    assert not report.correctness_failures, report.correctness_failures
    assert all(r.cuts == 3 for r in report.runs)
    _check_overhead(report)


def test_kills_leave_a_verified_model_and_resume(small_served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = small_served
    report = faults.run_kills(registry, address, 5, workdir=tmp_path, seed=0, download_seconds=0.3)
    assert not report.failures, "\n".join(report.failures)
    assert len(report.runs) == 5 and sum(r.killed for r in report.runs) >= 4
    assert {r.start for r in report.runs} == set(faults.STARTS)
    assert report.resumed == report.resumable


@pytest.fixture(scope="module")
def kill_bench(small_served: tuple[Registry, str], tmp_path_factory: pytest.TempPathFactory) -> KillBench:
    registry, address = small_served
    return KillBench.prepare(registry, address, tmp_path_factory.mktemp("directed"), 16 * 1024, 120.0)


# (start, KillPoint.describe()) -> reason, for a directed kill that fails until a device fix lands.
_XFAIL_DIRECTED: dict[tuple[str, str], str] = {}


def _directed_cases() -> list[object]:
    cases: list[object] = []
    for start, point in DIRECTED_KILLS:
        reason = _XFAIL_DIRECTED.get((start, point.describe()))
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
        cases.append(pytest.param(start, point, marks=marks, id=f"{start}-{point.describe()}"))
    return cases


@pytest.mark.parametrize(("start", "point"), _directed_cases())
def test_a_kill_at_a_dangerous_line_is_survived(kill_bench: KillBench, start: str, point: KillPoint) -> None:
    run = KillRun(0, start, "line", 0, point=point.describe())
    kill_bench.kill_and_recover(run, None, point, None)
    if not run.killed:
        raise KillPointMissed(f"the sync never reached {point.describe()} (did the device code change?)")
    assert not run.problems, run.problems
    assert not run.leftovers, f"download files never removed: {run.leftovers}"


def test_disk_full_raises_a_typed_error_and_keeps_the_model(small_served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = small_served
    report = faults.run_disk_full(registry, address, workdir=tmp_path)
    if report.skipped:
        pytest.skip(report.skipped)
    assert not report.failures, "\n".join(report.failures)
    outcomes = [c.outcome for c in report.cases]
    assert outcomes.count("DiskFullError") >= 3, outcomes
    assert outcomes[-1] == "installed", "the sync did not complete once space was freed"


# --- the full counts (make slow) ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=OverheadExceeded, reason=WINDOW_LOSS)
def test_200_drops(small_served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = small_served
    report = faults.run_drops(registry, address, 200, workdir=tmp_path, seed=0)
    assert not report.correctness_failures, "\n".join(report.correctness_failures)
    assert all(r.device_bytes == r.payload_bytes for r in report.runs)
    _check_overhead(report)  # unthrottled too, a few in every hundred runs lose a window per cut


@pytest.mark.slow
def test_100_kills(small_served: tuple[Registry, str], tmp_path: Path) -> None:
    registry, address = small_served
    report = faults.run_kills(registry, address, 100, workdir=tmp_path, seed=0)
    assert not report.failures, "\n".join(report.failures)
    assert report.resumable >= 10 and report.resumed == report.resumable
