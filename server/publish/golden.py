"""Golden cases: a few inputs and the exact outputs each artifact gives, for the device's health check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgerec import tensors
from edgerec.manifest import GoldenCase, TensorSpec
from edgerec.runtimes import ModelRunner, OnnxRunner

GOLDEN_ROWS = 4
# The device runs the same artifact with the same runtime; this absorbs CPU-dependent rounding.
DEFAULT_TOLERANCE = 1e-4


def golden_inputs(
    specs: Sequence[TensorSpec], validation: Mapping[str, np.ndarray] | None = None, rows: int = GOLDEN_ROWS
) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of the publisher's validation data, or seeded synthetic inputs.

    Synthetic inputs are standard normal floats and zero integers: id 0 is a valid row of
    any embedding table, so they run on any recommendation model.
    """
    if validation is not None and all(spec.name in validation for spec in specs):
        return {spec.name: np.ascontiguousarray(validation[spec.name][:rows]) for spec in specs}
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [rows if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=dtype)
    return inputs


def golden_cases(
    inputs: Mapping[str, np.ndarray],
    entrypoints: Mapping[str, Path | ModelRunner],
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[GoldenCase]:
    """One case per recipe: ``inputs`` and what that recipe's artifact (ONNX file or runner) outputs for them."""
    cases = []
    for recipe, entrypoint in sorted(entrypoints.items()):
        runner: ModelRunner = OnnxRunner(entrypoint) if isinstance(entrypoint, Path) else entrypoint
        outputs = runner.run(inputs)
        cases.append(
            GoldenCase(
                recipe=recipe,
                inputs={name: tensors.to_proto(a) for name, a in inputs.items()},
                outputs={name: tensors.to_proto(np.asarray(a)) for name, a in outputs.items()},
                tolerance=tolerance,
            )
        )
    return cases
