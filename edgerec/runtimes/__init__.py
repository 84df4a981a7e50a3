"""Model runtimes behind one small interface: load an artifact, run named arrays."""

from edgerec.runtimes.base import ModelRunner, NonFiniteScoresError, ScoringRunner, flat_scores
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
