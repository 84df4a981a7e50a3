"""What every codec shares: the :class:`Codec` interface and the safe way to write a file.

A codec's ``apply`` follows one discipline, which :func:`verified_output` enforces: the
container is checked before anything is written; the result goes to a temporary file in the
destination's directory; its size and sha256 are checked against the header, then it is
fsynced and renamed over the destination. On any failure the temporary file is removed and an
existing destination is left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, PatchHeader
from edgerec.errors import IntegrityError, PatchError, WrongBaseError
from edgerec.fsutil import atomic_output
from edgerec.hashing import BLOCK_SIZE, HashingWriter, sha256_file

logger = logging.getLogger(__name__)


class Codec(Protocol):
    """Turns a file of one version into the file of another through a patch container."""

    name: str
    needs_base: bool

    def make(self, old: Path | None, new: Path, out: Path) -> None:
        """Write at ``out`` a complete container that rebuilds ``new`` (from ``old`` if needed)."""
        ...

    def apply(
        self, old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE
    ) -> None:
        """Rebuild the patch's target at ``out`` atomically, or raise and leave ``out`` untouched."""
        ...

    def max_body_size(self, target_size: int) -> int:
        """The largest body this codec makes for a target of ``target_size`` bytes (and the largest it applies)."""
        ...


@contextmanager
def verified_output(out: Path, header: PatchHeader) -> Iterator[HashingWriter]:
    """Like :func:`edgerec.fsutil.atomic_output`; the bytes written must match the header's size and sha256."""
    with atomic_output(out) as f:
        writer = HashingWriter(f)
        yield writer
        if writer.size != header.target_size:
            raise IntegrityError(f"patch produced {writer.size} bytes, header promises {header.target_size}")
        if writer.hexdigest != header.target_sha256:
            raise IntegrityError(f"patch produced sha256 {writer.hexdigest}, header promises {header.target_sha256}")
    logger.debug("wrote %s (%d bytes, sha256 %s)", out, writer.size, writer.hexdigest)


def check_codec(header: PatchHeader, codec: Codec) -> None:
    """Raise PatchError unless the header names ``codec``, has a base digest exactly when it needs one,
    and its body is no longer than the codec makes for its target size."""
    if header.codec != codec.name:
        raise PatchError(f"patch was made by codec {header.codec!r}, not {codec.name!r}")
    if codec.needs_base and header.base_sha256 is None:
        raise PatchError(f"{codec.name!r} patch has no base sha256")
    if not codec.needs_base and header.base_sha256 is not None:
        raise PatchError(f"{codec.name!r} patch must not name a base file")
    check_body_length(header, codec)


def check_body_length(header: PatchHeader, codec: Codec) -> None:
    """Raise PatchError if the body is longer than ``codec`` makes for the header's target size."""
    limit = codec.max_body_size(header.target_size)
    if header.body_length > limit:
        raise PatchError(
            f"{codec.name!r} body of {header.body_length} bytes is larger than the {limit} bytes "
            f"that codec makes at most for a {header.target_size}-byte target"
        )


def check_base(header: PatchHeader, old: Path | None, digest: str | None = None) -> None:
    """Raise WrongBaseError unless ``old`` is the file the patch was made from.

    ``digest`` is ``old``'s sha256 when the caller already has it (saves reading the file again).
    """
    if old is None:
        raise WrongBaseError(f"patch needs a base file with sha256 {header.base_sha256}, got none")
    actual = digest if digest is not None else sha256_file(old)
    if actual != header.base_sha256:
        raise WrongBaseError(f"patch applies to a file with sha256 {header.base_sha256}, {old} has {actual}")


def decompress_into(
    decompressor: zstandard.ZstdDecompressor, body: BinaryIO, writer: HashingWriter, header: PatchHeader, what: str
) -> None:
    """Stream a zstd body into ``writer``; PatchError if it is corrupt or decodes to more or less than the target."""
    try:
        reader = decompressor.stream_reader(body, read_size=BLOCK_SIZE, read_across_frames=True)
        while chunk := reader.read(BLOCK_SIZE):
            if writer.size + len(chunk) > header.target_size:
                raise PatchError(f"{what} decompresses past {header.target_size} bytes")
            writer.write(chunk)
    except zstandard.ZstdError as e:
        raise PatchError(f"{what} is corrupt: {e}") from e
    if writer.size != header.target_size:
        raise PatchError(f"{what} is truncated: {writer.size} of {header.target_size} bytes decompressed")
