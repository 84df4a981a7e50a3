"""The active version as the predict path sees it: loaded, warmed up, with a quick input check.

Also :class:`Prediction`, the answer ``EdgeClient.predict`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerec import tensors
from edgerec.device.artifacts import LoadedArtifact, open_artifact
from edgerec.device.cache import CacheKey, request_key, row_keys, signature_key
from edgerec.device.policy import FallbackReason, Source
from edgerec.device.storage import InstalledVersion
from edgerec.errors import EdgerecError, ModelRuntimeError
from edgerec.runtimes import ScoringRunner

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Prediction:
    """Scores for a request and where they came from.

    Slotted and not frozen: a frozen dataclass sets each field through ``object.__setattr__``, which
    tripled the cost of making one on the cache-hit path.
    """

    scores: np.ndarray
    source: Source  # cache, local, server or default (a str enum: compares equal to "local" etc.)
    version: int
    latency_s: float
    # Why the local model did not answer: the code's value and a detail; None when it did.
    fallback_reason: str | None = None
    fallback: FallbackReason | None = None
    # With row caching (EdgeClient's cache_rows): rows answered from the cache; ``source`` answered the others.
    cached_rows: int = 0


class LocalModel:
    """The active version, loaded with its artifact's runtime (see :mod:`edgerec.device.artifacts`) and verified."""

    def __init__(self, installed: InstalledVersion, threads: int, cache_dir: Path | None) -> None:
        self.installed = installed
        self.version = installed.version
        self.loaded: LoadedArtifact = open_artifact(
            installed.manifest,
            installed.artifact,
            installed.directory,
            threads=threads,
            cache_dir=cache_dir,
            warm_up=False,  # _warm_up below runs the hot path's own call instead
        )
        runner = self.loaded.runner
        if not callable(getattr(runner, "score", None)) or not callable(getattr(runner, "run_options", None)):
            raise ModelRuntimeError(f"the {self.loaded.runtime} runner has no score(): cannot predict with it")
        self.runner: ScoringRunner = runner  # type: ignore[assignment]  # checked just above
        # Bound once: predict calls it directly (no attribute chain on the hot path).
        self.score: Callable[..., np.ndarray] = self.runner.score
        self.run_options: Callable[[], Any] = self.runner.run_options
        self.input_specs = [(s.name, s.dtype, list(s.shape)) for s in installed.manifest.inputs]
        # (name, dtype, batched, shape to match: the dimensions after the batch, or the whole shape) for the
        # quick input check; None when some dimension other than the batch is free (the full check runs).
        self._quick: list[tuple[str, np.dtype[Any], bool, tuple[int, ...]]] | None = []
        for name, dtype, shape in self.input_specs:
            batched = bool(shape) and shape[0] < 0
            want = tuple(shape[1:] if batched else shape)
            if any(d < 0 for d in want):
                self._quick = None
                break
            self._quick.append((name, np.dtype(dtype), batched, want))
        self._warm_up()

    def cache_key(self, checked: dict[str, np.ndarray], rows: int) -> CacheKey:
        """The prediction-cache key of inputs :meth:`check` returned."""
        if self._quick is None:  # a free dimension besides the batch: the shapes are part of the key
            return request_key(self.version, checked)
        return signature_key(self.version, rows, checked)

    def row_keys(self, checked: dict[str, np.ndarray], rows: int) -> list[CacheKey] | None:
        """A cache key per row of inputs :meth:`check` returned; None when rows cannot be told apart.

        That is when a dimension besides the batch is free, or no input has the batch dimension.
        """
        if self._quick is None or not any(batched for _, _, batched, _ in self._quick):
            return None
        return row_keys(self.version, checked, [batched for _, _, batched, _ in self._quick], rows)

    def take_rows(self, checked: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
        """The given rows of checked inputs (inputs without the batch dimension as they are)."""
        assert self._quick is not None, "only for models whose row_keys are not None"
        return {
            name: array[rows] if batched else array
            for (name, array), (_, _, batched, _) in zip(checked.items(), self._quick, strict=True)
        }

    def _warm_up(self) -> None:
        """One run on zeros (batch 1), so the first real prediction does not pay onnxruntime's first-run cost."""
        zeros = {
            name: np.zeros([d if d >= 0 else 1 for d in shape], dtype=dtype) for name, dtype, shape in self.input_specs
        }
        try:
            self.score(zeros)
        except EdgerecError as exc:
            log.debug("warm-up run failed (the first prediction will tell): %s", exc)

    def check(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The inputs in signature order and their batch size; InvalidInputError naming what is wrong.

        Arrays of the right dtype and shape pass a quick check; anything else goes through
        :func:`edgerec.tensors.check_inputs` (conversions, and its precise errors).
        """
        quick = self._quick
        if quick is not None and len(inputs) == len(quick):
            checked: dict[str, np.ndarray] = {}
            batch = -1
            for name, dtype, batched, want in quick:
                array = inputs.get(name)
                if type(array) is not np.ndarray:
                    break
                found = array.dtype
                if found is not dtype and found != dtype:
                    break
                shape = array.shape
                if batched:
                    if not shape or shape[1:] != want or (batch >= 0 and shape[0] != batch):
                        break
                    batch = shape[0]
                elif shape != want:
                    break
                checked[name] = array
            else:
                return checked, batch if batch > 0 else 1
        checked = tensors.check_inputs(inputs, self.input_specs)
        rows = min((a.shape[0] for a in checked.values() if a.ndim), default=1)
        return checked, max(rows, 1)
