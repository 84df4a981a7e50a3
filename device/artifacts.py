"""Which artifact of a manifest this device runs, and loading it with the right runtime.

A manifest offers one artifact per recipe (``fp32``, ``int8``, ``int4`` for onnxruntime;
``tflite_fp32``, ``tflite_wi8`` for LiteRT, one file per fixed batch size). The device runs
the first recipe of its own preference (its config) whose runtime is installed here:
:func:`available_runtimes` says which are, without importing them, so ``CheckUpdate`` can
announce them and the server plans the same choice (``server/planner.py``).
:func:`open_artifact` loads an installed artifact, warms it up on zeros and says what runs.

Nothing here imports torch, onnx or a runtime at module level.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from edgerec import artifacts
from edgerec.artifacts import DEFAULT_RECIPES
from edgerec.errors import ModelRuntimeError
from edgerec.manifest import Artifact, Manifest, TensorSpec
from edgerec.runtimes import ModelRunner

__all__ = [
    "DEFAULT_RECIPES",
    "LITERT",
    "ONNXRUNTIME",
    "LoadedArtifact",
    "available_runtimes",
    "choose_artifact",
    "open_artifact",
]

log = logging.getLogger(__name__)

ONNXRUNTIME: Final = "onnxruntime"
LITERT: Final = "litert"
_MODULES: Final = {ONNXRUNTIME: "onnxruntime", LITERT: "ai_edge_litert"}


def available_runtimes() -> tuple[str, ...]:
    """The runtimes importable here, in edgerec's order (``onnxruntime`` first)."""
    return tuple(name for name, module in _MODULES.items() if importlib.util.find_spec(module) is not None)


def choose_artifact(
    manifest: Manifest, recipes: Sequence[str] = DEFAULT_RECIPES, runtimes: Sequence[str] | None = None
) -> Artifact:
    """:func:`edgerec.artifacts.choose_artifact` with the runtimes installed here unless ``runtimes`` is given.

    Raises :class:`~edgerec.errors.NoArtifactError` naming what was offered when none fits.
    """
    return artifacts.choose_artifact(manifest, recipes, available_runtimes() if runtimes is None else runtimes)


@dataclass
class LoadedArtifact:
    """An artifact loaded and warmed up: ``run`` it, ``describe`` what runs (for status and telemetry)."""

    recipe: str
    runtime: str
    version_dir: Path
    runner: ModelRunner
    details: dict[str, str] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return self.runner.output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(inputs)

    def describe(self) -> dict[str, str]:
        """Recipe, runtime and the runtime's own details (model files, optimized-model cache, batch sizes)."""
        return {"recipe": self.recipe, "runtime": self.runtime, **self.details}


def open_artifact(
    manifest: Manifest,
    artifact: Artifact,
    version_dir: Path,
    *,
    threads: int = 1,
    cache_dir: Path | None = None,
    warm_up: bool = True,
) -> LoadedArtifact:
    """Load ``artifact`` (installed under ``version_dir``) with its runtime; run it once on zeros.

    onnxruntime artifacts use the optimized-model cache under ``cache_dir`` (keyed by the
    artifact's digest) when given. Raises :class:`ModelRuntimeError` when the runtime is
    missing or the model does not load or run.
    """
    runner: ModelRunner
    details: dict[str, str]
    if artifact.runtime == ONNXRUNTIME:
        from edgerec.runtimes.onnx import OnnxRunner

        onnx_runner = OnnxRunner(
            version_dir / artifact.entrypoint, threads=threads, cache_dir=cache_dir, cache_key=artifact.digest
        )
        runner, details = onnx_runner, onnx_runner.describe()
    elif artifact.runtime == LITERT:
        from edgerec.runtimes.litert import LiteRTBatchRunner

        files = {entry.batch_size: version_dir / entry.path for entry in artifact.fixed_batches}
        if not files:  # one file: its own batch
            entrypoint = version_dir / artifact.entrypoint
            files = {_only_batch(entrypoint): entrypoint}
        litert_runner = LiteRTBatchRunner(
            files,
            threads=threads,
            input_names=[spec.name for spec in manifest.inputs],
            output_names=[spec.name for spec in manifest.outputs],
        )
        runner, details = litert_runner, litert_runner.describe()
        details["batch_sizes"] = ",".join(str(size) for size in litert_runner.batch_sizes)
    else:
        raise ModelRuntimeError(f"artifact {artifact.recipe!r} needs runtime {artifact.runtime!r}, unknown here")
    details.pop("runtime", None)
    loaded = LoadedArtifact(artifact.recipe, artifact.runtime, version_dir, runner, details)
    if warm_up:
        loaded.run(zeros(manifest.inputs))
    log.info("%s version %d runs %s", manifest.model, manifest.version, loaded.describe())
    return loaded


def zeros(specs: Sequence[TensorSpec], rows: int = 1) -> dict[str, np.ndarray]:
    """One batch of zeros for ``specs`` (dynamic dimensions: ``rows`` on axis 0, else 1)."""
    return {
        spec.name: np.zeros(
            [rows if i == 0 and d < 0 else max(int(d), 1) for i, d in enumerate(spec.shape)], np.dtype(spec.dtype)
        )
        for spec in specs
    }


def _only_batch(path: Path) -> int:
    from edgerec.runtimes.litert import LiteRTRunner

    batch = LiteRTRunner(path).batch
    if batch is None:
        raise ModelRuntimeError(f"{path}: LiteRT models with a dynamic batch are not supported; declare fixed_batches")
    return batch
