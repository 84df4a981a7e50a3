"""numpy arrays to and from ``edgerec.v1.Tensor``, and checks against a model's signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgerec.errors import InvalidInputError
from edgerec.v1 import tensor_pb2

ALLOWED_DTYPES = frozenset(["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"])
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_RANK = 8


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array as little-endian C-order bytes."""
    if array.dtype.name not in ALLOWED_DTYPES:
        raise InvalidInputError(f"dtype {array.dtype.name} is not supported")
    contiguous = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return tensor_pb2.Tensor(dtype=array.dtype.name, shape=list(array.shape), data=contiguous.tobytes())


def from_proto(tensor: tensor_pb2.Tensor, *, name: str = "tensor", max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decode a Tensor, checking dtype, shape and byte length before touching the data."""
    if tensor.dtype not in ALLOWED_DTYPES:
        raise InvalidInputError(f"{name}: dtype {tensor.dtype!r} is not supported")
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise InvalidInputError(f"{name}: invalid shape {list(shape)}")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = dtype.itemsize
    for d in shape:
        expected *= d
        if expected > max_bytes:
            raise InvalidInputError(f"{name}: shape {list(shape)} exceeds the {max_bytes}-byte limit")
    if len(tensor.data) != expected:
        raise InvalidInputError(
            f"{name}: {len(tensor.data)} bytes of data for shape {list(shape)} {tensor.dtype} ({expected} expected)"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def check_inputs(
    inputs: Mapping[str, np.ndarray], specs: Sequence[tuple[str, str, Sequence[int]]]
) -> dict[str, np.ndarray]:
    """Check named arrays against (name, dtype, shape) specs; -1 in a spec shape is free.

    Returns the inputs in spec order. Raises InvalidInputError naming what is wrong.
    """
    expected_names = [name for name, _, _ in specs]
    missing = [n for n in expected_names if n not in inputs]
    extra = sorted(set(inputs) - set(expected_names))
    if missing or extra:
        raise InvalidInputError(f"inputs must be exactly {expected_names}; missing {missing}, unexpected {extra}")
    checked: dict[str, np.ndarray] = {}
    batch: int | None = None
    for name, dtype, shape in specs:
        array = np.asarray(inputs[name])
        if array.dtype.name != dtype:
            raise InvalidInputError(f"input {name!r} has dtype {array.dtype.name}, model expects {dtype}")
        if array.ndim != len(shape) or any(s >= 0 and s != d for s, d in zip(shape, array.shape, strict=True)):
            raise InvalidInputError(f"input {name!r} has shape {list(array.shape)}, model expects {list(shape)}")
        if array.ndim and shape and shape[0] < 0:
            if batch is not None and array.shape[0] != batch:
                raise InvalidInputError(f"input {name!r} has batch {array.shape[0]}, other inputs have {batch}")
            batch = array.shape[0]
        checked[name] = array
    return checked
