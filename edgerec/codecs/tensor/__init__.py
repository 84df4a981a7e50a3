"""The "tensor" codec: tensor-aware deltas of ONNX files that any device can apply.

Modules: :mod:`.format` (the body: ops, limits, transforms), :mod:`.decode` (apply, device
side: numpy and zstandard only), :mod:`.encode` (make, server side), :mod:`.onnx_layout` and
:mod:`.wire` (where tensors lie in an ONNX file), :mod:`.range_diff` (generic fallback).
"""

from __future__ import annotations

from edgerec.codecs.tensor.codec import TensorCodec

__all__ = ["TensorCodec"]
