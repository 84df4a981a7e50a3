"""Delta-payload benchmark: every edgerec codec against generic binary-diff tools on real model updates.

Run ``python -m edgerec.tools.bench.delta [--sizes 50MB,200MB] [--changed 1,5,20] [--out bench-out/delta]
[--quick]``; it writes ``delta.csv`` (one row per model x pair x change x method) and ``delta.md``
(targets, payloads by change, every measurement).

Models come from a known generating process instead of long training. v1 is the reference
DLRM (8 tables, fp32 embeddings of the requested size) trained briefly on one day of clicks.
v2 is v1 trained one more day (the reference ``train``: SparseAdam for the embeddings,
Adam for the MLPs) on clicks whose ids touch exactly X% of each table's rows: the rows are
drawn without replacement with probability proportional to their Zipf popularity (a day
touches the head), each appears at least once, and ``day_repeats - 1`` more impressions per
touched row are drawn by popularity among them; labels come from the generator's truth.
So exactly those rows change, by real optimizer steps, and every MLP weight moves. Both go
through the production path: ``export_program`` -> ``to_onnx`` (fp32), ``quantize_int8`` (per-row int8) and
onnxruntime's ``quantize_dynamic`` (int8 "the usual way": one scale per table).

Every diff and every apply runs in a fresh subprocess. Seconds are measured inside the
process for Python tools (imports excluded, file I/O included) and as wall time for command
line tools; peak RSS is that process's ``ru_maxrss`` from ``wait4``, in bytes (interpreter
and imports included). Each applied file is compared with the real target (sha256); a
mismatch or a failed apply marks the row FAILED.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edgerec.hashing import sha256_file
from edgerec.units import format_bytes, parse_size

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from edgerec.reference.data import ClickBatch, ClickGenerator, ReferenceConfig
    from edgerec.reference.model import DLRM

MODULE: Final = "edgerec.tools.bench.delta"
logger = logging.getLogger(MODULE)
EDGEREC_PREFIX: Final = "edgerec:"
SPARSE_IDEAL: Final = "sparse-ideal"
FULL_ZSTD19: Final = "zstd19-full"
WORKER_FLAG: Final = "--worker"

PAIRS: Final = ("fp32", "int8-rows", "int8-qdyn")
PAIR_TITLES: Final = {
    "fp32": "fp32 (.onnx.data)",
    "int8-rows": "int8 per-row (quantize_int8)",
    "int8-qdyn": "int8 quantize_dynamic",
}
BSDIFF_FAMILY: Final = frozenset({"bsdiff4", "bsdiff-cli", EDGEREC_PREFIX + "bsdiff4"})
PATCH_LIKE: Final = frozenset(
    {
        "bsdiff4",
        "bsdiff-cli",
        "hdiffpatch-zstd19",
        "zstd-patch-from-py",
        "zstd-patch-from-cli",
        EDGEREC_PREFIX + "bsdiff4",
        EDGEREC_PREFIX + "zstd-patch-from",
    }
)
"""Methods that target 5 compares the fp32 tensor delta with (bsdiff4, HDiffPatch, patch-from)."""
TENSOR: Final = EDGEREC_PREFIX + "tensor"
BIG_MODEL: Final = 200_000_000
"""Models with at least this many fp32 embedding bytes are the "big" ones of the RSS target."""
RSS_MARGIN: Final = 32 << 20

FileOp = Callable[[Path, Path, Path], None]
"""A diff ``(old, new, patch)`` or an apply ``(old, patch, out)``."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchSettings:
    """What one run measures; sizes are fp32 embedding bytes, changes are percents of rows."""

    sizes: tuple[int, ...] = (50_000_000, 200_000_000)
    changed: tuple[float, ...] = (1.0, 5.0, 20.0)
    out: Path = Path("bench-out/delta")
    bsdiff_max: int = 64 << 20
    timeout: float = 1800.0
    seed: int = 0
    train_samples: int = 50_000
    day_repeats: int = 4
    num_tables: int = 8
    embedding_dim: int = 32

    def config(self, size: int) -> ReferenceConfig:
        """The reference DLRM whose fp32 embedding tables take about ``size`` bytes."""
        from edgerec.reference.data import ReferenceConfig

        rows = max(16, -(-size // (self.num_tables * self.embedding_dim * 4)))
        dim = self.embedding_dim
        return ReferenceConfig(self.num_tables, rows, dim, 13, bottom_mlp=(64, dim), top_mlp=(128, 64))


QUICK = BenchSettings(sizes=(1_000_000,), changed=(5.0,), train_samples=2_000)
"""The ``--quick`` smoke configuration: one 1 MB model, 5% of rows changed."""


def size_label(size: int) -> str:
    """'50MB' for 50_000_000."""
    return f"{size / 1e6:g}MB"


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Variant:
    """One exported version: the three ONNX artifacts (each ``model.onnx`` plus ``model.onnx.data``)."""

    fp32: Path
    int8_rows: Path
    int8_qdyn: Path

    def model(self, pair: str) -> Path:
        """The ``model.onnx`` of a pair (one of :data:`PAIRS`)."""
        return {"fp32": self.fp32, "int8-rows": self.int8_rows, "int8-qdyn": self.int8_qdyn}[pair]

    def file(self, pair: str) -> Path:
        """The file a pair compares: the bigger of ``model.onnx`` and its ``.data``, where the weights lie."""
        from edgerec.server.publish.export import data_path

        model = self.model(pair)
        data = data_path(model)
        return data if data.exists() and data.stat().st_size > model.stat().st_size else model


@dataclass(frozen=True)
class ModelSet:
    """v1 and one v2 per change percent of one model size."""

    label: str
    config: ReferenceConfig
    v1: Variant
    v2: dict[float, Variant]
    changed_rows: dict[float, int]
    build_seconds: float


def _spec(settings: BenchSettings, size: int) -> dict[str, Any]:
    """Everything the models of one size depend on (JSON-shaped)."""
    spec = {
        "config": dataclasses.asdict(settings.config(size)),
        "changed": list(settings.changed),
        "seed": settings.seed,
        "train_samples": settings.train_samples,
        "day_repeats": settings.day_repeats,
        "version": 2,
    }
    parsed: dict[str, Any] = json.loads(json.dumps(spec))
    return parsed


def _model_set(settings: BenchSettings, size: int, changed_rows: dict[float, int], seconds: float) -> ModelSet:
    root = settings.out / "models" / size_label(size)
    variants = {pct: _variant(root / f"v2-{pct:g}pct") for pct in settings.changed}
    return ModelSet(size_label(size), settings.config(size), _variant(root / "v1"), variants, changed_rows, seconds)


def cached_models(settings: BenchSettings, size: int) -> ModelSet | None:
    """The models a previous run built in ``settings.out`` with the same spec, or None."""
    spec_file = settings.out / "models" / size_label(size) / "spec.json"
    if not spec_file.exists():
        return None
    stored = json.loads(spec_file.read_text())
    if stored.get("spec") != _spec(settings, size):
        return None
    rows = {float(k): int(v) for k, v in stored["changed_rows"].items()}
    return _model_set(settings, size, rows, float(stored["build_seconds"]))


def build_models(settings: BenchSettings, size: int) -> ModelSet:
    """Train v1, derive each v2, export all of them; reuse a previous build with the same spec."""
    cached = cached_models(settings, size)
    if cached is not None:
        logger.info("%s: reusing the models in %s", cached.label, settings.out / "models")
        return cached
    config = settings.config(size)
    label = size_label(size)
    root = settings.out / "models" / label
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    from edgerec.reference.data import ClickGenerator
    from edgerec.reference.train import build_and_train

    generator = ClickGenerator(config, seed=settings.seed)
    sample = generator.day(99, 4)
    logger.info(
        "%s: training v1 (%d tables x %d rows x %d) on %d samples",
        label,
        config.num_tables,
        config.rows_per_table,
        config.embedding_dim,
        settings.train_samples,
    )
    v1_model = build_and_train(config, generator, day=0, num_samples=settings.train_samples, seed=settings.seed)
    _export(v1_model, sample, root / "v1")
    changed_rows: dict[float, int] = {}
    for pct in settings.changed:
        v2_model, changed_rows[pct] = train_update(v1_model, generator, pct, settings)
        _export(v2_model, sample, root / f"v2-{pct:g}pct")
        del v2_model
    seconds = time.perf_counter() - start
    stored = {
        "spec": _spec(settings, size),
        "changed_rows": {str(k): v for k, v in changed_rows.items()},
        "build_seconds": seconds,
    }
    (root / "spec.json").write_text(json.dumps(stored, indent=1))
    logger.info("%s: models built in %.1f s", label, seconds)
    return _model_set(settings, size, changed_rows, seconds)


def _variant(folder: Path) -> Variant:
    return Variant(folder / "fp32" / "model.onnx", folder / "int8" / "model.onnx", folder / "qdyn" / "model.onnx")


def _export(model: DLRM, sample: Any, folder: Path) -> None:
    """Export ``model`` as production does (``.pt2`` -> canonical ONNX), then both int8 flavours."""
    from onnxruntime.quantization import quantize_dynamic

    from edgerec.reference.train import export_program
    from edgerec.server.publish.export import to_onnx
    from edgerec.server.publish.quantize import quantize_int8

    variant = _variant(folder)
    program = export_program(model, folder / "model.pt2", sample)
    to_onnx(program, variant.fp32)
    program.unlink()
    quantize_int8(variant.fp32, variant.int8_rows)
    variant.int8_qdyn.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs its advice through the root logger, once per call
    try:
        quantize_dynamic(variant.fp32, variant.int8_qdyn)
    finally:
        root.setLevel(level)


def zipf_rows(popularity: npt.NDArray[np.float64], count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``count`` distinct ids drawn without replacement, each with probability proportional to ``popularity``.

    Efraimidis-Spirakis: the ``count`` smallest ``Exp(1) / p`` keys.
    """
    import numpy as np

    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if count >= popularity.size:
        return np.arange(popularity.size, dtype=np.int64)
    keys = rng.exponential(size=popularity.size) / np.maximum(popularity, np.finfo(np.float64).tiny)
    return np.sort(np.argpartition(keys, count - 1)[:count]).astype(np.int64)


def update_day(generator: ClickGenerator, pct: float, settings: BenchSettings) -> ClickBatch:
    """A day of clicks whose ids touch exactly ``pct``% of each table's rows (see the module docstring)."""
    import numpy as np

    from edgerec.reference.data import ClickBatch

    config = generator.config
    rng = np.random.default_rng([settings.seed, 2, round(pct * 1000)])
    count = max(1, round(config.rows_per_table * pct / 100))
    samples = count * settings.day_repeats
    ids = np.empty((samples, config.num_tables), dtype=np.int64)
    for table in range(config.num_tables):
        popularity = generator.popularity(table)
        touched = zipf_rows(popularity, count, rng)
        weights = popularity[touched] / popularity[touched].sum()
        column = np.concatenate([touched, rng.choice(touched, size=samples - count, p=weights)])
        ids[:, table] = rng.permutation(column)
    dense = rng.standard_normal((samples, config.num_dense), dtype=np.float32)
    true_prob = (1.0 / (1.0 + np.exp(-generator.logit(dense, ids, day_index=1).astype(np.float64)))).astype(np.float32)
    labels = (rng.random(samples) < true_prob).astype(np.float32)
    return ClickBatch(dense=dense, sparse_ids=ids, labels=labels, true_prob=true_prob)


def train_update(model: DLRM, generator: ClickGenerator, pct: float, settings: BenchSettings) -> tuple[DLRM, int]:
    """v2 of ``model``: one more day of training on :func:`update_day`'s clicks.

    Returns the new model and the number of embedding rows that differ from ``model``.
    """
    import numpy as np

    from edgerec.reference.model import DLRM
    from edgerec.reference.train import train

    v2 = DLRM(model.config)
    v2.load_state_dict(model.state_dict())
    train(v2, update_day(generator, pct, settings), seed=settings.seed + 1)
    changed = sum(
        int(np.any(after.detach().numpy() != before.detach().numpy(), axis=1).sum())
        for before, after in zip(model.embedding_tables(), v2.embedding_tables(), strict=True)
    )
    total = model.config.num_tables * model.config.rows_per_table
    logger.info("v2 at %g%%: %d of %d embedding rows changed by a day of training", pct, changed, total)
    return v2, changed


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way of shipping ``new`` given ``old``: commands for a fresh diff process and apply process."""

    name: str
    available: bool
    requirement: str
    diff: Callable[[Path, Path, Path], list[str]]
    apply: Callable[[Path, Path, Path], list[str]]
    timed_inside: bool = True

    @property
    def bsdiff_family(self) -> bool:
        """Quadratic-memory suffix-sorting diffs that are skipped on large files."""
        return self.name in BSDIFF_FAMILY


def _worker_command(op: str, name: str) -> Callable[[Path, Path, Path], list[str]]:
    def command(a: Path, b: Path, c: Path) -> list[str]:
        return [sys.executable, "-m", MODULE, WORKER_FLAG, op, name, str(a), str(b), str(c)]

    return command


def _python_method(name: str, available: bool, requirement: str) -> Method:
    return Method(name, available, requirement, _worker_command("diff", name), _worker_command("apply", name))


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _window_log(size: int) -> int:
    return max(10, min(31, (size - 1).bit_length()))


_CLI_PEERS: Final = (
    # name, Debian package, diff (old, new, patch), apply (old, patch, out)
    (
        "zstd-patch-from-cli",
        "zstd",
        ("zstd", "-19", "-q", "-f", "--long={window}", "--patch-from={old}", "{new}", "-o", "{patch}"),
        ("zstd", "-d", "-q", "-f", "--long=31", "--patch-from={old}", "{patch}", "-o", "{out}"),
    ),
    ("bsdiff-cli", "bsdiff", ("bsdiff", "{old}", "{new}", "{patch}"), ("bspatch", "{old}", "{out}", "{patch}")),
    (
        "xdelta3-cli",
        "xdelta3",
        ("xdelta3", "-9", "-e", "-f", "-s", "{old}", "{new}", "{patch}"),
        ("xdelta3", "-d", "-f", "-s", "{old}", "{patch}", "{out}"),
    ),
)


def _cli_command(template: Sequence[str], names: Sequence[str]) -> Callable[[Path, Path, Path], list[str]]:
    def command(a: Path, b: Path, c: Path) -> list[str]:
        values = dict(zip(names, (str(a), str(b), str(c)), strict=True))
        if names[1] == "new":  # a diff: the window must cover old + new
            values["window"] = str(_window_log(_size(a) + _size(b)))
        return [shutil.which(template[0]) or template[0], *(part.format(**values) for part in template[1:])]

    return command


def discover_methods() -> list[Method]:
    """Every edgerec codec (from ``CODEC_NAMES``, at run time) and every peer, installed or not."""
    from edgerec.codecs import CODEC_NAMES

    methods = [_python_method(EDGEREC_PREFIX + name, True, "edgerec") for name in CODEC_NAMES]
    has_zstd_module = _has_module("compression.zstd") if sys.version_info >= (3, 14) else _has_module("backports.zstd")
    methods += [
        _python_method("bsdiff4", _has_module("bsdiff4"), "pip install bsdiff4"),
        _python_method("hdiffpatch-zstd19", _has_module("hdiffpatch"), "pip install hdiffpatch"),
        _python_method("zstd-patch-from-py", has_zstd_module, "pip install backports.zstd"),
    ]
    for name, package, diff, apply in _CLI_PEERS:
        methods.append(
            Method(
                name,
                all(shutil.which(template[0]) for template in (diff, apply)),
                f"apt-get install {package}",
                _cli_command(diff, ("old", "new", "patch")),
                _cli_command(apply, ("old", "patch", "out")),
                timed_inside=False,
            )
        )
    methods.append(_python_method(FULL_ZSTD19, _has_module("zstandard"), "pip install zstandard"))
    return methods


def _size(path: Path) -> int:
    return path.stat().st_size


# --------------------------------------------------------------------------- worker (runs in the subprocess)


def load_tool(name: str) -> tuple[FileOp, FileOp]:
    """(diff, apply) of a Python method; imports only what that method needs."""
    if name.startswith(EDGEREC_PREFIX):
        from edgerec.codecs import apply_patch, make_patch

        codec = name.removeprefix(EDGEREC_PREFIX)

        def codec_diff(old: Path, new: Path, patch: Path) -> None:
            make_patch(codec, old, new, patch)

        def codec_apply(old: Path, patch: Path, out: Path) -> None:
            apply_patch(old, patch, out)

        return codec_diff, codec_apply
    if name == "bsdiff4":
        import bsdiff4

        def bsdiff_diff(old: Path, new: Path, patch: Path) -> None:
            patch.write_bytes(bsdiff4.diff(old.read_bytes(), new.read_bytes()))

        def bsdiff_apply(old: Path, patch: Path, out: Path) -> None:
            out.write_bytes(bsdiff4.patch(old.read_bytes(), patch.read_bytes()))

        return bsdiff_diff, bsdiff_apply
    if name == "hdiffpatch-zstd19":
        import hdiffpatch  # type: ignore[import-not-found, unused-ignore]

        def hdiff_diff(old: Path, new: Path, patch: Path) -> None:
            config = hdiffpatch.ZStdConfig(level=19)
            patch.write_bytes(
                hdiffpatch.diff(old.read_bytes(), new.read_bytes(), config, validate=False, big_cache_match=True)
            )

        def hdiff_apply(old: Path, patch: Path, out: Path) -> None:
            out.write_bytes(hdiffpatch.apply(old.read_bytes(), patch.read_bytes()))

        return hdiff_diff, hdiff_apply
    if name == "zstd-patch-from-py":
        return _patch_from_tool()
    if name == FULL_ZSTD19:
        import zstandard

        def full_diff(old: Path, new: Path, patch: Path) -> None:
            compressor = zstandard.ZstdCompressor(level=19, write_checksum=True)
            with open(new, "rb") as src, open(patch, "wb") as dst:
                compressor.copy_stream(src, dst, size=_size(new))

        def full_apply(old: Path, patch: Path, out: Path) -> None:
            with open(patch, "rb") as src, open(out, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)

        return full_diff, full_apply
    raise ValueError(f"unknown Python method {name!r}")


def _patch_from_tool() -> tuple[FileOp, FileOp]:
    """zstd with the old file as a raw prefix, a window covering old + new and long-distance matching."""
    if sys.version_info >= (3, 14):
        from compression.zstd import (
            CompressionParameter,
            DecompressionParameter,
            ZstdCompressor,
            ZstdDecompressor,
            ZstdDict,
        )
    else:
        from backports.zstd import (
            CompressionParameter,
            DecompressionParameter,
            ZstdCompressor,
            ZstdDecompressor,
            ZstdDict,
        )

    def diff(old: Path, new: Path, patch: Path) -> None:
        base, target = old.read_bytes(), new.read_bytes()
        options: dict[int, int] = {
            CompressionParameter.compression_level: 19,
            CompressionParameter.window_log: _window_log(len(base) + len(target)),
            CompressionParameter.enable_long_distance_matching: 1,
        }
        compressor = ZstdCompressor(options=options, zstd_dict=ZstdDict(base, is_raw=True).as_prefix)
        patch.write_bytes(compressor.compress(target, ZstdCompressor.FLUSH_FRAME))

    def apply(old: Path, patch: Path, out: Path) -> None:
        prefix = ZstdDict(old.read_bytes(), is_raw=True).as_prefix
        decompressor = ZstdDecompressor(zstd_dict=prefix, options={DecompressionParameter.window_log_max: 31})
        out.write_bytes(decompressor.decompress(patch.read_bytes()))

    return diff, apply


def worker_main(argv: Sequence[str]) -> int:
    """``--worker OP METHOD A B C``: run one diff or apply, print ``{"seconds": ...}`` (imports excluded)."""
    op, name, a, b, c = argv
    diff, apply = load_tool(name)
    if op == "noop":
        seconds = 0.0
    else:
        start = time.perf_counter()
        {"diff": diff, "apply": apply}[op](Path(a), Path(b), Path(c))
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds}))
    return 0


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """One subprocess: its seconds (inside or wall), peak RSS in bytes and how it ended."""

    seconds: float
    peak_rss: int
    returncode: int
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Exited 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out

    def problem(self) -> str:
        """A one-line reason for a failure."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        lines = (self.stderr.strip() or self.stdout.strip() or "no output").splitlines()
        return f"exit {self.returncode}: {lines[-1][:200]}"


_LAUNCHER: Final = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {time.perf_counter() - start}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs argv in a grandchild and records its peak RSS (KiB) and wall seconds.

Linux carries a process's peak RSS across fork and exec, so a child forked from this
benchmark (hundreds of MB once torch is loaded) would report at least that much whatever
it runs: the small launcher (python -S, about 7 MB) forks the measured process instead.
"""


def run_measured(argv: Sequence[str], timeout: float, *, timed_inside: bool) -> Measured:
    """Run ``argv`` to completion in a fresh process and measure its own peak RSS and seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage"
        out_file, err_file = Path(tmp) / "stdout", Path(tmp) / "stderr"
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(usage_file), *argv]
        with open(out_file, "wb") as out, open(err_file, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(launcher, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            try:
                returncode, timed_out = proc.wait(timeout), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the measured process
                returncode, timed_out = proc.wait(), True
        stdout = out_file.read_text(errors="replace")
        stderr = err_file.read_text(errors="replace")
        maxrss_kib, seconds = 0, time.perf_counter() - start
        if usage_file.exists():
            kib, wall = usage_file.read_text().split()
            maxrss_kib, seconds = int(kib), float(wall)
    if timed_inside and returncode == 0:
        try:
            seconds = float(json.loads(stdout.strip().splitlines()[-1])["seconds"])
        except (ValueError, KeyError, IndexError):
            logger.warning("worker %s printed no timing; using wall time", argv)
    return Measured(seconds, maxrss_kib * 1024, returncode, timed_out, stdout, stderr)


@dataclass
class Row:
    """One line of ``delta.csv``."""

    model: str
    pair: str
    changed_pct: float
    method: str
    status: str
    old_bytes: int
    new_bytes: int
    payload_bytes: int | None = None
    diff_s: float | None = None
    diff_rss_bytes: int | None = None
    apply_s: float | None = None
    apply_rss_bytes: int | None = None
    verified: str = ""
    note: str = ""


CSV_FIELDS: Final = tuple(field.name for field in dataclasses.fields(Row))


def measure(method: Method, old: Path, new: Path, new_sha256: str, work: Path, settings: BenchSettings) -> Row:
    """Diff, apply and verify one method on one file pair (the row's model, pair and change are left blank)."""
    row = Row("", "", 0.0, method.name, "ok", _size(old), _size(new))
    if not method.available:
        row.status, row.note = "not installed", method.requirement
        return row
    largest = max(row.old_bytes, row.new_bytes)
    if method.bsdiff_family and largest > settings.bsdiff_max:
        row.status = "skipped"
        row.note = f"bsdiff family skipped: {_mib(largest)} > --bsdiff-max {_mib(settings.bsdiff_max)}"
        return row
    patch, out = work / f"{method.name.replace(':', '-')}.patch", work / "applied"
    try:
        made = run_measured(method.diff(old, new, patch), settings.timeout, timed_inside=method.timed_inside)
        row.diff_s, row.diff_rss_bytes = made.seconds, made.peak_rss
        if not made.ok:
            row.status, row.note = ("timeout" if made.timed_out else "error"), "diff " + made.problem()
            return row
        row.payload_bytes = _size(patch)
        applied = run_measured(method.apply(old, patch, out), settings.timeout, timed_inside=method.timed_inside)
        row.apply_s, row.apply_rss_bytes = applied.seconds, applied.peak_rss
        if not applied.ok:
            row.status, row.verified, row.note = "FAILED", "no", "apply " + applied.problem()
        elif not out.exists() or sha256_file(out) != new_sha256:
            row.status, row.verified, row.note = "FAILED", "no", "applied output differs from the new file"
        else:
            row.verified = "yes"
    finally:
        patch.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    return row


def sparse_ideal(old_model: Path, new_model: Path, *, external_only: bool) -> tuple[int, str]:
    """zstd -19 of (changed row indices + changed rows + changed other tensors), and a note on what changed.

    A 2-D tensor with some rows unchanged ships delta-coded uint32 row indices and its changed
    rows; any other changed tensor ships whole. With ``external_only`` only tensors stored in
    ``.onnx.data`` count (the file the pair compares).
    """
    import numpy as np
    import zstandard

    old, new = _initializers(old_model, external_only), _initializers(new_model, external_only)
    parts: list[bytes] = []
    rows_changed = rows_total = sparse_tensors = whole_tensors = 0
    for name in sorted(new):
        after, before = np.ascontiguousarray(new[name]), old.get(name)
        if before is not None and before.shape == after.shape and before.dtype == after.dtype:
            num_rows = after.shape[0] if after.ndim == 2 else 1
            old_rows = np.ascontiguousarray(before).view(np.uint8).reshape(num_rows, -1)
            changed = np.any(old_rows != after.view(np.uint8).reshape(num_rows, -1), axis=1)
            if not changed.any():
                continue
            if not changed.all():
                indices = np.flatnonzero(changed).astype(np.uint32)
                parts += [np.diff(indices, prepend=np.uint32(0)).tobytes(), after[changed].tobytes()]
                rows_changed += int(changed.sum())
                rows_total += num_rows
                sparse_tensors += 1
                continue
        parts.append(after.tobytes())
        whole_tensors += 1
    payload = zstandard.ZstdCompressor(level=19).compress(b"".join(parts))
    share = f" ({100 * rows_changed / rows_total:.2f}%)" if rows_total else ""
    note = f"{rows_changed} of {rows_total} rows{share} in {sparse_tensors} tensors; {whole_tensors} tensors whole"
    return len(payload), note


def _initializers(model_path: Path, external_only: bool) -> dict[str, npt.NDArray[Any]]:
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    model = onnx.load_model(str(model_path), load_external_data=False)
    external = {tensor.name for tensor in model.graph.initializer if uses_external_data(tensor)}
    load_external_data_for_model(model, str(model_path.parent))
    return {
        tensor.name: numpy_helper.to_array(tensor)
        for tensor in model.graph.initializer
        if tensor.name in external or not external_only
    }


def python_baseline_rss(settings: BenchSettings) -> int | None:
    """Peak RSS of a worker that imports the edgerec codecs and does nothing (what every apply pays)."""
    command = _worker_command("noop", EDGEREC_PREFIX + "full")(Path(), Path(), Path())
    measured = run_measured(command, settings.timeout, timed_inside=True)
    return measured.peak_rss if measured.ok else None


# --------------------------------------------------------------------------- the run


def run(settings: BenchSettings) -> list[Row]:
    """Build the models, measure every method on every pair, write ``delta.csv`` and ``delta.md``."""
    settings.out.mkdir(parents=True, exist_ok=True)
    methods = discover_methods()
    logger.info("methods: %s", ", ".join(f"{m.name}{'' if m.available else ' (not installed)'}" for m in methods))
    csv_path = settings.out / "delta.csv"
    rows: list[Row] = []
    models: list[ModelSet] = []
    baseline = python_baseline_rss(settings)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for size in settings.sizes:
            model_set = build_models(settings, size)
            models.append(model_set)
            for pct in settings.changed:
                for pair in PAIRS:
                    for row in measure_pair(model_set, pct, pair, methods, settings):
                        rows.append(row)
                        writer.writerow(_csv_row(row))
                        f.flush()
            write_markdown(settings, models, rows, baseline)
    write_markdown(settings, models, rows, baseline)
    return rows


def measure_pair(
    model_set: ModelSet, pct: float, pair: str, methods: Iterable[Method], settings: BenchSettings
) -> list[Row]:
    """Every method plus the sparse ideal on v1 -> v2(``pct``) of one pair."""
    old, new = model_set.v1.file(pair), model_set.v2[pct].file(pair)
    new_sha256 = sha256_file(new)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="work-", dir=settings.out) as work:
        for method in methods:
            logger.info("%s %s %g%%: %s", model_set.label, pair, pct, method.name)
            row = measure(method, old, new, new_sha256, Path(work), settings)
            row.model, row.pair, row.changed_pct = model_set.label, pair, pct
            logger.info(
                "  -> %s, %s, diff %s s, apply %s s, apply RSS %s",
                row.status,
                _bytes(row.payload_bytes),
                _secs(row.diff_s),
                _secs(row.apply_s),
                _bytes(row.apply_rss_bytes),
            )
            rows.append(row)
    start = time.perf_counter()
    external_only = new.name.endswith(".data")
    payload, note = sparse_ideal(model_set.v1.model(pair), model_set.v2[pct].model(pair), external_only=external_only)
    seconds = time.perf_counter() - start
    rows.append(
        Row(model_set.label, pair, pct, SPARSE_IDEAL, "ok", _size(old), _size(new), payload, seconds, note=note)
    )
    return rows


def _csv_row(row: Row) -> dict[str, object]:
    values = dataclasses.asdict(row)
    return {key: ("" if value is None else value) for key, value in values.items()}


_INT_FIELDS: Final = frozenset({"old_bytes", "new_bytes", "payload_bytes", "diff_rss_bytes", "apply_rss_bytes"})
_FLOAT_FIELDS: Final = frozenset({"changed_pct", "diff_s", "apply_s"})


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``delta.csv`` (empty cells become None)."""
    rows: list[Row] = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            values: dict[str, Any] = dict(record)
            for name in _INT_FIELDS | _FLOAT_FIELDS:
                text = values[name]
                values[name] = None if text == "" else (int(text) if name in _INT_FIELDS else float(text))
            rows.append(Row(**values))
    return rows


def report_only(settings: BenchSettings) -> Path:
    """Rewrite ``delta.md`` from the ``delta.csv`` and models of a previous (possibly unfinished) run."""
    rows = read_rows(settings.out / "delta.csv")
    measured = {row.model for row in rows}
    models = [m for m in (cached_models(settings, size) for size in settings.sizes) if m and m.label in measured]
    return write_markdown(settings, models, rows, python_baseline_rss(settings))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    """One line of the targets table."""

    target: str
    model: str
    measured: str
    goal: str
    result: str  # "met", "not met" or "n/a"


class _Index:
    """Look-ups into the rows by (model, pair, change, method); only verified or ideal rows count."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.rows = {(r.model, r.pair, r.changed_pct, r.method): r for r in rows}

    def get(self, model: str, pair: str, pct: float, method: str) -> Row | None:
        row = self.rows.get((model, pair, pct, method))
        if row is None or row.status != "ok" or row.payload_bytes is None:
            return None
        return row if row.verified == "yes" or row.method == SPARSE_IDEAL else None

    def best(self, model: str, pair: str, pct: float, methods: Callable[[str], bool]) -> Row | None:
        found = [self.get(model, pair, pct, name) for (m, p, c, name) in self.rows if (m, p, c) == (model, pair, pct)]
        candidates = [row for row in found if row is not None and methods(row.method)]
        return min(candidates, key=lambda row: row.payload_bytes or 0, default=None)


def _is_generic(name: str) -> bool:
    return name not in (TENSOR, SPARSE_IDEAL)


def compute_targets(models: Sequence[ModelSet], rows: Sequence[Row], settings: BenchSettings) -> list[Target]:
    """The target ratios of the brief, per model size (and per change where the target says so)."""
    index = _Index(rows)
    targets: list[Target] = []
    for model_set in models:
        m = model_set.label
        if 5.0 in settings.changed:
            tensor = index.get(m, "int8-rows", 5.0, TENSOR)
            int8_targets = (
                ("int8 5%: best generic on quantize_dynamic pair / tensor on ours",
                 index.best(m, "int8-qdyn", 5.0, _is_generic), tensor, 8.0, True),
                ("int8 5%: full zstd -19 of our int8 / tensor",
                 index.get(m, "int8-rows", 5.0, FULL_ZSTD19), tensor, 12.0, True),
                ("int8 5%: tensor / best generic on our int8 pair",
                 tensor, index.best(m, "int8-rows", 5.0, _is_generic), 0.95, False),
                ("int8 5%: tensor / sparse ideal", tensor, index.get(m, "int8-rows", 5.0, SPARSE_IDEAL), 1.1, False),
            )  # fmt: skip
            targets += [_ratio_target(name, m, num, den, limit, up) for name, num, den, limit, up in int8_targets]
        else:
            targets.append(Target("int8 targets (at 5% rows)", m, "run with --changed including 5", "", "n/a"))
        for pct in settings.changed:
            name = f"fp32 {pct:g}%: tensor / best of bsdiff4, HDiffPatch, patch-from"
            best = index.best(m, "fp32", pct, PATCH_LIKE.__contains__)
            targets.append(_ratio_target(name, m, index.get(m, "fp32", pct, TENSOR), best, 0.95, False))
        targets += [_speed_target(index, m, pct) for pct in settings.changed]
        if model_set.config.embedding_bytes >= BIG_MODEL:
            for codec in (TENSOR, EDGEREC_PREFIX + "full"):
                targets += [_rss_target(index, m, pair, codec, settings.changed) for pair in PAIRS]
    return targets


def _ratio_target(name: str, model: str, num: Row | None, den: Row | None, limit: float, at_least: bool) -> Target:
    """``num / den`` payload bytes against ``>= limit`` (``at_least``) or ``<= limit``."""
    goal = f"{'>=' if at_least else '<='} {limit:g}x"
    if num is None or den is None or not num.payload_bytes or not den.payload_bytes:
        return Target(name, model, "missing data", goal, "n/a")
    value = num.payload_bytes / den.payload_bytes
    text = f"{value:.2f}x ({num.method} {_bytes(num.payload_bytes)} / {den.method} {_bytes(den.payload_bytes)})"
    met = value >= limit if at_least else value <= limit
    return Target(name, model, text, goal, "met" if met else "not met")


def _speed_target(index: _Index, model: str, pct: float) -> Target:
    name, goal = f"fp32 {pct:g}%: diff seconds, bsdiff4 / tensor", ">= 30x"
    bsdiff, tensor = index.get(model, "fp32", pct, "bsdiff4"), index.get(model, "fp32", pct, TENSOR)
    if bsdiff is None or tensor is None or not bsdiff.diff_s or not tensor.diff_s:
        skipped = index.rows.get((model, "fp32", pct, "bsdiff4"))
        why = skipped.note if skipped is not None and skipped.note else "missing data"
        return Target(name, model, why, goal, "n/a")
    value = bsdiff.diff_s / tensor.diff_s
    text = f"{value:.1f}x ({bsdiff.diff_s:.2f} s / {tensor.diff_s:.3f} s)"
    return Target(name, model, text, goal, "met" if value >= 30 else "not met")


def _rss_target(index: _Index, model: str, pair: str, codec: str, changed: Sequence[float]) -> Target:
    name, goal = f"{PAIR_TITLES[pair]}: {codec} apply peak RSS", "<= file + 32 MiB"
    found = [index.get(model, pair, pct, codec) for pct in changed]
    measured = [r for r in found if r is not None and r.apply_rss_bytes is not None]
    if not measured:
        return Target(name, model, "missing data", goal, "n/a")
    worst = max(measured, key=lambda r: (r.apply_rss_bytes or 0) - r.new_bytes)
    over = (worst.apply_rss_bytes or 0) - worst.new_bytes
    text = f"worst {_bytes(worst.apply_rss_bytes)} for a {_bytes(worst.new_bytes)} file ({_signed_mib(over)})"
    if len(measured) < len(changed):
        text += f"; {len(measured)} of {len(changed)} changes measured"
    return Target(name, model, text, goal, "met" if over <= RSS_MARGIN else "not met")


def _bytes(n: float | None) -> str:
    return "" if n is None else format_bytes(n)


def _secs(s: float | None) -> str:
    return "" if s is None else (f"{s:.3f}" if s < 10 else f"{s:.1f}")


def _signed_mib(n: int) -> str:
    return f"{n / 2**20:+.1f} MiB"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _table(header: Sequence[str], lines: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in lines]
    return out


def render_markdown(
    settings: BenchSettings, models: Sequence[ModelSet], rows: Sequence[Row], baseline: int | None
) -> str:
    """``delta.md``: what was run, the targets, payload by change and every measurement."""
    targets = compute_targets(models, rows, settings)
    lines = [
        "# Delta payload benchmark",
        "",
        f"`python -m {MODULE}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores. "
        f"v2 = v1 trained one more day (SparseAdam + Adam) on {settings.day_repeats} impressions per touched row, "
        f"touching X% of each table's rows (Zipf popularity); v1 trained on {settings.train_samples} samples.",
        "",
    ]
    model_lines = [
        (m.label, f"{m.config.num_tables} x {m.config.rows_per_table} x {m.config.embedding_dim}",
         *(_bytes(_size(m.v1.file(pair))) for pair in PAIRS),
         ", ".join(f"{pct:g}%: {n}" for pct, n in m.changed_rows.items()))
        for m in models
    ]  # fmt: skip
    header: tuple[str, ...] = ("model", "tables x rows x dim", "fp32 file", "int8 per-row file",
                               "quantize_dynamic file", "embedding rows changed")  # fmt: skip
    lines += _table(header, model_lines)
    lines += [
        "",
        "Seconds: inside the process for Python tools (imports excluded), wall time for CLI tools. "
        "Apply RSS: peak of a fresh apply process (wait4), interpreter included"
        + (
            f"; a Python worker importing the edgerec codecs peaks at {_bytes(baseline)} doing nothing."
            if baseline
            else "."
        )
        + f" bsdiff-family tools are skipped on files above {_mib(settings.bsdiff_max)}. The fp32 and per-row int8 "
        "pairs compare `model.onnx.data` (tensors under 1 KiB stay in `model.onnx`); quantize_dynamic writes one "
        "`model.onnx`. Timings share a 2-core machine with other work: treat them as indicative.",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ("target", "model", "measured", "goal", "result"),
        ((t.target, t.model, t.measured, t.goal, t.result) for t in targets),
    )
    lines += ["", "## Payload by change", ""]
    pcts = list(dict.fromkeys(r.changed_pct for r in rows))
    cells: dict[tuple[str, str, str], dict[float, str]] = {}
    for r in rows:
        shown = _bytes(r.payload_bytes) if r.status == "ok" else r.status
        cells.setdefault((r.model, PAIR_TITLES[r.pair], r.method), {})[r.changed_pct] = shown
    lines += _table(
        ("model", "pair", "method", *(f"{p:g}%" for p in pcts)),
        ((*key, *(by_pct.get(p, "") for p in pcts)) for key, by_pct in cells.items()),
    )
    lines += ["", "## All measurements", ""]
    header = ("model", "pair", "changed", "method", "status", "payload", "% of new", "diff s", "diff RSS",
              "apply s", "apply RSS", "verified", "note")  # fmt: skip
    body = (
        (r.model, r.pair, f"{r.changed_pct:g}%", r.method, r.status, _bytes(r.payload_bytes),
         f"{100 * r.payload_bytes / r.new_bytes:.2f}" if r.payload_bytes is not None and r.new_bytes else "",
         _secs(r.diff_s), _bytes(r.diff_rss_bytes), _secs(r.apply_s), _bytes(r.apply_rss_bytes), r.verified, r.note)
        for r in rows
    )  # fmt: skip
    lines += _table(header, body)
    return "\n".join(lines) + "\n"


def write_markdown(
    settings: BenchSettings, models: Sequence[ModelSet], rows: Sequence[Row], baseline: int | None
) -> Path:
    """Write ``delta.md`` in the output folder and return its path."""
    path = settings.out / "delta.md"
    path.write_text(render_markdown(settings, models, rows, baseline))
    return path


# --------------------------------------------------------------------------- CLI


def _parse_list(text: str, parse: Callable[[str], float]) -> tuple[float, ...]:
    return tuple(parse(part) for part in text.split(",") if part.strip())


def parse_args(argv: Sequence[str] | None) -> tuple[BenchSettings, bool]:
    """Settings from the command line (``--quick`` changes the defaults, explicit flags win) and ``--report-only``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--sizes", help="fp32 embedding sizes, comma-separated (default 50MB,200MB)")
    parser.add_argument("--changed", help="percents of embedding rows changed in v2 (default 1,5,20)")
    parser.add_argument("--out", type=Path, help="output folder (default bench-out/delta)")
    parser.add_argument("--quick", action="store_true", help="smoke test: one 1 MB model, 5%% changed")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite delta.md from delta.csv of a previous run (same flags)"
    )
    parser.add_argument("--bsdiff-max", help="skip bsdiff4 / bsdiff above this file size (default 64MiB)")
    parser.add_argument("--timeout", type=float, help="seconds allowed per diff or apply (default 1800)")
    parser.add_argument("--seed", type=int, help="seed of the generating process (default 0)")
    parser.add_argument("--train-samples", type=int, help="clicks v1 is trained on (default 50000)")
    parser.add_argument("--day-repeats", type=int, help="v2's impressions per touched row (default 4)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else BenchSettings()
    changes: dict[str, Any] = {}
    if args.sizes:
        changes["sizes"] = tuple(int(s) for s in _parse_list(args.sizes, parse_size))
    if args.changed:
        changes["changed"] = _parse_list(args.changed, float)
    if args.out is not None:
        changes["out"] = args.out
    elif args.quick:
        changes["out"] = Path("bench-out/delta-quick")
    if args.bsdiff_max:
        changes["bsdiff_max"] = parse_size(args.bsdiff_max)
    for name in ("timeout", "seed", "train_samples", "day_repeats"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    settings = dataclasses.replace(base, **changes)
    if any(not 0 < pct <= 100 for pct in settings.changed):
        parser.error("--changed percents must be in (0, 100]")
    return settings, args.report_only


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``--worker ...`` runs one measured operation (used by the benchmark itself)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [WORKER_FLAG]:
        return worker_main(args[1:])
    settings, only_report = parse_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgerec").setLevel(logging.INFO)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the ONNX exporter's passes log every step
    if only_report:
        report_only(settings)
    else:
        run(settings)
    print((settings.out / "delta.md").read_text())
    print(f"wrote {settings.out / 'delta.csv'} and {settings.out / 'delta.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
