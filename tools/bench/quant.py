"""Quantization benchmark: size, accuracy, latency, load time and memory of each recipe and runtime.

Run ``python -m edgerec.tools.bench.quant [--sizes small,large] [--quick] [--out bench-out/quant]``;
it writes ``quant.csv`` (one row per size x recipe x runtime) and ``quant.md`` (targets, then
every measurement).

Per reference preset the DLRM is trained on one day of clicks, exported (``.pt2`` ->
``to_onnx``) and quantized (``quantize_int8``, ``quantize_int4``). Accuracy is the
accuracy gate's (``edgerec.server.publish.gate.evaluate``) on a held-out day.

Load time and memory are measured in a fresh subprocess per artifact x runtime, after the
runtime's own one-off set-up: load time (median and minimum of 5 loads; the minimum is the
target's number, the machine being shared), RSS added by the first load, RSS added after a
realistic request mix (held-out rows: 300 calls at batch 1, then 30 at batch 256),
RSS added once every embedding row has been looked up (onnxruntime maps ``.data`` files
instead of reading them, so rows become resident as lookups touch them: this is a
long-running device's steady state), and the peak RSS added over the process's baseline
(``VmHWM`` minus ``VmRSS`` before loading, ``/proc/self/status``).

TFLite recipes (``tflite_fp32``, ``tflite_wi8``, when the ``tflite`` extra is installed) are
exported from the same program at batch 1 and 256 and run by ``LiteRTBatchRunner``; their
size is one batch file (each declared batch size ships another copy).

Latency is measured in one more subprocess per preset holding every artifact x runtime,
timed in alternating rounds so that whatever else the machine runs hits all alike: batch
1 and 256, one thread, warm, over rotating rows of the held-out day; wall-clock p50/p99
and the p50 of the process's CPU time. Runtimes: edgerec's ``OnnxRunner`` (what devices
run, EXTENDED optimization), a plain ``onnxruntime.InferenceSession`` (default level), and
torch eager (the fp32 source model). ``EdgeClient.predict`` (``cache_entries=0``) runs on
the fp32 and int8 artifacts of a real publish + install, in alternating rounds with a
bare session (``OnnxRunner``'s options) on the installed file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgerec.artifacts import ONNX_RECIPES, PUBLISH_RECIPES, TFLITE_RECIPES
from edgerec.tools.bench.report import loadavg

MODULE: Final = "edgerec.tools.bench.quant"
logger = logging.getLogger(MODULE)
WORKER_FLAG: Final = "--worker"
RECIPES: Final = ONNX_RECIPES
LITERT: Final = "LiteRT"
TFLITE_BATCHES: Final = (1, 256)
ONNX_RUNNER: Final = "OnnxRunner"
ORT_SESSION: Final = "ort-session"
TORCH_EAGER: Final = "torch-eager"
EDGE_CLIENT: Final = "EdgeClient.predict"
CLIENT_RECIPES: Final = PUBLISH_RECIPES
MODEL_NAME: Final = "ctr"
LATENCY_ROWS: Final = 2_048
WORKER_TIMEOUT_S: Final = 900


@dataclass(frozen=True)
class Settings:
    sizes: tuple[str, ...]
    out: Path
    quick: bool
    train_samples: int | None  # None: the preset's default
    validation_rows: int
    iters_b1: int
    iters_b256: int


@dataclass
class Row:
    """One artifact on one runtime (accuracy columns repeat per artifact)."""

    size: str
    recipe: str
    runtime: str
    file_bytes: int | None = None
    size_ratio: float | None = None
    auc: float | None = None
    auc_drop: float | None = None
    max_abs_dp: float | None = None
    p99_abs_dp: float | None = None
    b1_p50_us: float | None = None
    b1_p99_us: float | None = None
    b1_cpu_p50_us: float | None = None
    b256_p50_us: float | None = None
    b256_p99_us: float | None = None
    b256_cpu_p50_us: float | None = None
    load_ms: float | None = None
    load_min_ms: float | None = None
    rss_load_bytes: int | None = None  # RSS added by the first load
    rss_mix_bytes: int | None = None  # RSS added after a realistic request mix
    rss_all_rows_bytes: int | None = None  # RSS added once every embedding row has been looked up
    peak_rss_bytes: int | None = None  # the process's peak after that
    peak_added_bytes: int | None = None  # that peak minus the RSS before loading
    bare_b1_p50_us: float | None = None  # EdgeClient rows: a bare session on the same file, same rounds
    overhead: float | None = None  # EdgeClient rows: predict p50 / bare p50 - 1
    status: str = "ok"


COLUMNS: Final = [f.name for f in dataclasses.fields(Row)]
TRAIN_SAMPLES: Final = {"tiny": 20_000, "small": 200_000, "large": 300_000}


# --- building the artifacts ---------------------------------------------------------------


@dataclass(frozen=True)
class Artifacts:
    size: str
    folder: Path
    models: dict[str, Path]  # recipe -> model.onnx, or the batch-1 .tflite of a TFLite recipe
    tflite: dict[str, dict[int, Path]]  # TFLite recipe -> batch size -> file
    state: Path  # torch state_dict of the fp32 model
    latency_inputs: Path  # .npz of LATENCY_ROWS held-out rows
    validation: dict[str, np.ndarray]


def build(size: str, folder: Path, settings: Settings) -> Artifacts:
    """Train, export and quantize the ``size`` preset; keep a held-out day for accuracy and latency."""
    import torch

    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.publish.export import to_onnx
    from edgerec.server.publish.gate import LABELS
    from edgerec.server.publish.quantize import quantize_int8
    from edgerec.server.publish.quantize_int4 import quantize_int4

    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=0)
    samples = settings.train_samples or TRAIN_SAMPLES.get(size, 200_000)
    started = time.perf_counter()
    model = build_and_train(config, generator, day=0, num_samples=samples)
    program = export_program(model, folder / "model.pt2", generator.day(99, 4))
    state = folder / "state.pt"
    torch.save(model.state_dict(), state)
    fp32 = to_onnx(program, folder / "fp32" / "model.onnx")
    models = {
        "fp32": fp32,
        "int8": quantize_int8(fp32, folder / "int8" / "model.onnx"),
        "int4": quantize_int4(fp32, folder / "int4" / "model.onnx"),
    }
    holdout = generator.day(100, settings.validation_rows)
    tflite: dict[str, dict[int, Path]] = {}
    if _tflite_missing() is None:
        from edgerec.server.publish.tflite import export_tflite

        sample = holdout.inputs()
        for recipe in TFLITE_RECIPES:
            tflite[recipe] = export_tflite(program, folder / recipe, recipe, TFLITE_BATCHES, sample)
            models[recipe] = tflite[recipe][TFLITE_BATCHES[0]]
    else:
        logger.warning("TFLite recipes skipped: %s", _tflite_missing())
    latency_inputs = folder / "latency_inputs.npz"
    rows: dict[str, Any] = {name: array[:LATENCY_ROWS] for name, array in holdout.inputs().items()}
    np.savez(latency_inputs, **rows)
    logger.info("%s: trained on %d samples and exported in %.1f s", size, samples, time.perf_counter() - started)
    validation = {**holdout.inputs(), LABELS: holdout.labels}
    return Artifacts(size, folder, models, tflite, state, latency_inputs, validation)


def _tflite_missing() -> str | None:
    from edgerec.server.publish.tflite import tflite_missing

    return tflite_missing()


def _litert_runner(files: Mapping[int, Path] | Mapping[str, str]) -> Any:
    from edgerec.reference.data import DENSE_INPUT, SPARSE_INPUT
    from edgerec.runtimes.litert import LiteRTBatchRunner

    models = {int(size): Path(path) for size, path in files.items()}
    return LiteRTBatchRunner(models, input_names=[DENSE_INPUT, SPARSE_INPUT], output_names=["score"])


def accuracy_rows(artifacts: Artifacts) -> dict[str, Row]:
    """Size and gate metrics of every recipe's artifact (fp32 is the reference: drop 0)."""
    from edgerec.server.publish.export import data_path
    from edgerec.server.publish.gate import evaluate

    def file_bytes(path: Path) -> int:
        extra = data_path(path)
        return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)

    fp32 = artifacts.models["fp32"]
    metrics = {
        recipe: evaluate(
            fp32,
            _litert_runner(artifacts.tflite[recipe]) if recipe in artifacts.tflite else path,
            artifacts.validation,
            recipe=recipe,
        )
        for recipe, path in artifacts.models.items()
        if recipe != "fp32"
    }
    rows: dict[str, Row] = {}
    for recipe, path in artifacts.models.items():
        row = Row(artifacts.size, recipe, "", file_bytes=file_bytes(path))
        row.size_ratio = (row.file_bytes or 0) / file_bytes(fp32)
        if recipe == "fp32":
            row.auc, row.auc_drop, row.max_abs_dp, row.p99_abs_dp = metrics["int8"].auc_fp32, 0.0, 0.0, 0.0
        else:
            m = metrics[recipe]
            row.auc, row.auc_drop, row.max_abs_dp, row.p99_abs_dp = (
                m.auc_candidate,
                m.auc_drop,
                m.max_abs_dp,
                m.p99_abs_dp,
            )
        rows[recipe] = row
    return rows


