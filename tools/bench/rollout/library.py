"""The versions simulated devices install: each version's files checked once, then shared.

A real device downloads the payloads of its plan and builds the files; every device offered the same
signed artifact ends with the same bytes. The simulation keeps one copy, the registry's: each
artifact's files are checked once against the signed manifest (the SDK's
:func:`~edgerec.device.storage.verify_files`), each (artifact, hardware) pair runs the SDK's health
check once, and devices share the runners that score their candidates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec.device.storage import verify_files
from edgerec.errors import EdgerecError
from edgerec.manifest import Artifact, Manifest
from edgerec.runtimes import ModelRunner
from edgerec.tools.bench.rollout.hardware import installs, scorer

__all__ = ["Latency", "VersionDirs", "VersionLibrary"]

VersionDirs = Callable[[int], Path]
"""Where the registry keeps a version's files (``Registry.version_dir`` of one model)."""

_LATENCY_CALLS = 100
_LATENCY_REPEATS = 3


@dataclass(frozen=True)
class Latency:
    """Predict latency of one artifact on one hardware, batch of one row (seconds)."""

    p50_s: float
    p90_s: float
    p99_s: float


class VersionLibrary:
    """Checked files, install outcomes and runners per artifact digest; safe to share between threads."""

    def __init__(self, version_dir: VersionDirs) -> None:
        self._version_dir = version_dir
        self._lock = threading.Lock()
        self._outcomes: dict[tuple[str, str], str] = {}
        self._runners: dict[tuple[str, str], ModelRunner] = {}
        self._latency: dict[tuple[str, str], Latency] = {}
        self._dirs: dict[str, Path] = {}
        self._artifacts: dict[str, Artifact] = {}

    def install(self, manifest: Manifest, artifact: Artifact, hardware: str) -> str:
        """Install ``artifact`` of ``manifest`` on ``hardware``: empty on success, else the error class."""
        key = (artifact.digest, hardware)
        with self._lock:
            if key not in self._outcomes:
                try:
                    folder = self._checked_dir(manifest, artifact)
                except EdgerecError as exc:
                    self._outcomes[key] = type(exc).__name__
                else:
                    self._outcomes[key] = installs(folder, manifest, artifact, hardware)
            return self._outcomes[key]

    def runner(self, digest: str, hardware: str) -> ModelRunner:
        """The runner of an installed artifact (by digest) on ``hardware``."""
        key = (digest, hardware)
        with self._lock:
            if key not in self._runners:
                self._runners[key] = scorer(self._dirs[digest], self._artifacts[digest], hardware)
            return self._runners[key]

    def latency(self, digest: str, hardware: str, sample: dict[str, np.ndarray]) -> Latency:
        """Batch-1 latency of an installed artifact, measured once (the quickest of a few measurements)."""
        key = (digest, hardware)
        with self._lock:
            cached = self._latency.get(key)
        if cached is not None:
            return cached
        runner = self.runner(digest, hardware)
        row = {name: array[:1] for name, array in sample.items()}
        best: Latency | None = None
        for _ in range(_LATENCY_REPEATS):
            times = []
            for _ in range(_LATENCY_CALLS):
                start = time.perf_counter()
                runner.run(row)
                times.append(time.perf_counter() - start)
            p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
            if best is None or p99 < best.p99_s:
                best = Latency(p50, p90, p99)
        assert best is not None
        with self._lock:
            self._latency[key] = best
        return best

    def _checked_dir(self, manifest: Manifest, artifact: Artifact) -> Path:
        folder = self._dirs.get(artifact.digest)
        if folder is None:
            folder = self._version_dir(manifest.version)
            verify_files(folder, artifact)
            self._dirs[artifact.digest] = folder
            self._artifacts[artifact.digest] = artifact
        return folder
