"""Per-row int8 quantization of embedding tables by ONNX graph editing.

Each ``Gather`` whose data is a 2-D float32 initializer (an embedding table) is
replaced by ``Gather`` over an int8 table, ``Gather`` over a float16 ``[rows, 1]``
scale column, a ``Cast`` of each to float32 and ``Mul``: only the looked-up rows
are dequantized. The scale of a row is ``max|row| / 127`` rounded *up* to float16
(so no value is clipped; 0 for an all-zero row) and the codes are
``rint(row / scale)``: a row's int8 bytes and scale depend on that row alone, so
rows a model update leaves untouched keep identical bytes.

Sizes: a row of ``dim`` values costs ``dim + 2`` bytes against ``4 * dim`` in float32
(plus the dense layers); float32 scales would cost two bytes more a row. A float16 scale
is the exact scale times at most ``1 + 2**-11``, far below the int8 step. A table whose
scales overflow float16 (``|values|`` above about 8e6) keeps float32 scales (logged);
every other table uses float16.

Choices measured on the reference presets (numbers in ``docs/performance.md``): casting
the gathered float16 scales per lookup costs about as little as float32 scales; casting
the whole scale column once (folded by onnxruntime at load) saves nothing per call but
adds its float32 copy to RSS and to load time; ``DequantizeLinear`` with per-row scales
needs 1-D scales and flattened ids for the same speed. Dense layers stay float32:
onnxruntime's ``quantize_dynamic`` of ``MatMul``/``Gemm`` (per channel) was slower at
batch 1 (``DynamicQuantizeLinear`` on every call), no faster at batch 256, and the dense
weights are a sliver of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from edgerec.errors import PublishError
from edgerec.server.publish.export import load_onnx, save_canonical

__all__ = ["QUANTIZED_SUFFIX", "SCALE_SUFFIX", "quantize_embeddings", "quantize_int8", "quantize_rows"]

logger = logging.getLogger(__name__)

QUANTIZED_SUFFIX: Final = "_int8"
"""Name suffix of the int8 table that replaces float32 initializer ``<table>``."""
SCALE_SUFFIX: Final = "_scale"
"""Name suffix of the float16 (float32 if float16 overflows) ``[rows, 1]`` per-row scales of ``<table>``."""

_QMAX: Final = 127
_ONNX_DOMAINS: Final = ("", "ai.onnx")


def quantize_int8(fp32_model: Path, out_path: Path) -> Path:
    """Write ``out_path`` (+ ``<name>.data``): ``fp32_model`` with its embedding tables in per-row int8.

    Works on any ONNX model; one without embedding ``Gather`` nodes is written
    unchanged in the canonical layout. Raises :class:`PublishError` if the model
    cannot be read or a table holds non-finite values.
    """
    model = load_onnx(fp32_model)
    tables = quantize_embeddings(model)
    if tables:
        logger.info("quantized %d embedding tables of %s to per-row int8", len(tables), fp32_model)
    else:
        logger.info("%s has no embedding Gather over a 2-D float32 initializer: copied unchanged", fp32_model)
    save_canonical(model, out_path)
    return out_path


ScaleDType = type[np.float16] | type[np.float32]


def quantize_rows(
    table: npt.NDArray[np.float32], scale_dtype: ScaleDType = np.float16
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float16] | npt.NDArray[np.float32]]:
    """Symmetric per-row int8 of a ``[rows, dim]`` table: ``(int8 [rows, dim], scale [rows, 1])``.

    ``table[r] ~= q[r] * scale[r]`` with ``scale[r] = max|table[r]| / 127`` rounded up to
    ``scale_dtype`` (float16 by default); an all-zero row gets scale 0 and zeros. Each
    output row depends only on its input row. Raises :class:`PublishError` for non-finite
    values, and :class:`OverflowError` when a scale does not fit ``scale_dtype``.
    """
    if table.ndim != 2 or table.dtype != np.float32:
        raise ValueError(f"expected a 2-D float32 table, got {table.dtype} {table.shape}")
    if not np.isfinite(table).all():
        raise PublishError("embedding table holds NaN or infinite values: cannot quantize")
    exact = np.max(np.abs(table), axis=1, keepdims=True, initial=0.0) / np.float32(_QMAX)
    scale = scales_rounded_up(exact, scale_dtype)
    step = scale.astype(np.float32)
    divisor = np.where(step > 0, step, np.float32(1))
    quantized = np.clip(np.rint(table / divisor), -_QMAX, _QMAX).astype(np.int8)
    return quantized, scale


def scales_rounded_up(
    values: npt.NDArray[np.float32], dtype: ScaleDType
) -> npt.NDArray[np.float16] | npt.NDArray[np.float32]:
    """``values`` in ``dtype``, each rounded up so that ``127 * scale`` still covers its row."""
    if dtype is np.float32:
        return values.astype(np.float32)
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float16)
    if not np.isfinite(rounded).all():
        raise OverflowError("a per-row scale exceeds the float16 range")
    low = rounded.astype(np.float32) < values
    rounded[low] = np.nextafter(rounded[low], np.float16(np.inf))
    return rounded


def _quantize_table(name: str, table: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], np.ndarray]:
    """float16 scales, or float32 ones (logged) for a table whose scales overflow float16."""
    try:
        return quantize_rows(table)
    except OverflowError:
        logger.warning("embedding table %s has values beyond float16 scales: its scales stay float32", name)
        return quantize_rows(table, np.float32)


@dataclass(frozen=True)
class _Table:
    name: str
    quantized: str
    scale: str


def quantize_embeddings(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model``'s embedding lookups to per-row int8 in place; return the quantized table names.

    A table is quantized once however many ``Gather`` nodes share it. A table
    that anything other than an axis-0 ``Gather`` of the main graph reads (a
    tied output projection, a subgraph) is left float32.
    """
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    chosen = find_embedding_tables(model)
    if not chosen:
        return []

    used = _all_names(model)
    tables = {
        name: _Table(name, _fresh(name + QUANTIZED_SUFFIX, used), _fresh(name + SCALE_SUFFIX, used)) for name in chosen
    }
    replacements: list[onnx.TensorProto] = []
    half_scales: set[str] = set()
    for table in tables.values():
        quantized, scale = _quantize_table(table.name, numpy_helper.to_array(initializers[table.name]))
        if scale.dtype == np.float16:
            half_scales.add(table.name)
        replacements += [
            numpy_helper.from_array(quantized, table.quantized),
            numpy_helper.from_array(scale, table.scale),
        ]
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in tables:
            del graph.initializer[index]
    graph.initializer.extend(replacements)

    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        lookup = tables.get(node.input[0]) if _is_lookup(node) else None
        if lookup is None:
            rewritten.append(node)
        else:
            rewritten += _dequantizing_lookup(node, lookup, lookup.name in half_scales, used)
    del graph.node[:]
    graph.node.extend(rewritten)
    return chosen


