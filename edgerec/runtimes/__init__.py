"""Model runtimes behind one small interface: load an artifact, run named arrays."""

from edgerec.errors import NonFiniteScoresError
from edgerec.runtimes.base import ModelRunner, ScoringRunner, flat_scores
from edgerec.runtimes.litert import LiteRTBatchRunner, LiteRTRunner
from edgerec.runtimes.onnx import OnnxRunner

__all__ = [
    "LiteRTBatchRunner",
    "LiteRTRunner",
    "ModelRunner",
    "NonFiniteScoresError",
    "OnnxRunner",
    "ScoringRunner",
    "flat_scores",
]
