"""Model runtimes behind one small interface: load an artifact, run named arrays."""

from edgerec.runtimes.base import ModelRunner
from edgerec.runtimes.litert import LiteRTRunner
from edgerec.runtimes.onnx import OnnxRunner

__all__ = ["LiteRTRunner", "ModelRunner", "OnnxRunner"]