def find_embedding_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the 2-D float32 initializers read only by axis-0 ``Gather`` lookups of the main graph."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    candidates = {
        node.input[0]
        for node in graph.node
        if _is_lookup(node)
        and node.input[0] in initializers
        and node.input[0] not in graph_inputs
        and _is_float_matrix(initializers[node.input[0]])
    }
    other_readers = _names_read_outside_lookups(model)
    for name in sorted(candidates & other_readers):
        logger.info("embedding table %s is also read by other nodes: left float32", name)
    return sorted(candidates - other_readers)


def _dequantizing_lookup(
    node: onnx.NodeProto, table: _Table, half_scales: bool, used: set[str]
) -> list[onnx.NodeProto]:
    """Gather(int8 rows) and Gather(scales) -> Cast (both, float16 scales) -> Mul, writing the original output."""
    indices, output = node.input[1], node.output[0]
    base = node.name or output
    rows, scales, dequantized = (_fresh(output + suffix, used) for suffix in ("_q", "_s", "_dq"))
    nodes = [
        helper.make_node("Gather", [table.quantized, indices], [rows], name=_fresh(base + "_q", used)),
        helper.make_node("Gather", [table.scale, indices], [scales], name=_fresh(base + "_s", used)),
        helper.make_node("Cast", [rows], [dequantized], name=_fresh(base + "_cast", used), to=onnx.TensorProto.FLOAT),
    ]
    if half_scales:
        wide = _fresh(output + "_s32", used)
        name = _fresh(base + "_cast_s", used)
        nodes.append(helper.make_node("Cast", [scales], [wide], name=name, to=onnx.TensorProto.FLOAT))
        scales = wide
    nodes.append(helper.make_node("Mul", [dequantized, scales], [output], name=_fresh(base + "_mul", used)))
    return nodes


def _is_lookup(node: onnx.NodeProto) -> bool:
    """An ``ai.onnx`` Gather along axis 0 (an embedding lookup when its data is a table)."""
    if node.op_type != "Gather" or node.domain not in _ONNX_DOMAINS or len(node.input) != 2:
        return False
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    return axis == 0


def _is_float_matrix(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 2


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _names_read_outside_lookups(model: onnx.ModelProto) -> set[str]:
    """Names read by anything but the data input of a main-graph lookup (incl. subgraphs, outputs)."""
    names = {value.name for value in model.graph.output}
    pending: list[tuple[onnx.GraphProto, bool]] = [(model.graph, True)]
    while pending:
        graph, is_main = pending.pop()
        if not is_main:
            names.update(value.name for value in graph.output)
        for node in graph.node:
            skip_data = is_main and _is_lookup(node)
            names.update(name for i, name in enumerate(node.input) if not (skip_data and i == 0))
            pending.extend((sub, False) for sub in _subgraphs(node))
    return names


def _all_names(model: onnx.ModelProto) -> set[str]:
    """Every value and node name in the model, to keep new names unique."""
    names: set[str] = set()
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
            pending.extend(_subgraphs(node))
    return names


def _fresh(name: str, used: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... whichever is unused; the result is marked used."""
    candidate, n = name, 0
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate
