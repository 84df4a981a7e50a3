"""Where each tensor's bytes lie in an ONNX file, read from the protobuf wire format directly.

Server side only (no ``onnx`` package needed either). Two kinds of file:

* ``X.onnx``: a ModelProto; each ``graph.initializer`` with ``raw_data`` has its bytes inline.
* ``X.onnx.data``: external data; its tensors are the ``external_data`` entries
  (location, offset, length) of the initializers of the companion ``X.onnx`` beside it.

Anything else, or a file that does not parse, has no tensors. What is found is only a hint:
the codec diffs the actual bytes of each span, so a wrong layout costs size, never correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from edgerec.codecs.tensor.wire import LEN, VARINT, WireError, iter_fields, packed_varints

logger = logging.getLogger(__name__)

DATA_SUFFIX: Final = ".data"
"""``X.onnx.data`` holds the external data of ``X.onnx``."""

# Field numbers of onnx.proto (ModelProto.graph, GraphProto.initializer, TensorProto.*).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_ENTRY_KEY = 1
_ENTRY_VALUE = 2
_LOCATION_EXTERNAL = 1
_INT64_SIGN = 1 << 63

# Bytes per element of TensorProto.DataType values stored a whole number of bytes per element
# (complex types count one component). Others (strings, 4-bit types) are treated as bytes.
_ELEMENT_SIZES: Final = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 4, 15: 8, 16: 2,
    17: 1, 18: 1, 19: 1, 20: 1,
}  # fmt: skip
_COMPONENTS: Final = {14: 2, 15: 2}


@dataclass(frozen=True)
class TensorSpan:
    """The bytes of one tensor: ``length`` bytes at ``offset`` of the file.

    ``elem_size`` is the width of one stored number (1 when unknown); ``rows`` is the first
    dimension of a tensor of at least two dimensions whose size matches its shape, else None.
    """

    name: str
    data_type: int
    offset: int
    length: int
    elem_size: int
    rows: int | None

    @property
    def end(self) -> int:
        """Offset just past the tensor."""
        return self.offset + self.length

    @property
    def row_bytes(self) -> int | None:
        """Bytes per row, when the tensor has rows."""
        return self.length // self.rows if self.rows else None


@dataclass(frozen=True)
class _Initializer:
    name: str
    data_type: int
    dims: tuple[int, ...]
    raw: tuple[int, int] | None
    external: dict[str, str]
    is_external: bool


def companion_model(path: Path) -> Path | None:
    """The model ``X.onnx`` whose external data ``path`` (``X.onnx.data``) is, or None for other names."""
    if not path.name.endswith(DATA_SUFFIX) or len(path.name) == len(DATA_SUFFIX):
        return None
    return path.with_name(path.name[: -len(DATA_SUFFIX)])


def locate_tensors(path: Path, data: bytes) -> list[TensorSpan]:
    """Tensors whose bytes lie in ``data`` (the contents of ``path``), sorted, non-overlapping."""
    companion = companion_model(path)
    try:
        if companion is not None:
            if not companion.is_file():
                return []
            spans = list(_external_spans(companion.read_bytes(), path.name, len(data)))
        else:
            spans = list(_inline_spans(data))
    except WireError as e:
        logger.debug("%s: no tensor layout (%s)", path, e)
        return []
    return _disjoint(spans)


def _inline_spans(model: bytes) -> Iterator[TensorSpan]:
    for init in _initializers(model):
        if init.raw is not None and not init.is_external:
            start, end = init.raw
            yield _span(init, start, end - start)


def _external_spans(model: bytes, data_name: str, data_size: int) -> Iterator[TensorSpan]:
    external = [init for init in _initializers(model) if init.is_external and "location" in init.external]
    locations = {init.external["location"] for init in external}
    for init in external:
        location = init.external["location"]
        # The companion convention pairs the files; a single location is taken whatever its name.
        if len(locations) > 1 and PurePosixPath(location.replace("\\", "/")).name != data_name:
            continue
        try:
            offset = int(init.external.get("offset", "0"))
            length = int(init.external["length"]) if "length" in init.external else _expected_length(init)
        except ValueError:
            continue
        if length is not None and 0 <= offset and 0 < length <= data_size - offset:
            yield _span(init, offset, length)


def _span(init: _Initializer, offset: int, length: int) -> TensorSpan:
    elem = _ELEMENT_SIZES.get(init.data_type, 1)
    expected = _expected_length(init)
    rows = init.dims[0] if len(init.dims) >= 2 and expected == length and init.dims[0] > 0 else None
    if length % elem:
        elem = 1
    return TensorSpan(init.name, init.data_type, offset, length, elem, rows)


def _expected_length(init: _Initializer) -> int | None:
    if init.data_type not in _ELEMENT_SIZES or any(d < 0 for d in init.dims):
        return None
    count = 1
    for d in init.dims:
        count *= d
    return count * _ELEMENT_SIZES[init.data_type] * _COMPONENTS.get(init.data_type, 1)


def _initializers(model: bytes) -> Iterator[_Initializer]:
    """Every ``graph.initializer`` of a ModelProto; WireError if the bytes do not parse."""
    found_graph = False
    for field in iter_fields(model, 0, len(model)):
        if field.number == _MODEL_GRAPH and field.wire_type == LEN:
            found_graph = True
            for sub in iter_fields(model, field.start, field.end):
                if sub.number == _GRAPH_INITIALIZER and sub.wire_type == LEN:
                    yield _tensor(model, sub.start, sub.end)
    if not found_graph:
        raise WireError("no graph field: not an ONNX model")


def _tensor(model: bytes, start: int, end: int) -> _Initializer:
    name, data_type, dims = "", 0, []
    raw: tuple[int, int] | None = None
    external: dict[str, str] = {}
    is_external = False
    for field in iter_fields(model, start, end):
        if field.number == _TENSOR_DIMS:
            if field.wire_type == VARINT:
                dims.append(field.value)
            elif field.wire_type == LEN:
                dims.extend(packed_varints(model, field.start, field.end))
        elif field.number == _TENSOR_DATA_TYPE and field.wire_type == VARINT:
            data_type = field.value
        elif field.number == _TENSOR_NAME and field.wire_type == LEN:
            name = _text(model, field.start, field.end)
        elif field.number == _TENSOR_RAW_DATA and field.wire_type == LEN:
            raw = (field.start, field.end)
        elif field.number == _TENSOR_EXTERNAL_DATA and field.wire_type == LEN:
            key, value = _entry(model, field.start, field.end)
            external[key] = value
        elif field.number == _TENSOR_DATA_LOCATION and field.wire_type == VARINT:
            is_external = field.value == _LOCATION_EXTERNAL
    signed = tuple(d - (1 << 64) if d >= _INT64_SIGN else d for d in dims)
    return _Initializer(name, data_type, signed, raw, external, is_external)


def _entry(model: bytes, start: int, end: int) -> tuple[str, str]:
    key = value = ""
    for field in iter_fields(model, start, end):
        if field.wire_type == LEN and field.number == _ENTRY_KEY:
            key = _text(model, field.start, field.end)
        elif field.wire_type == LEN and field.number == _ENTRY_VALUE:
            value = _text(model, field.start, field.end)
    return key, value


def _text(model: bytes, start: int, end: int) -> str:
    try:
        return model[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"string field is not UTF-8: {e}") from e


def _disjoint(spans: list[TensorSpan]) -> list[TensorSpan]:
    """Spans sorted by offset, without empty, overlapping or same-name repeats (the first one wins)."""
    kept: list[TensorSpan] = []
    names: set[str] = set()
    end = 0
    for span in sorted(spans, key=lambda s: (s.offset, -s.length)):
        if span.length > 0 and span.offset >= end and span.name not in names:
            kept.append(span)
            names.add(span.name)
            end = span.end
    return kept
