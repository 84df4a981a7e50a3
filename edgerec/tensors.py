"""numpy arrays to and from ``edgerec.v1.Tensor``, and checks against a model's signature."""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from edgerec.errors import InvalidInputError
from edgerec.v1 import tensor_pb2

ALLOWED_DTYPES = frozenset(["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"])
MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_RANK = 8


# Per wire dtype name: the little-endian dtype its bytes are in, and the same dtype in the host's byte order.
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name).newbyteorder("<") for name in ALLOWED_DTYPES}
_HOST_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in ALLOWED_DTYPES}
# The name of a host-order dtype, looked up by the dtype itself: numpy's ``dtype.name`` is slow Python code.
_NAMES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in _HOST_DTYPES.items()}
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def dtype_name(dtype: np.dtype[Any]) -> str:
    """numpy's ``dtype.name`` ("float32" for any byte order), a dict lookup for the usual dtypes."""
    return _NAMES.get(dtype) or dtype.name


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array as little-endian C-order bytes."""
    tensor = tensor_pb2.Tensor()
    fill_proto(tensor, array)
    return tensor


def fill_proto(tensor: tensor_pb2.Tensor, array: np.ndarray) -> None:
    """:func:`to_proto` written into an empty ``tensor`` (e.g. a map entry of a response, without a copy)."""
    name = dtype_name(array.dtype)
    wire = _WIRE_DTYPES.get(name)
    if wire is None:
        raise InvalidInputError(f"dtype {name} is not supported")
    tensor.dtype = name
    tensor.shape.extend(array.shape)
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)  # (0-d arrays come back 1-d: the shape is taken first)
    tensor.data = array.tobytes()


def from_proto(tensor: tensor_pb2.Tensor, *, name: str = "tensor", max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decode a Tensor, checking dtype, shape and byte length before touching the data."""
    wire = _WIRE_DTYPES.get(tensor.dtype)
    if wire is None:
        raise InvalidInputError(f"{name}: dtype {tensor.dtype!r} is not supported")
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or (shape and min(shape) < 0):
        raise InvalidInputError(f"{name}: invalid shape {list(shape)}")
    # Every dimension counts, even beside a zero one: numpy refuses a shape whose other dimensions
    # overflow its index type, and an empty batch of absurd rows is no more valid than a full one.
    extent = wire.itemsize
    for d in shape:
        extent *= max(d, 1)
        if extent > max_bytes:
            raise InvalidInputError(f"{name}: shape {list(shape)} exceeds the {max_bytes}-byte limit")
    expected = 0 if 0 in shape else extent
    data = tensor.data
    if len(data) != expected:
        raise InvalidInputError(
            f"{name}: {len(data)} bytes of data for shape {list(shape)} {tensor.dtype} ({expected} expected)"
        )
    array = np.frombuffer(data, dtype=wire).reshape(shape)
    return array if _LITTLE_ENDIAN_HOST else array.astype(_HOST_DTYPES[tensor.dtype])


def leading_dimension(tensor: tensor_pb2.Tensor) -> int:
    """The first dimension a Tensor declares (its rows; 1 for a scalar), read before any data is decoded."""
    return tensor.shape[0] if tensor.shape else 1


def check_input_names(names: Collection[str], specs: Sequence[tuple[str, str, Sequence[int]]]) -> None:
    """InvalidInputError unless ``names`` are exactly the specs' input names (checkable before decoding)."""
    if len(names) != len(specs) or any(name not in names for name, _, _ in specs):
        expected_names = [name for name, _, _ in specs]
        missing = [n for n in expected_names if n not in names]
        extra = sorted(set(names) - set(expected_names))
        # The names come from the caller: a few of them, cut short, are enough to say what is wrong.
        shown = [n[:64] for n in extra[:8]] + ([f"... {len(extra) - 8} more"] if len(extra) > 8 else [])
        raise InvalidInputError(f"inputs must be exactly {expected_names}; missing {missing}, unexpected {shown}")


def check_inputs(
    inputs: Mapping[str, np.ndarray], specs: Sequence[tuple[str, str, Sequence[int]]]
) -> dict[str, np.ndarray]:
    """Check named arrays against (name, dtype, shape) specs; -1 in a spec shape is free.

    Returns the inputs in spec order. Raises InvalidInputError naming what is wrong.
    """
    check_input_names(inputs, specs)
    checked: dict[str, np.ndarray] = {}
    batch: int | None = None
    for name, dtype, shape in specs:
        array = inputs[name]
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        found = dtype_name(array.dtype)
        if found != dtype:
            raise InvalidInputError(f"input {name!r} has dtype {found}, model expects {dtype}")
        got = array.shape
        if len(got) != len(shape) or any(s >= 0 and s != d for s, d in zip(shape, got, strict=True)):
            raise InvalidInputError(f"input {name!r} has shape {list(got)}, model expects {list(shape)}")
        if got and shape and shape[0] < 0:
            if batch is not None and got[0] != batch:
                raise InvalidInputError(f"input {name!r} has batch {got[0]}, other inputs have {batch}")
            batch = got[0]
        checked[name] = array
    return checked
