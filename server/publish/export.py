"""Canonical ONNX artifacts: convert a model to ONNX and save it in a byte-stable layout.

Every artifact is two files: ``<name>`` (the graph, small) and ``<name>.data``
beside it holding, back to back, the bytes of every initializer of at least
:data:`EXTERNAL_DATA_THRESHOLD` bytes. The layout is a pure function of the
model: doc strings and exporter metadata (stack traces, module paths) are
stripped and initializers are sorted by name, so exporting the same source twice
gives identical bytes and two versions of one architecture put each tensor at the
same offset of ``<name>.data``.

torch is imported only when a ``.pt2`` program is converted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model, set_external_data

from edgerec.errors import PublishError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "OUTPUT_NAMES_EXTRA_FILE",
    "canonicalize",
    "data_path",
    "load_onnx",
    "save_canonical",
    "to_onnx",
]

logger = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD: Final = 1024
"""Initializers of at least this many bytes go to ``<name>.data``."""

OUTPUT_NAMES_EXTRA_FILE: Final = "edgerec/output_names.json"
"""``extra_files`` key of a ``.pt2`` archive holding a JSON list of output names."""

_BATCH_DIM: Final = "batch"


def data_path(model_path: Path) -> Path:
    """Where the external data of ``model_path`` lives: ``<name>.data`` beside it."""
    return model_path.with_name(model_path.name + ".data")


def to_onnx(source: Path, out_path: Path, *, output_names: Sequence[str] | None = None) -> Path:
    """Convert ``source`` (a ``.pt2`` torch.export program or an ``.onnx`` file) to a canonical ONNX artifact.

    Writes ``out_path`` and ``<out_path.name>.data`` and returns ``out_path``.
    ``output_names`` renames the outputs of a ``.pt2`` program; without it the
    names stored under :data:`OUTPUT_NAMES_EXTRA_FILE` in the archive are used,
    else the exporter's. Raises :class:`PublishError` for a missing, unreadable or
    unconvertible source.
    """
    if not source.is_file():
        raise PublishError(f"model source {source} does not exist or is not a file")
    suffix = source.suffix.lower()
    start = time.perf_counter()
    if suffix == ".pt2":
        model = _export_program(source, output_names)
    elif suffix == ".onnx":
        if output_names is not None:
            raise PublishError("output_names applies to .pt2 sources only; rename ONNX outputs at the source")
        model = load_onnx(source)
    else:
        raise PublishError(f"unsupported model source {source.name!r}: expected a .pt2 or .onnx file")
    check_dynamic_batch(model.graph, source)
    save_canonical(model, out_path)
    logger.info("exported %s to %s in %.2f s", source, out_path, time.perf_counter() - start)
    return out_path


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data (if any) inlined; :class:`PublishError` if unreadable."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError, ValidationError...
        raise PublishError(f"cannot read ONNX model {path}: {exc}") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise PublishError(f"cannot read ONNX model {path}: it holds no graph")
    return model


def save_canonical(model: onnx.ModelProto, out_path: Path) -> Path:
    """Canonicalise ``model`` and write it to ``out_path`` plus ``<out_path.name>.data``.

    ``model`` is modified: it is canonicalised and its large tensors become
    references into the data file. Both files are written to a temporary folder,
    checked with ``onnx.checker`` and then moved into place (an empty ``.data``
    file is written when no tensor is large enough, so the layout is uniform).
    """
    canonicalize(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        staged = staging / out_path.name
        _write_with_external_data(model, staged)
        try:
            onnx.checker.check_model(str(staged))
        except Exception as exc:
            raise PublishError(f"the ONNX model for {out_path.name} fails onnx.checker: {exc}") from exc
        os.replace(data_path(staged), data_path(out_path))
        os.replace(staged, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path


def canonicalize(model: onnx.ModelProto) -> None:
    """Make ``model``'s bytes independent of how it was produced (in place).

    Strips doc strings and node/value/tensor metadata (exporters store stack
    traces and module paths there), moves large ``Constant`` nodes of the main
    graph into initializers, stores every initializer as ``raw_data`` and sorts
    initializers by name. Model-level ``metadata_props`` are kept.
    """
    model.doc_string = ""
    _hoist_large_constants(model.graph, model.ir_version)
    for graph in _graphs(model):
        graph.doc_string = ""
        del graph.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.doc_string = ""
            del value.metadata_props[:]
        for tensor in graph.initializer:
            _to_raw_data(tensor)
            tensor.doc_string = ""
            del tensor.metadata_props[:]
        graph.initializer.sort(key=lambda tensor: tensor.name)
    for function in model.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    return out


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph nested in node attributes (If, Loop, Scan)."""
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    pending.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    pending.extend(attr.graphs)


def _to_raw_data(tensor: onnx.TensorProto) -> None:
    """Re-encode a tensor held in typed fields (float_data, int64_data...) as raw_data."""
    if tensor.HasField("raw_data") or tensor.data_type in (
        onnx.TensorProto.STRING,
        onnx.TensorProto.UNDEFINED,
    ):
        return
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    array = numpy_helper.to_array(tensor)
    encoded = numpy_helper.from_array(array, tensor.name)
    if encoded.data_type != tensor.data_type:  # e.g. bfloat16 read back as another dtype: keep as is
        return
    tensor.CopyFrom(encoded)


