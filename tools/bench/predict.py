"""Predict benchmark: cache hits, the policy layer's cost, fallback to the server, micro-batching, failures.

Run ``python -m edgerec.tools.bench.predict [--size small] [--quick] [--out bench-out/predict]``; it
writes ``predict.csv`` (one row per measurement) and ``predict.md`` (targets, then every row).

A reference DLRM (``--size``; trained briefly: accuracy does not matter here) is published (fp32)
into a temporary registry, served by ``edgerec serve`` in a subprocess on loopback (so the server
and the measuring process do not share a GIL), and installed on a device with ``EdgeClient.sync``.
What is measured, all at batch 1 with the default :class:`FallbackPolicy` unless said otherwise:

- cache hit: ``EdgeClient.predict`` answered from the prediction cache;
- policy overhead: ``EdgeClient.predict`` (cache off) against a bare ``onnxruntime.InferenceSession.run``
  on the installed file with the same options, timed in alternating blocks so machine noise hits both;
- local vs server fallback: the device's local answers, a device without a model (every answer from
  the server) and the bare server round trip (``Inference.Predict`` through the device's transport);
- server Predict throughput and p99 with 1, 16 and 256 concurrent callers (asyncio tasks on ``grpc.aio``
  channels in processes of their own (one per two cores), so the callers' GIL is not what is measured), against a
  server with micro-batching (``--batch-wait-ms 2``) and one without (``0``);
- a failing local model (the installed file damaged: every predict falls back to the server) with
  1 and 16 callers, and a server that is down (refusing connections, or accepting them and never
  answering) with a failing local model: time until the answer or typed error against the deadline.
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing
import multiprocessing.queues
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

import numpy as np

from edgerec.errors import NoModelAvailableError
from edgerec.tools.bench import servers
from edgerec.tools.bench.report import Target, loadavg, machine_context, targets_table

MODULE: Final = "edgerec.tools.bench.predict"
logger = logging.getLogger(MODULE)
MODEL_NAME: Final = "ctr"
CONCURRENCY: Final = (1, 16, 256)
FAILING_CONCURRENCY: Final = (1, 16)
SERVER_WORKERS: Final = 64
# Processes the server Predict callers are spread over (each an asyncio loop on one grpc.aio channel); at
# least half the cores are left to the server.
CLIENT_PROCESSES: Final = max(1, min(4, (os.cpu_count() or 2) // 2))
# Time the caller processes get to start (import grpc, connect) before they all begin together.
PROCESS_START_S: Final = 3.0

# Targets (the predict path's, in docs/performance.md).
CACHE_HIT_P50_US: Final = 5.0
POLICY_OVERHEAD: Final = 0.10
FALLBACK_SLACK_MS: Final = 5.0
BATCHING_SPEEDUP: Final = 3.0
FLOOR_SCENARIO: Final = "floor: a gRPC server whose Predict does nothing"
FLOOR_SERVER_FLAG: Final = "--floor-server"


@dataclass(frozen=True)
class Settings:
    size: str
    out: Path
    quick: bool
    train_samples: int
    iters: int  # timed calls per single-caller measurement
    seconds: float  # per concurrent run


@dataclass
class Row:
    """One measurement: latencies in ms (us for the per-call device rows, see ``unit``)."""

    scenario: str
    clients: int = 1
    batching: str = ""
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    throughput_per_s: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    unit: str = "ms"
    sources: str = ""
    note: str = ""


COLUMNS: Final = [f.name for f in fields(Row)]


# --- the model, the server, the device --------------------------------------------------------


def build(settings: Settings, work: Path) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Train and publish the reference model (fp32); return the registry and 64 batch-1 requests."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions, publish

    config = ReferenceConfig.from_name(settings.size)
    generator = ClickGenerator(config, seed=0)
    started = time.perf_counter()
    model = build_and_train(config, generator, day=0, num_samples=settings.train_samples, epochs=1)
    program = export_program(model, work / "model.pt2", generator.day(99, 4))
    registry = Registry(work / "registry")
    publish(program, MODEL_NAME, registry, PublishOptions(recipes=("fp32",)))
    feeds = generator.day(100, 64).inputs()
    requests = [{name: np.ascontiguousarray(a[i : i + 1]) for name, a in feeds.items()} for i in range(64)]
    logger.info("trained and published %s in %.1f s", settings.size, time.perf_counter() - started)
    return registry.root, requests


@contextmanager
def serve(registry: Path, work: Path, batch_wait_ms: float) -> Iterator[tuple[str, int]]:
    """``edgerec serve`` in a subprocess on a free loopback port, signing with ``work``/server.pem (made once,
    devices trust ``work``/server.pub); yields its address and process id."""
    from edgerec.signing import generate_keypair

    if not (work / "server.pem").exists():
        generate_keypair(work / "server.pem", work / "server.pub")
    extra = ["--workers", str(SERVER_WORKERS), "--batch-wait-ms", str(batch_wait_ms)]
    with servers.serve(registry, work / "server.pem", work / f"serve-{batch_wait_ms:g}.log", extra) as served:
        yield served


@contextmanager
def serve_floor(work: Path) -> Iterator[tuple[str, int]]:
    """:func:`run_floor_server` in a subprocess; yields its address and process id."""
    with servers.serving([sys.executable, "-m", MODULE, FLOOR_SERVER_FLAG], work / "serve-floor.log") as served:
        yield served


def run_floor_server() -> None:
    """A grpcio server like ``edgerec serve``'s (the same thread pool) whose Predict answers at once with an
    empty response: what gRPC and protobuf alone cost a call, the most any Predict server here can do."""
    from concurrent import futures

    import grpc

    from edgerec.v1 import inference_pb2, inference_pb2_grpc

    class Nothing(inference_pb2_grpc.InferenceServicer):
        def Predict(
            self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
        ) -> inference_pb2.PredictResponse:
            return inference_pb2.PredictResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS))
    inference_pb2_grpc.add_InferenceServicer_to_server(Nothing(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    logger.info("serving the floor on 127.0.0.1:%d", port)
    server.wait_for_termination()


@contextmanager
def blackhole() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- timing -----------------------------------------------------------------------------------


def _timed(
    call: Callable[[dict[str, np.ndarray]], object], requests: Sequence[dict[str, np.ndarray]], n: int
) -> np.ndarray:
    """Wall microseconds of ``n`` calls over rotating requests (after a warm-up)."""
    for i in range(max(n // 10, 20)):
        call(requests[i % len(requests)])
    out = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        request = requests[i % len(requests)]
        begin = clock()
        call(request)
        out[i] = (clock() - begin) / 1e3
    return out


def _alternating(
    runs: Sequence[Callable[[dict[str, np.ndarray]], object]],
    requests: Sequence[dict[str, np.ndarray]],
    n: int,
    block: int = 200,
) -> list[np.ndarray]:
    """Microseconds of ``n`` calls of each run, in alternating blocks (whatever else the machine does hits all)."""
    for run in runs:
        _timed(run, requests, max(n // 10, 50))
    out = [np.empty(0) for _ in runs]
    for start in range(0, n, block):
        order = range(len(runs)) if (start // block) % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            out[k] = np.concatenate([out[k], _timed_block(runs[k], requests, min(block, n - start), start)])
    return out


def _timed_block(
    call: Callable[[dict[str, np.ndarray]], object], requests: Sequence[dict[str, np.ndarray]], n: int, offset: int
) -> np.ndarray:
    out = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        request = requests[(offset + i) % len(requests)]
        begin = clock()
        call(request)
        out[i] = (clock() - begin) / 1e3
    return out


def _concurrent(
    call: Callable[[dict[str, np.ndarray]], object],
    requests: Sequence[dict[str, np.ndarray]],
    clients: int,
    seconds: float,
) -> tuple[np.ndarray, int, float, dict[str, int]]:
    """``clients`` threads calling for ``seconds``: latencies (ms) of the calls, errors, wall time, error kinds."""
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]

    def worker(k: int) -> None:
        mine, failed = latencies[k], errors[k]
        start.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            begin = time.perf_counter()
            try:
                call(requests[i % len(requests)])
            except Exception as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
            mine.append((time.perf_counter() - begin) * 1e3)
            i += clients

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    kinds: dict[str, int] = {}
    for e in errors:
        for name, n in e.items():
            kinds[name] = kinds.get(name, 0) + n
    return np.array([x for lat in latencies for x in lat]), sum(kinds.values()), wall, kinds


class _Tolerant:
    """Wraps a call: typed errors are counted by class name instead of stopping the measurement."""

    def __init__(self, call: Callable[[dict[str, np.ndarray]], object]) -> None:
        self.call = call
        self.errors: dict[str, int] = {}

    def __call__(self, request: dict[str, np.ndarray]) -> object:
        from edgerec.errors import EdgerecError

        try:
            return self.call(request)
        except EdgerecError as exc:
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            return None


def _fill(row: Row, values: np.ndarray) -> Row:
    if len(values):
        row.p50, row.p99, row.max = (float(np.percentile(values, q)) for q in (50, 99, 100))
    row.calls = row.calls or len(values)
    return row


# --- the measurements -------------------------------------------------------------------------


def device_rows(
    address: str, requests: Sequence[dict[str, np.ndarray]], work: Path, settings: Settings
) -> tuple[list[Row], dict[str, float]]:
    """Cache hits, policy overhead against bare onnxruntime, local vs server fallback vs the bare round trip."""
    import onnxruntime as ort

    from edgerec.device import EdgeClient
    from edgerec.device.transport import ServerConnection

    rows: list[Row] = []
    facts: dict[str, float] = {}
    device = work / "device"
    with EdgeClient(
        address, MODEL_NAME, device, recipes=("fp32",), cache_entries=0, trusted_keys=[work / "server.pub"]
    ) as client:
        client.sync()
        installed = client.store.current()
        assert installed is not None
        options = ort.SessionOptions()  # OnnxRunner's options: only the SDK differs
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        bare = ort.InferenceSession(str(installed.entrypoint), options, providers=["CPUExecutionProvider"])
        tolerant = _Tolerant(client.predict)
        client_us, bare_us = _alternating([tolerant, lambda r: bare.run(None, r)], requests, settings.iters)
        sources = client.counters.by_source
        rows.append(_fill(Row("bare onnxruntime run", unit="us"), bare_us))
        local_row = Row("EdgeClient.predict, local (cache off)", unit="us", sources=_fmt(sources))
        local_row.errors = sum(tolerant.errors.values())
        local_row.note = _fmt(tolerant.errors | {"pooled": client.counters.pooled})
        rows.append(_fill(local_row, client_us))
        facts["bare_p50_us"] = float(np.median(bare_us))
        facts["client_p50_us"] = float(np.median(client_us))
        facts["local_p99_ms"] = float(np.percentile(client_us, 99)) / 1e3
        facts["pooled"] = client.counters.pooled
    with EdgeClient(address, MODEL_NAME, device, recipes=("fp32",), cache_entries=4096) as cached:
        for request in requests:
            cached.predict(request)
        hits = _timed(cached.predict, requests, settings.iters)
        rows.append(
            _fill(Row("EdgeClient.predict, cache hit", unit="us", sources=_fmt(cached.counters.by_source)), hits)
        )
        facts["cache_hit_p50_us"] = float(np.median(hits))
    with EdgeClient(address, MODEL_NAME, work / "empty-device", cache_entries=0) as remote:
        tolerant = _Tolerant(remote.predict)
        server_ms = _timed(tolerant, requests, settings.iters) / 1e3
        row = Row("EdgeClient.predict, no local model: server fallback", sources=_fmt(remote.counters.by_source))
        row.errors, row.note = sum(tolerant.errors.values()), _fmt(tolerant.errors)
        rows.append(_fill(row, server_ms))
    connection = ServerConnection(address)
    try:
        rtt_ms = (
            _timed(lambda r: connection.predict(MODEL_NAME, r, version=1, timeout_s=5), requests, settings.iters) / 1e3
        )
    finally:
        connection.close()
    rows.append(_fill(Row("server round trip (Inference.Predict)"), rtt_ms))
    facts["fallback_p99_ms"] = float(np.percentile(server_ms, 99))
    facts["rtt_p99_ms"] = float(np.percentile(rtt_ms, 99))
    return rows, facts


def server_rows(
    address: str,
    batching: str,
    requests: Sequence[dict[str, np.ndarray]],
    settings: Settings,
    server_pid: int | None = None,
    scenario: str = "server Predict",
) -> list[Row]:
    """Server Predict throughput and latency with 1, 16 and 256 concurrent callers.

    The callers are asyncio tasks on ``grpc.aio`` channels in up to ``CLIENT_PROCESSES`` processes of their
    own, sending requests serialized once: the row measures the server, not the callers' GIL (256 threads
    in this process made the client the bottleneck). With ``server_pid`` the note gives the server's CPU
    time per answered call (user + system), which noise from other processes on the machine hardly moves.
    """
    from edgerec import tensors
    from edgerec.v1 import inference_pb2

    payloads = [
        inference_pb2.PredictRequest(
            model=MODEL_NAME, version=1, inputs={name: tensors.to_proto(a) for name, a in r.items()}
        ).SerializeToString()
        for r in requests
    ]
    rows = []
    _callers_in_processes(address, payloads, 4, min(0.5, settings.seconds))  # warm up: the server's model load
    for clients in CONCURRENCY:
        cpu_before = _cpu_seconds(server_pid)
        latencies, errors, wall, kinds = _callers_in_processes(address, payloads, clients, settings.seconds)
        cpu = _cpu_seconds(server_pid) - cpu_before
        row = _fill(Row(scenario, clients, batching, errors=errors, seconds=wall), latencies)
        answered = len(latencies) - errors
        row.throughput_per_s = answered / wall
        notes = [_fmt(kinds), f"{min(clients, CLIENT_PROCESSES)} grpc.aio client processes"]
        if answered and np.isfinite(cpu):  # includes the callers' connect and warm-up call: a slight overcount
            notes.append(f"server CPU {cpu / answered * 1e3:.2f} ms/call")
        row.note = ", ".join(n for n in notes if n)
        rows.append(row)
    return rows


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); NaN when unknown."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _callers_in_processes(
    address: str, payloads: Sequence[bytes], clients: int, seconds: float
) -> tuple[np.ndarray, int, float, dict[str, int]]:
    """``clients`` concurrent callers spread over processes, all starting together: latencies (ms), errors,
    wall time (the slowest process's), error kinds."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.queues.Queue[tuple[list[float], dict[str, int], float]] = context.Queue()
    procs = min(clients, CLIENT_PROCESSES)
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + PROCESS_START_S
    workers = [
        context.Process(target=_aio_callers, args=(address, list(payloads), n, seconds, start_at, results))
        for n in shares
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes: list[tuple[list[float], dict[str, int], float]] = []
        deadline = time.monotonic() + PROCESS_START_S + seconds + 60
        while len(outcomes) < len(workers):
            try:
                outcomes.append(results.get(timeout=0.5))
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"caller processes failed (exit codes {dead}) or timed out") from None
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    kinds: dict[str, int] = {}
    for _, failed, _ in outcomes:
        for name, n in failed.items():
            kinds[name] = kinds.get(name, 0) + n
    latencies = np.array([x for lat, _, _ in outcomes for x in lat])
    return latencies, sum(kinds.values()), max(wall for _, _, wall in outcomes), kinds


def _aio_callers(
    address: str,
    payloads: list[bytes],
    callers: int,
    seconds: float,
    start_at: float,
    results: multiprocessing.queues.Queue[tuple[list[float], dict[str, int], float]],
) -> None:
    """In a process of its own: ``callers`` asyncio tasks on one channel call Predict from ``start_at`` (unix
    time) for ``seconds``; puts (latencies in ms, errors by status code, wall seconds) on ``results``."""
    import asyncio

    import grpc

    from edgerec.v1 import inference_pb2, inference_pb2_grpc

    requests = [inference_pb2.PredictRequest.FromString(p) for p in payloads]

    async def main() -> tuple[list[float], dict[str, int], float]:
        latencies: list[float] = []
        failed: dict[str, int] = {}
        async with grpc.aio.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            await stub.Predict(requests[0], timeout=30)  # connected before the clock starts
            await asyncio.sleep(max(0.0, start_at - time.time()))
            began = time.perf_counter()
            stop_at = began + seconds

            async def caller(k: int) -> None:
                i = k
                while time.perf_counter() < stop_at:
                    begin = time.perf_counter()
                    try:
                        await stub.Predict(requests[i % len(requests)], timeout=30)
                    except grpc.RpcError as exc:
                        name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                        failed[name] = failed.get(name, 0) + 1
                    latencies.append((time.perf_counter() - begin) * 1e3)
                    i += callers

            await asyncio.gather(*(caller(k) for k in range(callers)))
            return latencies, failed, time.perf_counter() - began

    results.put(asyncio.run(main()))


def failure_rows(
    address: str, requests: Sequence[dict[str, np.ndarray]], work: Path, settings: Settings
) -> tuple[list[Row], dict[str, float]]:
    """A failing local model (damaged file: every answer from the server), and a server that is down."""
    from edgerec.device import EdgeClient
    from edgerec.device.policy import FallbackPolicy

    rows: list[Row] = []
    facts: dict[str, float] = {}
    device = work / "failing-device"
    shutil.copytree(work / "device", device)
    with EdgeClient(address, MODEL_NAME, device, recipes=("fp32",), cache_entries=0) as client:
        installed = client.store.current()
        assert installed is not None
        installed.entrypoint.write_bytes(b"damaged")
        client.reload()
        for clients in FAILING_CONCURRENCY:
            latencies, errors, wall, kinds = _concurrent(client.predict, requests, clients, settings.seconds)
            row = _fill(Row("failing local model -> server", clients, errors=errors, seconds=wall), latencies)
            row.throughput_per_s = (len(latencies) - errors) / wall
            row.sources, row.note = _fmt(client.counters.by_source), _fmt(kinds | client.counters.by_reason)
            rows.append(row)
    deadline_ms = FallbackPolicy().deadline_s * 1e3
    facts["deadline_ms"] = deadline_ms
    for clients in FAILING_CONCURRENCY:
        # The same threads calling a function that only raises: how long the interpreter alone can keep a
        # caller waiting (with many busy threads, a thread may wait several 5 ms GIL switch intervals).
        latencies, errors, wall, kinds = _concurrent(_raise_at_once, requests, clients, settings.seconds)
        row = _fill(Row("floor: a call that only raises", clients, errors=errors, seconds=wall), latencies)
        row.note = _fmt(kinds)
        rows.append(row)
        facts[f"floor_max_ms_{clients}"] = row.max
    worst = dict.fromkeys(FAILING_CONCURRENCY, 0.0)
    with blackhole() as hung:
        for label, target in (("refusing connections", closed_port()), ("accepting, never answering", hung)):
            for clients in FAILING_CONCURRENCY:
                with EdgeClient(target, MODEL_NAME, device, recipes=("fp32",), cache_entries=0) as client:
                    latencies, errors, wall, kinds = _concurrent(client.predict, requests, clients, settings.seconds)
                    row = _fill(
                        Row(f"failing local model, server down ({label})", clients, errors=errors, seconds=wall),
                        latencies,
                    )
                    row.note = _fmt(kinds | client.counters.by_reason)
                    rows.append(row)
                    worst[clients] = max(worst[clients], row.max)
    for clients, slowest in worst.items():
        facts[f"down_max_ms_{clients}"] = slowest
    return rows, facts


def _raise_at_once(_: dict[str, np.ndarray]) -> None:
    raise NoModelAvailableError("floor measurement")


# --- report -----------------------------------------------------------------------------------


def compute_targets(rows: Sequence[Row], facts: Mapping[str, float]) -> list[Target]:
    """The targets, judged on the measured rows and facts."""
    targets = [
        Target(
            "cache hit p50",
            f"{facts['cache_hit_p50_us']:.2f} us",
            f"<= {CACHE_HIT_P50_US:g} us",
            facts["cache_hit_p50_us"] <= CACHE_HIT_P50_US,
        ),
    ]
    overhead = facts["client_p50_us"] / facts["bare_p50_us"] - 1
    targets.append(
        Target(
            "policy layer overhead (p50, batch 1, cache off) vs bare onnxruntime",
            f"{overhead:+.1%}",
            f"<= {POLICY_OVERHEAD:+.0%}",
            overhead <= POLICY_OVERHEAD,
        )
    )
    limit = facts["rtt_p99_ms"] + FALLBACK_SLACK_MS
    targets.append(
        Target(
            "server fallback p99 vs server round trip p99 + 5 ms",
            f"{facts['fallback_p99_ms']:.2f} ms",
            f"<= {limit:.2f} ms",
            facts["fallback_p99_ms"] <= limit,
        )
    )
    for clients in FAILING_CONCURRENCY:
        slowest, floor = facts[f"down_max_ms_{clients}"], facts[f"floor_max_ms_{clients}"]
        targets.append(
            Target(
                f"server down, {clients} caller(s): slowest answer or typed error vs the default deadline",
                f"{slowest:.1f} ms (a call that only raises: {floor:.1f} ms)",
                f"<= {facts['deadline_ms']:g} ms",
                slowest <= facts["deadline_ms"],
            )
        )
    by = {(r.scenario, r.clients, r.batching): r for r in rows}
    on, off = by.get(("server Predict", 256, "on")), by.get(("server Predict", 256, "off"))
    nothing = by.get((FLOOR_SCENARIO, 256, "-"))
    if on is not None and off is not None and off.throughput_per_s > 0:
        speedup = on.throughput_per_s / off.throughput_per_s
        met = speedup >= BATCHING_SPEEDUP and on.p99 <= off.p99
        ceiling = f"; a do-nothing server: {nothing.throughput_per_s / off.throughput_per_s:.2f}x" if nothing else ""
        targets.append(
            Target(
                "micro-batching at 256 clients: throughput ratio (p99 on / off)",
                f"{speedup:.2f}x ({on.p99:.1f} / {off.p99:.1f} ms{ceiling})",
                f">= {BATCHING_SPEEDUP:g}x, p99 not worse",
                met,
            )
        )
    return targets


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def render_markdown(
    rows: Sequence[Row], targets: Sequence[Target], facts: Mapping[str, float], context: Mapping[str, str]
) -> str:
    lines = ["# Predict benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "## Targets", "", *targets_table(targets)]
    lines += ["", "## Measurements", ""]
    lines += [
        "| scenario | clients | batching | calls | errors | throughput/s | p50 | p99 | max | unit | sources | note |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        throughput = f"{r.throughput_per_s:.0f}" if r.throughput_per_s else "-"
        lines.append(
            f"| {r.scenario} | {r.clients} | {r.batching or '-'} | {r.calls} | {r.errors} | {throughput} | "
            f"{r.p50:.2f} | {r.p99:.2f} | {r.max:.2f} | {r.unit} | {r.sources} | {r.note} |"
        )
    lines += ["", "Facts: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(facts.items())), ""]
    return "\n".join(lines)


def _fmt(counts: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _context(settings: Settings, load_before: str) -> dict[str, str]:
    import onnxruntime

    return {
        **machine_context(load_before),
        "versions": f"onnxruntime {onnxruntime.__version__}",
        "settings": (
            f"size {settings.size}, {settings.iters} timed calls per single-caller row, {settings.seconds:g} s per "
            f"concurrent run, server in a subprocess with {SERVER_WORKERS} workers, default FallbackPolicy"
        ),
    }


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    parser.add_argument("--out", type=Path, default=Path("bench-out/predict"))
    parser.add_argument("--quick", action="store_true", help="tiny model, few calls: checks the tool, not the targets")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        return Settings("tiny", args.out, True, 2_000, args.iters or 200, args.seconds or 0.2)
    return Settings(args.size, args.out, False, 20_000, args.iters or 5_000, args.seconds or 3.0)


def run(settings: Settings) -> tuple[list[Row], list[Target], dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        registry, requests = build(settings, work)
        with serve(registry, work, 2.0) as (batched, batched_pid):
            rows, facts = device_rows(batched, requests, work, settings)
            rows += server_rows(batched, "on", requests, settings, batched_pid)
            failing, more = failure_rows(batched, requests, work, settings)
            facts |= more
        with serve(registry, work, 0.0) as (plain, plain_pid):
            rows += server_rows(plain, "off", requests, settings, plain_pid)
        with serve_floor(work) as (floor, floor_pid):
            rows += server_rows(floor, "-", requests, settings, floor_pid, FLOOR_SCENARIO)
        rows += failing
    return rows, compute_targets(rows, facts), facts


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgerec").setLevel(logging.ERROR)  # fallbacks are the point here: no warning per call
    logger.setLevel(logging.INFO)  # this tool's own progress and report
    if FLOOR_SERVER_FLAG in (sys.argv[1:] if argv is None else argv):  # how the benchmark starts serve_floor
        run_floor_server()
        return 0
    settings = parse_args(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    rows, targets, facts = run(settings)
    write_csv(rows, settings.out / "predict.csv")
    report = settings.out / "predict.md"
    report.write_text(render_markdown(rows, targets, facts, _context(settings, load_before)))
    logger.info("%s", report.read_text())
    logger.info("wrote %s and %s", report, settings.out / "predict.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
