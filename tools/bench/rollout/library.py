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

_WARM_UP_CALLS = 20
_LATENCY_CALLS = 200
_LATENCY_REPEATS = 3


@dataclass(frozen=True)
class Latency:
    """Predict latency of a device's answers (seconds)."""

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
        self._latency: dict[tuple[str, str], float] = {}
        self._reference: tuple[ModelRunner, dict[str, np.ndarray], float] | None = None
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

    def median_latency_s(self, digest: str, hardware: str, sample: dict[str, np.ndarray]) -> float:
        """Median batch-1 predict time of an installed artifact, measured once.

        The first artifact measured is the reference. Every later one is timed interleaved with it,
        call for call, and scaled by the reference's first median: a busy machine slows both alike, so
        two versions differ by what their models cost, not by when each happened to be measured.
        """
        key = (digest, hardware)
        with self._lock:
            cached = self._latency.get(key)
            reference = self._reference
        if cached is not None:
            return cached
        row = {name: array[:1] for name, array in sample.items()}
        runner = self.runner(digest, hardware)
        if reference is None:
            measured = _medians([runner], row)[0]
            with self._lock:
                self._reference = (runner, row, measured)
        else:
            reference_runner, reference_row, reference_median = reference
            ours, theirs = _medians([runner, reference_runner], row, reference_row)
            measured = reference_median * ours / theirs
        with self._lock:
            self._latency[key] = measured
        return measured

    def _checked_dir(self, manifest: Manifest, artifact: Artifact) -> Path:
        folder = self._dirs.get(artifact.digest)
        if folder is None:
            folder = self._version_dir(manifest.version)
            verify_files(folder, artifact)
            self._dirs[artifact.digest] = folder
            self._artifacts[artifact.digest] = artifact
        return folder


def _medians(
    runners: list[ModelRunner], row: dict[str, np.ndarray], other_row: dict[str, np.ndarray] | None = None
) -> list[float]:
    """Each runner's median time over the same rounds, calls interleaved (the lowest of a few medians)."""
    rows = [row, *([other_row] if other_row is not None else [])]
    rows += [row] * (len(runners) - len(rows))
    for runner, inputs in zip(runners, rows, strict=True):
        for _ in range(_WARM_UP_CALLS):
            runner.run(inputs)
    best = [float("inf")] * len(runners)
    for _ in range(_LATENCY_REPEATS):
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(_LATENCY_CALLS):
            for index, (runner, inputs) in enumerate(zip(runners, rows, strict=True)):
                start = time.perf_counter()
                runner.run(inputs)
                times[index].append(time.perf_counter() - start)
        best = [min(b, float(np.median(t))) for b, t in zip(best, times, strict=True)]
    return best