def _hoist_large_constants(graph: onnx.GraphProto, ir_version: int) -> None:
    """Turn main-graph ``Constant`` nodes holding a large tensor into initializers."""
    if ir_version < 4:  # initializers must also be graph inputs before IR 4
        return
    kept: list[onnx.NodeProto] = []
    hoisted: list[onnx.TensorProto] = []
    for node in graph.node:
        value = _large_constant_value(node)
        if value is None:
            kept.append(node)
            continue
        tensor = _copy(value)
        tensor.name = node.output[0]
        _to_raw_data(tensor)
        hoisted.append(tensor)
    if hoisted:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(hoisted)
        logger.debug("moved %d large Constant nodes into initializers", len(hoisted))


def _large_constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name != "value" or attr.type != onnx.AttributeProto.TENSOR:
        return None
    tensor = attr.t
    size = len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()
    return tensor if size >= EXTERNAL_DATA_THRESHOLD else None


def _write_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Write initializers >= the threshold back to back into ``<path.name>.data``, then the graph.

    (``onnx.save_model(save_as_external_data=True)`` appends to an existing data
    file and refuses when a file of that name exists in the *current* directory;
    writing the data file here avoids both.)
    """
    location = data_path(path).name
    offset = 0
    with open(data_path(path), "wb") as data:
        for tensor in model.graph.initializer:
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_DATA_THRESHOLD:
                continue
            length = data.write(tensor.raw_data)
            set_external_data(tensor, location, offset=offset, length=length)
            tensor.ClearField("raw_data")
            offset += length
    onnx.save_model(model, str(path))


def _export_program(source: Path, output_names: Sequence[str] | None) -> onnx.ModelProto:
    """ONNX model of a saved ``torch.export`` program (dynamo exporter, dynamic shapes kept)."""
    import torch

    extra_files = {OUTPUT_NAMES_EXTRA_FILE: ""}
    try:
        program = torch.export.load(str(source), extra_files=extra_files)
    except Exception as exc:  # torch raises RuntimeError, KeyError, zipfile errors...
        raise PublishError(f"cannot read torch.export program {source}: {exc}") from exc
    names = list(output_names) if output_names is not None else _stored_output_names(extra_files, source)
    # The exporter warns once per torchvision operator it cannot register; torchvision is not ours.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own pytree code warns about its own deprecated LeafSpec.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            onnx_program = torch.onnx.export(program, (), dynamo=True, output_names=names, verbose=False)
    except Exception as exc:  # the exporter raises many types (OnnxExporterError, TorchExportError...)
        raise PublishError(f"torch.onnx.export failed for {source}: {exc}") from exc
    if onnx_program is None:
        raise PublishError(f"torch.onnx.export returned no model for {source}")
    model: onnx.ModelProto = onnx_program.model_proto
    _name_batch_dimension(model.graph)
    return model


def _stored_output_names(extra_files: dict[str, str], source: Path) -> list[str] | None:
    raw = extra_files.get(OUTPUT_NAMES_EXTRA_FILE, "")
    if not raw:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PublishError(f"{source}: {OUTPUT_NAMES_EXTRA_FILE} is not JSON: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise PublishError(f"{source}: {OUTPUT_NAMES_EXTRA_FILE} must be a JSON list of strings")
    return names


def check_dynamic_batch(graph: onnx.GraphProto, source: Path) -> None:
    """PublishError unless axis 0 of every input is dynamic: devices and the server run any batch size.

    A program exported with example inputs alone fixes the batch to theirs, and onnxruntime then refuses
    every other batch ("Got invalid dimensions for input ... Expected: 8") deep inside the accuracy gate.
    """
    fixed = [
        f"{value.name} (batch {dims[0].dim_value})"
        for value in graph.input
        if (dims := value.type.tensor_type.shape.dim) and dims[0].HasField("dim_value")
    ]
    if not fixed:
        return
    how = (
        "export with a dynamic batch dimension: batch = torch.export.Dim('batch', min=1); "
        "torch.export.export(model, args, dynamic_shapes={'<input>': {0: batch}, ...})"
        if source.suffix.lower() == ".pt2"
        else "export with a dynamic axis 0 (torch.onnx.export(..., dynamic_axes={'<input>': {0: 'batch'}}))"
    )
    raise PublishError(f"{source.name}: the batch dimension is fixed for {', '.join(fixed)}; {how}")


def _name_batch_dimension(graph: onnx.GraphProto) -> None:
    """Rename the exporter's symbol for axis 0 of the first input (``s41``...) to ``batch`` everywhere."""
    if not graph.input:
        return
    dims = graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_param"):
        return
    symbol = re.compile(rf"\b{re.escape(dims[0].dim_param)}\b")
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = symbol.sub(_BATCH_DIM, dim.dim_param)
