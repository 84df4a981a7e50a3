"""onnxruntime: the default runtime on devices and for server fallback inference.

Session options, chosen by measuring the reference models (numbers in ``docs/performance.md``):

* one intra-op thread: fastest for small recommendation models at batch 1;
* EXTENDED graph optimization: portable across CPUs (ALL may bake in hardware-specific
  layouts), so an optimized model saved on one device runs on any;
* external data stays memory-mapped (onnxruntime's default): loading reads no weights,
  and an embedding row becomes resident when a lookup first touches it. Reading the
  weights into memory instead (model bytes) made loading slow and doubled its memory;
  the CPU memory arena and weight prepacking barely changed RSS.

With ``cache_dir``, the EXTENDED-optimized model is saved there once (graph plus its own
``.data`` file, under a key naming the artifact's bytes, the onnxruntime version and the
level) and later loads read it with optimizations off, skipping graph optimization.
Each entry carries a digest record (``digests.json``: the artifact key it was made from and
the size and sha256 of every file), written with the files before the entry is renamed into
place; a load checks the entry against it and rebuilds an entry that differs or has no record
from the (verified) artifact, so a swapped cache file never runs. Entries are private (0700
folder, 0600 files). A cache that cannot be written or read is logged and bypassed, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgerec.errors import InvalidInputError, ModelRuntimeError
from edgerec.fsutil import fsync_dir
from edgerec.hashing import sha256_file
from edgerec.runtimes.base import flat_scores

__all__ = ["OPTIMIZATION_LEVEL", "OnnxRunner", "cache_key_of_files"]

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVEL: Final = "extended"
_CACHED_MODEL: Final = "model.onnx"
_CACHED_DATA: Final = "model.onnx.data"
_DIGEST_RECORD: Final = "digests.json"
_MAX_RECORD_BYTES: Final = 64 * 1024
_EXTERNAL_MIN_BYTES: Final = 1024


# onnxruntime's message for a Gather index outside its table.
_GATHER_OUT_OF_RANGE = re.compile(
    r"indices element out of data bounds, idx=(-?\d+) must be within the inclusive range \[(-?\d+),(-?\d+)\]"
)


def run_error(exc: Exception, inputs: Mapping[str, np.ndarray]) -> InvalidInputError | ModelRuntimeError:
    """The typed error of a failed run of ``inputs``: the request's fault or the model's.

    The request's fault (InvalidInputError) only when onnxruntime refused an embedding id that the
    request itself carries, outside the table it was looked up in: the caller's mistake, which must
    count against neither the model (no rollback) nor the server. Everything else, including an
    index the model computed itself from valid inputs, is the model's (ModelRuntimeError).
    """
    match = _GATHER_OUT_OF_RANGE.search(str(exc))
    if match is not None:
        index, low, high = (int(g) for g in match.groups())
        for name, array in inputs.items():
            if array.dtype.kind in "iu" and bool((np.asarray(array) == index).any()):
                return InvalidInputError(f"input {name!r} holds id {index}, outside the model's table [{low}, {high}]")
    return ModelRuntimeError(f"onnxruntime failed to run: {exc}")


class OnnxRunner:
    """An onnxruntime session on the CPU, loaded once.

    ``cache_dir`` turns on the optimized-model cache (see the module doc); ``cache_key``
    names the artifact's bytes (a device passes the manifest's artifact digest), else it is
    the sha256 of the model file and of its ``.data`` file. After loading, ``optimized_from_cache``
    tells whether the cached optimized model was used. Raises :class:`ModelRuntimeError`
    when the model cannot be loaded.
    """

    runtime: Final = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 1,
        cache_dir: Path | None = None,
        cache_key: str | None = None,
    ) -> None:
        import onnxruntime as ort  # deferred: the core imports without a runtime installed

        self.model_path = Path(model_path)
        self.optimized_from_cache = False
        self.cache_path: Path | None = None
        session = None
        if cache_dir is not None:
            try:
                artifact_key = cache_key or cache_key_of_files(self.model_path)
                entry = Path(cache_dir) / cache_entry_name(artifact_key, ort.__version__)
                self.cache_path = entry / _CACHED_MODEL
                session = self._cached_session(ort, threads, artifact_key)
            except (OSError, ModelRuntimeError) as exc:
                logger.warning("optimized-model cache bypassed for %s: %s", self.model_path, exc)
        if session is None:
            session = _session(ort, self.model_path, _options(ort, threads, optimize=True))
        self._session = session
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        self.input_names: list[str] = [i.name for i in self._session.get_inputs()]
        self._first = self.output_names[:1]
        # score() calls the session's C++ run directly, without the Python wrapper's second validation of
        # inputs the caller already checked (a few microseconds per call); another layout uses the public run.
        native = getattr(self._session, "_sess", None)
        self._session_run: Callable[..., list[np.ndarray]] = (
            native.run if native is not None and hasattr(native, "run") else self._session.run
        )

    def _cached_session(self, ort: Any, threads: int, artifact_key: str) -> Any:
        """A session on the cached optimized model, saving it first if missing; None to load the original.

        An entry that does not match its digest record (or has none) is removed and saved again.
        """
        assert self.cache_path is not None
        entry = self.cache_path.parent
        record = _DigestRecord(artifact_key, ort.__version__)
        if entry.is_symlink() or entry.exists():
            problem = record.check(entry)
            if problem is not None:
                logger.warning("rebuilding the optimized model %s from %s: %s", entry, self.model_path, problem)
                _remove(entry)
        if not entry.exists() and not _save_optimized(ort, self.model_path, self.cache_path, threads, record):
            # Another process won the race to save it: its entry is checked like any other before it runs.
            problem = record.check(entry)
            if problem is not None:
                raise ModelRuntimeError(f"optimized model {entry} differs from its digest record: {problem}")
        try:
            session = _session(ort, self.cache_path, _options(ort, threads, optimize=False))
        except ModelRuntimeError as exc:  # a damaged cache entry: drop it, the next load rebuilds it
            logger.warning("dropping unreadable cached model %s: %s", self.cache_path, exc)
            shutil.rmtree(self.cache_path.parent, ignore_errors=True)
            return None
        self.optimized_from_cache = True
        return session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self._session.run(self.output_names, dict(inputs))
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise run_error(exc, inputs) from exc
        return dict(zip(self.output_names, outputs, strict=True))

    def score(self, feeds: dict[str, np.ndarray], run_options: Any = None) -> np.ndarray:
        """The first output as flat float32 scores, for ``feeds`` already checked against the signature.

        ``run_options`` (from :meth:`run_options`) can terminate a running call. Raises
        :class:`InvalidInputError` when onnxruntime refuses the input values (see :func:`run_error`),
        :class:`ModelRuntimeError` when the run fails otherwise, :class:`NonFiniteScoresError` on NaN or inf.
        """
        try:
            output = self._session_run(self._first, feeds, run_options)[0]
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise run_error(exc, feeds) from exc
        return flat_scores(output)

    def run_options(self) -> Any:
        """A fresh ``onnxruntime.RunOptions`` for :meth:`score`: set ``terminate`` to stop the call."""
        import onnxruntime as ort

        return ort.RunOptions()

    def describe(self) -> dict[str, str]:
        """What runs: runtime, model file and whether the cached optimized model is used."""
        return {
            "runtime": self.runtime,
            "model": str(self.model_path),
            "optimization": OPTIMIZATION_LEVEL,
            "optimized_cache": str(self.cache_path) if self.optimized_from_cache else "off",
        }


def cache_key_of_files(model_path: Path) -> str:
    """sha256 over the model file and its ``<name>.data`` file (when present)."""
    digest = hashlib.sha256()
    for path in (model_path, model_path.with_name(model_path.name + ".data")):
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def cache_entry_name(artifact_key: str, ort_version: str) -> str:
    """The cache entry of an artifact's optimized model under one onnxruntime release."""
    text = f"{artifact_key}\0onnxruntime {ort_version}\0{OPTIMIZATION_LEVEL}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _options(ort: Any, threads: int, *, optimize: bool) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return options


