"""Per-row 4-bit quantization of embedding tables by ONNX graph editing (recipe ``int4``).

Each embedding table ``<t>`` (found like int8's: a 2-D float32 initializer read only by
axis-0 ``Gather``) is replaced by three initializers:

* ``<t>_int4``: uint8 ``[rows, ceil(dim / 2)]``, two 4-bit codes per byte: byte ``j``
  holds element ``j`` in its low nibble and element ``j + ceil(dim / 2)`` in its high one;
* ``<t>_int4_scale``: float16 ``[rows]``; ``<t>_int4_zero``: uint8 ``[rows]`` in ``[0, 15]``.

Row ``r`` decodes as ``(code - zero[r]) * scale[r]``: asymmetric, the offset being
``-zero[r] * scale[r]``. The codes span ``[min(row, 0), max(row, 0)]`` in 15 steps (scale
rounded up to float16), so every value is within half a step. Each row's bytes depend on
that row alone: rows an update leaves untouched keep identical bytes.

A lookup becomes ``Gather(packed) -> BitShift / BitwiseAnd -> Concat -> DequantizeLinear``
(per-row scale and zero point gathered with the same ids, ``axis=0``): only looked-up rows
are unpacked. The float16 scales are cast to float32 by one ``Cast`` per table over
initializers only, which onnxruntime folds when it creates the session (4 B per row of
memory, no per-call work). On the small and large reference presets this unpacking beat
``Cast -> Mul -> Add`` with a float16 offset at batch 1 and 256, and a 256-entry lookup
table (``Cast`` to int32, ``Gather``) at batch 256; the table was a little faster at batch 1
(``docs/performance.md``).
Dense layers stay float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from edgerec.errors import PublishError
from edgerec.server.publish.export import load_onnx, save_canonical

# Shared with the int8 recipe: which tables count as embeddings, and fresh-name bookkeeping.
from edgerec.server.publish.quantize import (
    _all_names,
    _fresh,
    _is_lookup,
    find_embedding_tables,
    scales_rounded_up,
)

__all__ = [
    "PACKED_SUFFIX",
    "SCALE_SUFFIX",
    "ZERO_SUFFIX",
    "dequantize_rows_int4",
    "quantize_embeddings_int4",
    "quantize_int4",
    "quantize_rows_int4",
]

logger = logging.getLogger(__name__)

PACKED_SUFFIX: Final = "_int4"
"""Name suffix of the packed uint8 table that replaces float32 initializer ``<table>``."""
SCALE_SUFFIX: Final = "_int4_scale"
"""Name suffix of the float16 ``[rows]`` per-row scales."""
ZERO_SUFFIX: Final = "_int4_zero"
"""Name suffix of the uint8 ``[rows]`` per-row zero points."""

_LEVELS: Final = 15
_MIN_OPSET: Final = 13  # DequantizeLinear's axis attribute
_BITWISE_AND_OPSET: Final = 18  # before it, the low nibble comes from Mod (slower)
_ONNX_DOMAINS: Final = ("", "ai.onnx")

UInt8Array = npt.NDArray[np.uint8]


def quantize_int4(fp32_model: Path, out_path: Path) -> Path:
    """Write ``out_path`` (+ ``<name>.data``): ``fp32_model`` with its embedding tables in per-row int4.

    Same layout rules as ``quantize_int8``: a model without embedding lookups is written
    unchanged in the canonical layout. Raises :class:`PublishError` for an unreadable
    model, an opset below 13 or non-finite (or float16-overflowing) table values.
    """
    model = load_onnx(fp32_model)
    tables = quantize_embeddings_int4(model)
    if tables:
        logger.info("quantized %d embedding tables of %s to per-row int4", len(tables), fp32_model)
    else:
        logger.info("%s has no embedding Gather over a 2-D float32 initializer: copied unchanged", fp32_model)
    save_canonical(model, out_path)
    return out_path


def quantize_rows_int4(table: npt.NDArray[np.float32]) -> tuple[UInt8Array, npt.NDArray[np.float16], UInt8Array]:
    """Per-row asymmetric 4-bit codes of a ``[rows, dim]`` table: ``(packed, scale, zero)``.

    ``packed`` is uint8 ``[rows, ceil(dim / 2)]`` (see the module doc), ``scale`` float16
    ``[rows]`` and ``zero`` uint8 ``[rows]``. An all-zero row gets scale 0. Each output row
    depends only on its input row.
    """
    if table.ndim != 2 or table.dtype != np.float32:
        raise ValueError(f"expected a 2-D float32 table, got {table.dtype} {table.shape}")
    if not np.isfinite(table).all():
        raise PublishError("embedding table holds NaN or infinite values: cannot quantize")
    low = np.minimum(table.min(axis=1, initial=0.0), 0.0)
    high = np.maximum(table.max(axis=1, initial=0.0), 0.0)
    try:  # each scale rounded up, so 15 steps still span its row
        scale = scales_rounded_up((high - low) / np.float32(_LEVELS), np.float16)
    except OverflowError as exc:
        raise PublishError("an embedding row spans more than float16 scales can hold (|values| > ~1e6)") from exc
    step = scale.astype(np.float32)
    divisor = np.where(step > 0, step, np.float32(1))
    zero = np.clip(np.rint(-low / divisor), 0, _LEVELS)
    codes = np.clip(np.rint(table / divisor[:, None]) + zero[:, None], 0, _LEVELS).astype(np.uint8)
    return _pack(codes), scale.astype(np.float16, copy=False), zero.astype(np.uint8)


def dequantize_rows_int4(
    packed: UInt8Array, scale: npt.NDArray[np.float16], zero: UInt8Array, dim: int
) -> npt.NDArray[np.float32]:
    """The float32 ``[rows, dim]`` table the codes stand for (what the graph computes per lookup)."""
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=1)[:, :dim]
    return ((codes.astype(np.float32) - zero[:, None].astype(np.float32)) * scale.astype(np.float32)[:, None]).astype(
        np.float32
    )


def _pack(codes: UInt8Array) -> UInt8Array:
    half = (codes.shape[1] + 1) // 2
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1))).astype(np.uint8)
    packed = (codes[:, :half] | (codes[:, half:] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed)


@dataclass(frozen=True)
class _Table:
    name: str
    dim: int
    packed: str
    scale: str  # float16 initializer
    scale_fp32: str  # its Cast to float32
    zero: str


@dataclass(frozen=True)
class _Constants:
    """Names of the small shared initializers the lookups use."""

    shift: str
    mask: str
    low_op: str  # "BitwiseAnd" (mask 15) or "Mod" (mask 16)


def quantize_embeddings_int4(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model``'s embedding lookups to per-row int4 in place; return the quantized table names."""
    graph = model.graph
    chosen = find_embedding_tables(model)
    if not chosen:
        return []
    opset = _default_opset(model)
    if opset < _MIN_OPSET:
        raise PublishError(f"int4 needs ONNX opset >= {_MIN_OPSET} (DequantizeLinear axis); the model has {opset}")
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    used = _all_names(model)
    tables: dict[str, _Table] = {}
    replacements: list[onnx.TensorProto] = []
    for name in chosen:
        array = numpy_helper.to_array(initializers[name])
        table = _Table(
            name=name,
            dim=int(array.shape[1]),
            packed=_fresh(name + PACKED_SUFFIX, used),
            scale=_fresh(name + SCALE_SUFFIX, used),
            scale_fp32=_fresh(name + SCALE_SUFFIX + "_fp32", used),
            zero=_fresh(name + ZERO_SUFFIX, used),
        )
        packed, scale, zero = quantize_rows_int4(array)
        replacements += [
            numpy_helper.from_array(packed, table.packed),
            numpy_helper.from_array(scale, table.scale),
            numpy_helper.from_array(zero, table.zero),
        ]
        tables[name] = table
    use_and = opset >= _BITWISE_AND_OPSET
    constants = _Constants(_fresh("int4_shift", used), _fresh("int4_mask", used), "BitwiseAnd" if use_and else "Mod")
    replacements += [
        numpy_helper.from_array(np.array(4, np.uint8), constants.shift),
        numpy_helper.from_array(np.array(15 if use_and else 16, np.uint8), constants.mask),
    ]
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in tables:
            del graph.initializer[index]
    graph.initializer.extend(replacements)

    ranks = _known_ranks(graph)
    rewritten = [
        helper.make_node(
            "Cast", [t.scale], [t.scale_fp32], name=_fresh(t.scale + "_cast", used), to=onnx.TensorProto.FLOAT
        )
        for t in tables.values()
    ]
    for node in graph.node:
        lookup = tables.get(node.input[0]) if _is_lookup(node) else None
        if lookup is None:
            rewritten.append(node)
        else:
            rewritten += _unpacking_lookup(graph, node, lookup, constants, ranks.get(node.input[1]) == 1, used)
    del graph.node[:]
    graph.node.extend(rewritten)
    return chosen


