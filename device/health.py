"""Health check: a loaded model must reproduce its manifest's golden cases before it is trusted.

Sync runs it on a staged version before the switch (:func:`health_check`); predict runs it on the
active model before a half-open breaker lets requests through again (:func:`check_golden`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgerec import tensors
from edgerec.device.artifacts import open_artifact
from edgerec.errors import HealthCheckError
from edgerec.manifest import Artifact, Manifest
from edgerec.runtimes import ModelRunner


def health_check(version_dir: Path, manifest: Manifest, artifact: Artifact) -> None:
    """Load a staged artifact with its runtime and run the manifest's golden cases for its recipe; raise if any is off.

    A manifest without golden cases gets a smoke test: a neutral batch must give finite outputs.
    """
    check_golden(open_artifact(manifest, artifact, version_dir, warm_up=False).runner, manifest, artifact.recipe)


def check_golden(runner: ModelRunner, manifest: Manifest, recipe: str) -> None:
    """Run the manifest's golden cases for ``recipe`` on a loaded runner; HealthCheckError if any is off."""
    cases = [case for case in manifest.golden if case.recipe == recipe]
    if not cases:
        _check_finite(runner.run(neutral_inputs(manifest)))
        return
    for case in cases:
        inputs = {name: tensors.from_proto(t, name=name) for name, t in case.inputs.items()}
        outputs = runner.run(inputs)
        _check_finite(outputs)
        for name, expected_proto in case.outputs.items():
            expected = tensors.from_proto(expected_proto, name=name)
            got = np.asarray(outputs.get(name))
            if got.shape != expected.shape:
                raise HealthCheckError(f"golden output {name!r} has shape {got.shape}, expected {expected.shape}")
            error = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
            if error > case.tolerance:
                raise HealthCheckError(f"golden output {name!r} is off by {error:.3g} (tolerance {case.tolerance:.3g})")


def _check_finite(outputs: Mapping[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            raise HealthCheckError(f"staged model gives non-finite {name!r}")


def neutral_inputs(manifest: Manifest, batch: int = 1) -> dict[str, np.ndarray]:
    """Zeros of the right dtype and shape for every input (dynamic dimensions set to ``batch``)."""
    return {
        spec.name: np.zeros([d if d >= 0 else batch for d in spec.shape], dtype=spec.dtype) for spec in manifest.inputs
    }
