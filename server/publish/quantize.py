"""Per-row int8 quantization of embedding tables by ONNX graph editing.

Each ``Gather`` whose data is a 2-D float32 initializer (an embedding table) is
replaced by ``Gather`` over an int8 table, ``Gather`` over a float32 ``[rows, 1]``
scale column, ``Cast`` and ``Mul``: only the looked-up rows are dequantized. The
scale of a row is ``max|row| / 127`` (0 for an all-zero row), so a row's int8
bytes and scale depend on that row alone: rows a model update leaves untouched
keep identical bytes. Other layers stay float32.
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
"""Name suffix of the float32 ``[rows, 1]`` per-row scales of ``<table>``."""

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


def quantize_rows(table: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric per-row int8 of a ``[rows, dim]`` table: ``(int8 [rows, dim], scale float32 [rows, 1])``.

    ``table[r] ~= q[r] * scale[r]`` with ``scale[r] = max|table[r]| / 127``; an
    all-zero row gets scale 0 and zeros. Each output row depends only on its input row.
    """
    if table.ndim != 2 or table.dtype != np.float32:
        raise ValueError(f"expected a 2-D float32 table, got {table.dtype} {table.shape}")
    if not np.isfinite(table).all():
        raise PublishError("embedding table holds NaN or infinite values: cannot quantize")
    scale = np.max(np.abs(table), axis=1, keepdims=True) / np.float32(_QMAX)
    divisor = np.where(scale > 0, scale, np.float32(1))
    quantized = np.clip(np.rint(table / divisor), -_QMAX, _QMAX).astype(np.int8)
    return quantized, scale.astype(np.float32)


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
    for table in tables.values():
        quantized, scale = quantize_rows(numpy_helper.to_array(initializers[table.name]))
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
        rewritten.extend([node] if lookup is None else _dequantizing_lookup(node, lookup, used))
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


def _dequantizing_lookup(node: onnx.NodeProto, table: _Table, used: set[str]) -> list[onnx.NodeProto]:
    """Gather(int8 rows) and Gather(scales) -> Cast -> Mul, writing the original output name."""
    indices, output = node.input[1], node.output[0]
    base = node.name or output
    rows, scales, dequantized = (_fresh(output + suffix, used) for suffix in ("_q", "_s", "_dq"))
    return [
        helper.make_node("Gather", [table.quantized, indices], [rows], name=_fresh(base + "_q", used)),
        helper.make_node("Gather", [table.scale, indices], [scales], name=_fresh(base + "_s", used)),
        helper.make_node("Cast", [rows], [dequantized], name=_fresh(base + "_cast", used), to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [dequantized, scales], [output], name=_fresh(base + "_mul", used)),
    ]


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
