"""The "tensor" codec: a delta that knows where an ONNX file's tensors are.

Making a patch (server) locates the tensors of both files (:mod:`.onnx_layout`) and encodes
each changed tensor on its own (:mod:`.encode`); applying it (device) runs a list of
operations on byte ranges (:mod:`.decode`) and needs neither ``onnx`` nor the layout: any
pair of files round-trips, ONNX or not. The body format is in :mod:`.format`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from edgerec.codecs.base import check_base, check_codec, verified_output
from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, open_patch, write_container
from edgerec.codecs.tensor import format as fmt
from edgerec.codecs.tensor.decode import apply_body
from edgerec.codecs.tensor.encode import DEFAULT_LEVEL, Settings, Stats, encode_body, literal_body
from edgerec.codecs.tensor.onnx_layout import locate_tensors
from edgerec.fsutil import atomic_output

logger = logging.getLogger(__name__)

WHOLE_FILE_TRIAL = 1 << 20
"""Files up to this size are also encoded as a single remainder; the smaller body is kept."""


class TensorCodec:
    """Ship only what changed in each tensor of an ONNX file (``X.onnx`` or ``X.onnx.data``)."""

    name = "tensor"
    needs_base = True

    def __init__(self, level: int = DEFAULT_LEVEL, remainder_limit: int = fmt.MAX_REMAINDER) -> None:
        self.settings = Settings(level=level, remainder_limit=remainder_limit)

    def make(self, old: Path | None, new: Path, out: Path) -> None:
        """Write a container at ``out`` that turns ``old`` into ``new``.

        For ``X.onnx.data`` files the tensors are found through ``X.onnx`` beside each of them.
        """
        if old is None:
            raise ValueError("the tensor codec needs a base file")
        old_bytes = old.read_bytes()
        new_bytes = new.read_bytes()
        old_spans = locate_tensors(old, old_bytes)
        new_spans = locate_tensors(new, new_bytes)
        chunks, stats = encode_body(old_bytes, new_bytes, old_spans, new_spans, self.settings)
        if new_spans and max(len(old_bytes), len(new_bytes)) <= WHOLE_FILE_TRIAL:
            # Small files (an .onnx graph with a few inline tensors): the whole file as one
            # remainder is often smaller than per-tensor ops.
            whole, whole_stats = encode_body(old_bytes, new_bytes, [], [], self.settings)
            if sum(map(len, whole)) < sum(map(len, chunks)):
                chunks, stats = whole, whole_stats
        if sum(map(len, chunks)) > self.max_body_size(len(new_bytes)):
            # Never larger than a device accepts: all new bytes as one LITERAL op always fit.
            chunks = literal_body(len(old_bytes), new_bytes, self.settings.level)
            stats = Stats(literal=1, remainder="none")
        with atomic_output(out) as f:
            header = write_container(
                f,
                codec=self.name,
                base_sha256=hashlib.sha256(old_bytes).hexdigest(),
                target_sha256=hashlib.sha256(new_bytes).hexdigest(),
                target_size=len(new_bytes),
                body=chunks,
            )
        logger.info(
            "tensor patch %s: %d -> %d bytes; %d tensors (%d copied, %d rows, %d dense, %d literal), remainder %s",
            out,
            len(new_bytes),
            header.body_length,
            len(new_spans),
            stats.copied,
            stats.rows,
            stats.dense,
            stats.literal,
            stats.remainder,
        )

    def max_body_size(self, target_size: int) -> int:
        """The target as one LITERAL op in full frames (see :func:`~.format.max_body_size`)."""
        return fmt.max_body_size(target_size)

    def apply(
        self, old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE
    ) -> None:
        """Rebuild the target at ``out`` from ``old``, reading ``old`` by ranges and writing ``out`` in order."""
        with open_patch(patch, max_target_size) as (header, body):
            check_codec(header, self)
            check_base(header, old)
            assert old is not None
            with verified_output(out, header) as writer, open(old, "rb") as base:
                old_size = base.seek(0, 2)
                apply_body(body, header.body_length, base, old_size, writer, header.target_size)