def _unpacking_lookup(
    graph: onnx.GraphProto, node: onnx.NodeProto, table: _Table, constants: _Constants, flat_ids: bool, used: set[str]
) -> list[onnx.NodeProto]:
    """Gather packed bytes, split the nibbles, dequantize per row; writes the original output name.

    ``DequantizeLinear`` takes a 1-D per-row scale, so ids of any rank but 1 are flattened
    first and the result reshaped to ``ids.shape + [dim]``.
    """
    base = node.name or node.output[0]
    out = node.output[0]

    def name(suffix: str) -> str:
        return _fresh(out + suffix, used)

    def make(op: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=_fresh(f"{base}_{op}", used), **attrs)

    nodes: list[onnx.NodeProto] = []
    ids = node.input[1]
    if not flat_ids:
        minus_one = _constant(graph, np.array([-1], np.int64), name("_flat_shape"))
        flat = name("_ids_flat")
        nodes.append(make("Reshape", [ids, minus_one], flat))
        ids = flat
    packed, high, low, codes = name("_packed"), name("_high"), name("_low"), name("_codes")
    nodes += [
        make("Gather", [table.packed, ids], packed),
        make("BitShift", [packed, constants.shift], high, direction="RIGHT"),
        make(constants.low_op, [packed, constants.mask], low),
        make("Concat", [low, high], codes, axis=-1),
    ]
    if table.dim % 2:
        trimmed = name("_trimmed")
        ends = _constant(graph, np.array([table.dim], np.int64), name("_dim"))
        starts = _constant(graph, np.array([0], np.int64), name("_zero"))
        axes = _constant(graph, np.array([-1], np.int64), name("_axis"))
        nodes.append(make("Slice", [codes, starts, ends, axes], trimmed))
        codes = trimmed
    scales, zeros = name("_scale"), name("_zero_point")
    dequantized = out if flat_ids else name("_rows")
    nodes += [
        make("Gather", [table.scale_fp32, ids], scales),
        make("Gather", [table.zero, ids], zeros),
        make("DequantizeLinear", [codes, scales, zeros], dequantized, axis=0),
    ]
    if not flat_ids:
        ids_shape, out_shape = name("_ids_shape"), name("_shape")
        dim = _constant(graph, np.array([table.dim], np.int64), name("_dim"))
        nodes += [
            make("Shape", [node.input[1]], ids_shape),
            make("Concat", [ids_shape, dim], out_shape, axis=0),
            make("Reshape", [dequantized, out_shape], out),
        ]
    return nodes


def _constant(graph: onnx.GraphProto, value: np.ndarray, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in _ONNX_DOMAINS), 0)


def _known_ranks(graph: onnx.GraphProto) -> dict[str, int]:
    """Ranks of the main graph's values whose shape is declared (inputs, value_info, initializers)."""
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks
