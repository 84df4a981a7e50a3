"""Reads a model's input and output signature from its ONNX graph, for the manifest."""

from __future__ import annotations

from pathlib import Path

from edgerec.errors import PublishError
from edgerec.manifest import TensorSpec


def read_signature(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an ONNX model; dynamic dimensions become -1."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise PublishError(f"{value.name!r} is not a tensor; only tensor inputs and outputs are supported")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(name=value.name, dtype=dtype, shape=dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise PublishError(f"{model_path} declares no inputs or no outputs")
    return inputs, outputs
