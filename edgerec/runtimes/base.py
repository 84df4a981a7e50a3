"""The interface every runtime implements."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Protocol

import numpy as np

from edgerec.errors import NonFiniteScoresError

__all__ = ["ModelRunner", "ScoringRunner", "TerminateFlag", "flat_scores"]


class ModelRunner(Protocol):
    """A loaded model: ``run`` takes arrays by input name and returns arrays by output name."""

    output_names: list[str]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class ScoringRunner(ModelRunner, Protocol):
    """A runner with the device's hot path: ``score`` returns the first output only, as checked scores.

    ``feeds`` must already match the model's signature (the caller checked them against the
    manifest): runners may skip their own validation. ``run_options`` comes from
    :meth:`run_options`; setting its ``terminate`` to True asks a running call to stop (runtimes
    that cannot stop a call ignore it).
    """

    def score(self, feeds: dict[str, np.ndarray], run_options: Any = None) -> np.ndarray: ...

    def run_options(self) -> Any: ...

    def describe(self) -> dict[str, str]: ...


class TerminateFlag:
    """Run options of a runtime that cannot stop a running call: ``terminate`` is recorded, nothing more."""

    __slots__ = ("terminate",)

    def __init__(self) -> None:
        self.terminate = False


_FLOAT32: Final = np.dtype(np.float32)


def flat_scores(output: np.ndarray, _float32: np.dtype[Any] = _FLOAT32, _isfinite: Any = math.isfinite) -> np.ndarray:
    """``output`` as flat float32 scores; :class:`NonFiniteScoresError` when any is NaN or inf.

    On the device's hot path: identity checks and Python's ``isfinite`` beat numpy's per-call overhead on
    the few scores of a recommendation (the defaults bind them once; callers pass ``output`` only).
    """
    scores = output.ravel() if output.dtype is _float32 else np.asarray(output, dtype=np.float32).ravel()
    size = scores.size
    if size == 1:
        finite = _isfinite(scores.item())
    elif size <= 32:
        finite = all(map(_isfinite, scores.tolist()))
    else:
        finite = bool(np.isfinite(scores).all())
    if not finite:
        raise NonFiniteScoresError("model returned non-finite scores")
    return scores