def install_for_client(artifacts: Artifacts, work: Path) -> dict[str, Path]:
    """Publish the fp32 model (fp32 + int8) and install each recipe in its own device data folder."""
    from edgerec.device.storage import ModelStore
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(work / "registry")
    manifest = publish(
        artifacts.models["fp32"], MODEL_NAME, registry, PublishOptions(recipes=CLIENT_RECIPES, no_gate=True)
    )
    signed, parsed = registry.load_manifest(MODEL_NAME, manifest.version)
    folders: dict[str, Path] = {}
    for artifact in parsed.artifacts:
        data_dir = work / f"device-{artifact.recipe}"
        store = ModelStore(data_dir, MODEL_NAME)
        staged = store.begin_staging(parsed.version)
        for f in artifact.files:
            (staged / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(registry.file_path(MODEL_NAME, parsed.version, f.path), staged / f.path)
        store.activate(signed, parsed, artifact.recipe, staged)
        folders[artifact.recipe] = data_dir
    return folders


# --- measuring in subprocesses ---------------------------------------------------------------


def run_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is a JSON object."""
    command = [sys.executable, "-m", MODULE, WORKER_FLAG, json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {WORKER_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"status": f"failed: {tail[0][:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def worker_main(argv: Sequence[str]) -> int:
    """``--worker SPEC``: one load, latency or EdgeClient measurement; prints JSON."""
    spec = json.loads(argv[0])
    measure = {"load": _measure_load, "latency": _measure_latency, "client": _measure_client}[spec["kind"]]
    print(json.dumps(measure(spec)))
    return 0


Run = Callable[[dict[str, np.ndarray]], object]
Loader = Callable[[], Run]


def _loader(job: Mapping[str, Any]) -> Loader:
    """How to load ``job["model"]`` with ``job["runtime"]``, its runtime imported and initialised."""
    runtime = job["runtime"]
    if runtime == TORCH_EAGER:
        return _torch_loader(job["model"], job["config"])
    _warm_onnxruntime()
    if runtime == ONNX_RUNNER:
        from edgerec.runtimes import OnnxRunner

        return lambda: OnnxRunner(Path(job["model"]), threads=1).run
    if runtime == LITERT:
        _litert_runner(job["files"])  # LiteRT's one-off set-up (library, delegate), like onnxruntime's below
        return lambda: _litert_runner(job["files"]).run
    return lambda: _bare_session(job["model"], "default")


def _warm_onnxruntime() -> None:
    """Create a session of a one-node model: onnxruntime's one-off set-up is not charged to the model."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm", [value], [value])
    graph.output[0].name = "y"
    _bare_session(helper.make_model(graph).SerializeToString(), "default")({"x": np.zeros(1, np.float32)})


def _session_options(level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if level == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return options


def _bare_session(model: str | bytes, level: str) -> Run:
    import onnxruntime as ort

    session = ort.InferenceSession(model, sess_options=_session_options(level), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _torch_loader(state: str, config: str) -> Loader:
    import torch

    from edgerec.reference.data import DENSE_INPUT, SPARSE_INPUT, ReferenceConfig
    from edgerec.reference.model import DLRM

    torch.set_num_threads(1)
    torch.nn.Linear(2, 2)(torch.ones(1, 2))  # torch's one-off set-up

    def load() -> Run:
        model = DLRM(ReferenceConfig.from_name(config))
        model.load_state_dict(torch.load(state, weights_only=True))
        model.eval()

        def run(feeds: dict[str, np.ndarray]) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(feeds[DENSE_INPUT]), torch.from_numpy(feeds[SPARSE_INPUT]))

        return run

    return load


def _memory() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _measure_load(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Load time (median of 3); RSS added by the first load, then once every row was looked up; peak RSS.

    onnxruntime maps external data files instead of reading them, so a load adds little and
    RSS grows as lookups touch rows: the steady state of a long-running device is the second
    number (every row touched, in batches of 256).
    """
    load = _loader(spec)
    gc.collect()
    baseline, _ = _memory()
    started = time.perf_counter()
    run = load()
    times = [time.perf_counter() - started]
    after_load, _ = _memory()
    feeds = dict(np.load(spec["inputs"]))
    for batch, calls in ((1, 300), (256, 30)):
        batches = _batches(feeds, batch)
        for i in range(calls):
            run(batches[i % len(batches)])
    after_mix, _ = _memory()
    for _ in range(4):
        started = time.perf_counter()
        load()
        times.append(time.perf_counter() - started)
    gc.collect()
    for every in _every_row(spec["config"]):
        run(every)
    after_all, peak = _memory()
    return {
        "load_ms": 1e3 * float(np.median(times)),
        "load_min_ms": 1e3 * float(np.min(times)),
        "rss_load_bytes": after_load - baseline,
        "rss_mix_bytes": after_mix - baseline,
        "rss_all_rows_bytes": after_all - baseline,
        "peak_rss_bytes": peak,
        "peak_added_bytes": peak - baseline,
    }


def _every_row(config_name: str, batch: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Batches that look up every row of every table of the reference preset once."""
    from edgerec.reference.data import DENSE_INPUT, SPARSE_INPUT, ReferenceConfig

    config = ReferenceConfig.from_name(config_name)
    for begin in range(0, config.rows_per_table, batch):
        ids = np.arange(begin, min(begin + batch, config.rows_per_table), dtype=np.int64)
        yield {
            DENSE_INPUT: np.zeros((len(ids), config.num_dense), np.float32),
            SPARSE_INPUT: np.repeat(ids[:, None], config.num_tables, axis=1),
        }


def _measure_latency(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every job of ``spec["jobs"]`` loaded in this process, timed in alternating rounds per batch size."""
    feeds = dict(np.load(spec["inputs"]))
    runs = [_loader(job)() for job in spec["jobs"]]
    results: dict[str, dict[str, float]] = {job["key"]: {} for job in spec["jobs"]}
    for batch, iters in ((1, spec["iters"][0]), (256, spec["iters"][1])):
        timings = _latency(runs, _batches(feeds, batch), iters)
        for job, (wall, cpu) in zip(spec["jobs"], timings, strict=True):
            results[job["key"]] |= _percentiles(f"b{batch}", wall, cpu)
    return results


def _measure_client(spec: Mapping[str, Any]) -> dict[str, Any]:
    """EdgeClient.predict (cache off) against a bare session on the installed file, in alternating rounds."""
    from edgerec.device.client import EdgeClient

    _warm_onnxruntime()
    batches = _batches(dict(np.load(spec["inputs"])), 1)
    baseline, _ = _memory()
    client = EdgeClient(None, MODEL_NAME, spec["data_dir"], cache_entries=0, recipes=(spec["recipe"],))
    started = time.perf_counter()
    first = client.predict(batches[0])  # loads and verifies the installed version
    load_ms = 1e3 * (time.perf_counter() - started)
    rss, peak = _memory()
    installed = client.store.current()
    if first.source != "local" or installed is None:
        raise RuntimeError(f"EdgeClient answered from {first.source}, not from the installed model")
    bare = _bare_session(str(installed.entrypoint), "extended")  # OnnxRunner's options: only the SDK differs
    (client_wall, client_cpu), (bare_wall, _) = _latency([client.predict, bare], batches, spec["iters"][0])
    result = {"load_ms": load_ms, "rss_load_bytes": rss - baseline, "peak_rss_bytes": peak}
    result |= _percentiles("b1", client_wall, client_cpu)
    result["bare_b1_p50_us"] = float(np.median(bare_wall))
    client.close()
    return result


def _batches(feeds: Mapping[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    rows = len(next(iter(feeds.values())))
    starts = range(0, max(rows - batch, 0) + 1, batch)
    return [{name: np.ascontiguousarray(a[s : s + batch]) for name, a in feeds.items()} for s in starts]


def _latency(
    runs: Sequence[Run], batches: Sequence[dict[str, np.ndarray]], iters: int, rounds: int = 10
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Wall and process-CPU microseconds of ``iters`` calls of each run, interleaved in ``rounds`` rounds.

    Interleaving spreads whatever else the machine does over every run alike.
    """
    for run in runs:  # warm up: allocator, caches, lazy initialisation
        for i in range(max(iters // 10, 10)):
            run(batches[i % len(batches)])
    wall = [np.empty(iters) for _ in runs]
    cpu = [np.empty(iters) for _ in runs]
    per_round = -(-iters // rounds)
    for begin in range(0, iters, per_round):
        for k, run in enumerate(runs):
            for i in range(begin, min(begin + per_round, iters)):
                feeds = batches[i % len(batches)]
                cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
                run(feeds)
                wall1, cpu1 = time.perf_counter_ns(), time.process_time_ns()
                wall[k][i], cpu[k][i] = (wall1 - wall0) / 1e3, (cpu1 - cpu0) / 1e3
    return list(zip(wall, cpu, strict=True))


def _percentiles(prefix: str, wall: np.ndarray, cpu: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}_p50_us": float(np.percentile(wall, 50)),
        f"{prefix}_p99_us": float(np.percentile(wall, 99)),
        f"{prefix}_cpu_p50_us": float(np.percentile(cpu, 50)),
    }


# --- one size, end to end ----------------------------------------------------------------------


def bench_size(size: str, work: Path, settings: Settings) -> list[Row]:
    """Build, then one load subprocess per artifact x runtime, one latency subprocess, EdgeClient ones."""
    folder = work / size
    folder.mkdir(parents=True)
    artifacts = build(size, folder, settings)
    accuracy = accuracy_rows(artifacts)
    rows: dict[str, Row] = {}
    jobs: list[dict[str, Any]] = []
    for recipe, path in artifacts.models.items():
        if recipe in artifacts.tflite:
            files = {str(n): str(p) for n, p in artifacts.tflite[recipe].items()}
            jobs.append({"key": f"{recipe}/{LITERT}", "runtime": LITERT, "files": files, "config": size})
            continue
        for runtime in (ONNX_RUNNER, ORT_SESSION):
            jobs.append({"key": f"{recipe}/{runtime}", "runtime": runtime, "model": str(path), "config": size})
    jobs.append({"key": f"fp32/{TORCH_EAGER}", "runtime": TORCH_EAGER, "model": str(artifacts.state), "config": size})
    for job in jobs:
        recipe, runtime = job["key"].split("/")
        logger.info("%s: loading %s with %s", size, recipe, runtime)
        row = rows[job["key"]] = dataclasses.replace(accuracy[recipe], runtime=runtime)
        if runtime == TORCH_EAGER:
            row.file_bytes, row.size_ratio = artifacts.state.stat().st_size, None
        _fill(row, run_worker({**job, "kind": "load", "inputs": str(artifacts.latency_inputs)}))
    logger.info("%s: latency of %d artifact x runtime pairs, interleaved", size, len(jobs))
    iters = [settings.iters_b1, settings.iters_b256]
    latency = run_worker({"kind": "latency", "jobs": jobs, "inputs": str(artifacts.latency_inputs), "iters": iters})
    for key, row in rows.items():
        _fill(row, latency.get(key, {"status": latency.get("status", "no latency measured")}))
    for recipe, data_dir in install_for_client(artifacts, folder).items():
        logger.info("%s: EdgeClient.predict on %s", size, recipe)
        row = rows[f"{recipe}/{EDGE_CLIENT}"] = dataclasses.replace(accuracy[recipe], runtime=EDGE_CLIENT)
        spec = {"kind": "client", "data_dir": str(data_dir), "recipe": recipe, "inputs": str(artifacts.latency_inputs)}
        _fill(row, run_worker({**spec, "iters": iters}))
        if row.b1_p50_us and row.bare_b1_p50_us:
            row.overhead = row.b1_p50_us / row.bare_b1_p50_us - 1
    return list(rows.values())


def _fill(row: Row, measured: Mapping[str, Any]) -> None:
    for key, value in measured.items():
        if key in COLUMNS:
            setattr(row, key, value)


# --- reporting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    size: str
    value: str
    limit: str
    met: bool | None  # None: not measured


def compute_targets(rows: Sequence[Row]) -> list[Target]:
    """The issue's targets per size, from the OnnxRunner and EdgeClient rows."""
    targets: list[Target] = []
    for size in dict.fromkeys(r.size for r in rows):

        def get(recipe: str, field: str, runtime: str = ONNX_RUNNER, size: str = size) -> float | None:
            row = next((r for r in rows if (r.size, r.recipe, r.runtime) == (size, recipe, runtime)), None)
            value = getattr(row, field) if row is not None else None
            return None if value is None else float(value)

        targets += [
            _at_most("int8 size vs fp32", size, get("int8", "size_ratio"), 0.30, "x"),
            _at_most("int8 AUC drop", size, get("int8", "auc_drop"), 0.0005, ""),
            _at_most("int4 size vs fp32", size, get("int4", "size_ratio"), 0.18, "x"),
            _at_most("int4 AUC drop", size, get("int4", "auc_drop"), 0.002, ""),
            _at_most(
                "int8 load time (min of 5) vs fp32",
                size,
                _ratio(get("int8", "load_min_ms"), get("fp32", "load_min_ms")),
                0.5,
                "x",
            ),
            _at_most(
                "int8 RSS added by load vs fp32",
                size,
                _ratio(get("int8", "rss_load_bytes"), get("fp32", "rss_load_bytes")),
                0.5,
                "x",
            ),
            _at_most(
                "int8 RSS after a request mix vs fp32",
                size,
                _ratio(get("int8", "rss_mix_bytes"), get("fp32", "rss_mix_bytes")),
                0.5,
                "x",
            ),
            _at_most(
                "int8 peak RSS added vs fp32",
                size,
                _ratio(get("int8", "peak_added_bytes"), get("fp32", "peak_added_bytes")),
                0.5,
                "x",
            ),
            _at_most(
                "int8 RSS once every row was used vs fp32",
                size,
                _ratio(get("int8", "rss_all_rows_bytes"), get("fp32", "rss_all_rows_bytes")),
                0.5,
                "x",
            ),
        ]
        targets += [
            _at_most(
                f"EdgeClient.predict overhead, {recipe}, batch 1", size, get(recipe, "overhead", EDGE_CLIENT), 0.1, "%"
            )
            for recipe in CLIENT_RECIPES
        ]
    return targets


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_most(name: str, size: str, value: float | None, limit: float, unit: str) -> Target:
    def show(x: float) -> str:
        return f"{100 * x:.1f}%" if unit == "%" else f"{x:.3f}{unit}" if unit else f"{x:+.5f}"

    if value is None:
        return Target(name, size, "n/a", show(limit), None)
    return Target(name, size, show(value), f"<= {show(limit)}", value <= limit)


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})


def render_markdown(rows: Sequence[Row], settings: Settings, context: Mapping[str, str]) -> str:
    lines = ["# Quantization benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "## Targets", ""]
    lines += _table(
        ["target", "size", "measured", "limit", "met"],
        [
            [t.name, t.size, t.value, t.limit, "n/a" if t.met is None else "met" if t.met else "NOT met"]
            for t in compute_targets(rows)
        ],
    )
    for size in dict.fromkeys(r.size for r in rows):
        lines += ["", f"## {size}", ""]
        lines += _row_table([r for r in rows if r.size == size and r.runtime != EDGE_CLIENT], MAIN_COLUMNS)
        lines += ["", "EdgeClient.predict (cache_entries=0) vs a bare session on the installed file, batch 1:", ""]
        lines += _row_table([r for r in rows if r.size == size and r.runtime == EDGE_CLIENT], CLIENT_COLUMNS)
    lines += ["", "## Method", "", (__doc__ or "").split("\n\n", 2)[-1].strip(), ""]
    return "\n".join(lines)


# (header, Row field, format: a str.format pattern, or "MB" for bytes)
MAIN_COLUMNS: Final = [
    ("recipe", "recipe", "{}"),
    ("runtime", "runtime", "{}"),
    ("size", "file_bytes", "MB"),
    ("x fp32", "size_ratio", "{:.3f}"),
    ("AUC", "auc", "{:.5f}"),
    ("AUC drop", "auc_drop", "{:+.5f}"),
    ("max abs dp", "max_abs_dp", "{:.2e}"),
    ("p99 abs dp", "p99_abs_dp", "{:.2e}"),
    ("b1 p50 us", "b1_p50_us", "{:.1f}"),
    ("b1 p99 us", "b1_p99_us", "{:.1f}"),
    ("b1 CPU p50 us", "b1_cpu_p50_us", "{:.1f}"),
    ("b256 p50 us", "b256_p50_us", "{:.0f}"),
    ("b256 p99 us", "b256_p99_us", "{:.0f}"),
    ("b256 CPU p50 us", "b256_cpu_p50_us", "{:.0f}"),
    ("load ms", "load_ms", "{:.1f}"),
    ("load min ms", "load_min_ms", "{:.1f}"),
    ("RSS added by load", "rss_load_bytes", "MB"),
    ("RSS added, request mix", "rss_mix_bytes", "MB"),
    ("RSS added, every row used", "rss_all_rows_bytes", "MB"),
    ("peak RSS added", "peak_added_bytes", "MB"),
    ("peak RSS", "peak_rss_bytes", "MB"),
    ("status", "status", "{}"),
]
CLIENT_COLUMNS: Final = [
    ("recipe", "recipe", "{}"),
    ("bare session p50 us", "bare_b1_p50_us", "{:.1f}"),
    ("predict p50 us", "b1_p50_us", "{:.1f}"),
    ("predict p99 us", "b1_p99_us", "{:.1f}"),
    ("predict CPU p50 us (all threads)", "b1_cpu_p50_us", "{:.1f}"),
    ("overhead", "overhead", "{:.1%}"),
    ("first predict ms (verify + load)", "load_ms", "{:.1f}"),
    ("RSS added", "rss_load_bytes", "MB"),
    ("status", "status", "{}"),
]


def _row_table(rows: Sequence[Row], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    def cell(row: Row, field: str, fmt: str) -> str:
        value = getattr(row, field)
        if value is None:
            return "-"
        return f"{value / 1e6:.2f} MB" if fmt == "MB" else fmt.format(value)

    return _table([c[0] for c in columns], [[cell(row, field, fmt) for _, field, fmt in columns] for row in rows])


def _table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]
    return out


def _context(settings: Settings, started: datetime, load_before: str) -> dict[str, str]:
    import onnxruntime
    import torch

    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]  # fmt: skip
    cpu = models[0] if models else platform.processor()
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, {_litert_version()}",
        "load average before / after": f"{load_before} / {loadavg()}",
        "settings": (
            f"sizes {','.join(settings.sizes)}, {settings.validation_rows} validation rows, "
            f"{settings.iters_b1} timed calls at batch 1 and {settings.iters_b256} at batch 256, 1 thread"
        ),
    }


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ai-edge-litert {version('ai-edge-litert')}, litert-torch {version('litert-torch')}"
    except PackageNotFoundError:
        return "LiteRT not installed (TFLite recipes skipped)"


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Settings:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=summary)
    parser.add_argument("--sizes", help="reference presets, comma-separated (default small,large; tiny with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny preset, few samples and calls")
    parser.add_argument("--out", type=Path, default=Path("bench-out/quant"))
    parser.add_argument("--train-samples", type=int, help="training samples per preset (default: per preset)")
    args = parser.parse_args(argv)
    sizes = tuple(s for s in (args.sizes or ("tiny" if args.quick else "small,large")).split(",") if s)
    return Settings(
        sizes=sizes,
        out=args.out,
        quick=args.quick,
        train_samples=args.train_samples or (5_000 if args.quick else None),
        validation_rows=3_000 if args.quick else 100_000,
        iters_b1=200 if args.quick else 3_000,
        iters_b256=20 if args.quick else 300,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [WORKER_FLAG]:
        return worker_main(arguments[1:])
    settings = parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started, load_before = datetime.now(UTC), loadavg()
    settings.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for size in settings.sizes:
            rows += bench_size(size, Path(tmp), settings)
    write_csv(rows, settings.out / "quant.csv")
    report = settings.out / "quant.md"
    report.write_text(render_markdown(rows, settings, _context(settings, started, load_before)))
    logger.info("wrote %s and %s", report, settings.out / "quant.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
