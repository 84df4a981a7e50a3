"""What a simulated device's hardware does to a model: IEEE floats, or subnormals flushed to zero.

Most phone and desktop CPUs compute with IEEE subnormal numbers; 32-bit ARM NEON units, many DSPs
and NPUs flush them to zero (FTZ/DAZ). A model whose weights are subnormal then computes something
else there, and the SDK's golden cases catch it at install. onnxruntime has no switch that
flushes subnormals on the calling thread, so :class:`FlushToZeroRunner` does what DAZ hardware does
to the artifact's weights (reads every subnormal float32 initializer as zero) and runs that with
onnxruntime; :func:`installs` then runs the SDK's own health check against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgerec.device.health import check_golden, health_check
from edgerec.errors import EdgerecError
from edgerec.manifest import Artifact, Manifest
from edgerec.runtimes import ModelRunner, OnnxRunner

__all__ = ["FLUSH_TO_ZERO", "IEEE", "FlushToZeroRunner", "installs", "scorer"]

IEEE: Final = "ieee"
FLUSH_TO_ZERO: Final = "ftz"
_SMALLEST_NORMAL: Final = np.finfo(np.float32).tiny


class FlushToZeroRunner:
    """An onnxruntime session over ``model_path`` with every subnormal float32 weight read as zero."""

    runtime: Final = "onnxruntime"

    def __init__(self, model_path: Path) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = onnx.load(str(model_path))  # external data comes from beside the file
        for initializer in model.graph.initializer:
            if initializer.data_type != onnx.TensorProto.FLOAT:
                continue
            values = numpy_helper.to_array(initializer)
            subnormal = (values != 0) & (np.abs(values) < _SMALLEST_NORMAL)
            if subnormal.any():
                initializer.CopyFrom(
                    numpy_helper.from_array(np.where(subnormal, 0, values).astype(np.float32), initializer.name)
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session: Any = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, outputs, strict=True))


def scorer(version_dir: Path, artifact: Artifact, hardware: str) -> ModelRunner:
    """A runner of ``artifact`` (files under ``version_dir``) as ``hardware`` computes it."""
    entry = version_dir / artifact.entrypoint
    return FlushToZeroRunner(entry) if hardware == FLUSH_TO_ZERO else OnnxRunner(entry)


def installs(version_dir: Path, manifest: Manifest, artifact: Artifact, hardware: str) -> str:
    """Empty when the SDK's health check passes on ``hardware``, else the error class it raised."""
    try:
        if hardware == FLUSH_TO_ZERO:
            check_golden(FlushToZeroRunner(version_dir / artifact.entrypoint), manifest, artifact.recipe)
        else:
            health_check(version_dir, manifest, artifact)
    except EdgerecError as exc:
        return type(exc).__name__
    return ""
