"""onnxruntime: the default runtime on devices and for server fallback inference."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgerec.errors import ModelRuntimeError


class OnnxRunner:
    """An onnxruntime session on the CPU, loaded once.

    ``threads=1`` is fastest for small recommendation models at batch 1 (field notes);
    EXTENDED graph optimization is portable across CPUs.
    """

    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort  # deferred: the core imports without a runtime installed

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelRuntimeError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self._session.run(self.output_names, dict(inputs))
        except Exception as exc:
            raise ModelRuntimeError(f"onnxruntime failed to run: {exc}") from exc
        return dict(zip(self.output_names, outputs, strict=True))