def _session(ort: Any, path: Path, options: Any) -> Any:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelRuntimeError(f"onnxruntime cannot load {path}: {exc}") from exc


def _save_optimized(ort: Any, model_path: Path, target: Path, threads: int, record: _DigestRecord) -> bool:
    """Write the EXTENDED-optimized model to ``target`` (+ ``.data``) and its digest record atomically.

    Everything is written and made durable in a private temp folder, which is then renamed into place.
    False when a concurrent writer's entry was already in place (this one is discarded).
    """
    target.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".optimizing-", dir=target.parent.parent))
    try:
        options = _options(ort, threads, optimize=True)
        options.optimized_model_filepath = str(staging / _CACHED_MODEL)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", _CACHED_DATA)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES)
        )
        _session(ort, model_path, options)
        record.write(staging)
        try:
            os.rename(staging, target.parent)
        except OSError:
            if not target.parent.exists():  # not a concurrent writer that won the race
                raise
            return False
        fsync_dir(target.parent.parent)
        logger.info("saved the optimized model of %s to %s", model_path, target)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _DigestRecord:
    """What a cache entry must hold: made from ``artifact_key`` by onnxruntime ``ort_version``, files by sha256."""

    def __init__(self, artifact_key: str, ort_version: str) -> None:
        self.header = {"artifact": artifact_key, "onnxruntime": ort_version, "optimization": OPTIMIZATION_LEVEL}

    def write(self, folder: Path) -> None:
        """Make ``folder``'s files private and durable, then record their digests beside them (durably too)."""
        files: dict[str, dict[str, object]] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.is_symlink():
                raise ModelRuntimeError(f"onnxruntime wrote an unexpected {path.name!r} into the optimized model")
            path.chmod(0o600)
            with path.open("rb") as f:
                os.fsync(f.fileno())
            files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        data = json.dumps({**self.header, "files": files}, sort_keys=True).encode()
        fd = os.open(folder / _DIGEST_RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(folder)

    def check(self, folder: Path) -> str | None:
        """None when ``folder`` holds exactly the recorded files with their sizes and sha256, else what differs."""
        if folder.is_symlink() or not folder.is_dir():
            return "it is not a folder"
        try:
            with (folder / _DIGEST_RECORD).open("rb") as f:
                raw = f.read(_MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return "it has no digest record"
        if len(raw) > _MAX_RECORD_BYTES:
            return "its digest record is too large"
        try:
            recorded = json.loads(raw)
            files = recorded["files"]
            expected = {str(name): (int(f["size"]), str(f["sha256"])) for name, f in files.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return f"its digest record is unreadable: {exc}"
        if any(recorded.get(k) != v for k, v in self.header.items()):
            return "its digest record names another artifact or onnxruntime release"
        if _CACHED_MODEL not in expected:
            return "its digest record lists no model file"
        present = {path.name for path in folder.iterdir()} - {_DIGEST_RECORD}
        if present != set(expected):
            return f"it holds {sorted(present)}, its digest record lists {sorted(expected)}"
        for name, (size, digest) in expected.items():
            path = folder / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size != size or sha256_file(path) != digest:
                return f"{name} differs from its digest record"
        return None


def _remove(path: Path) -> None:
    """Remove a cache entry: a folder with its files, or whatever else took its name (never a link's target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
