"""Payload codecs: make a patch that turns one file into another, and apply it safely.

Every payload is a container (see :mod:`edgerec.codecs.container`) naming the codec that
made it, so :func:`apply_patch` needs no other information than the files::

    make_patch("bsdiff4", old, new, patch)
    apply_patch(old, patch, out)  # out now holds new's bytes, or nothing changed

Sizes: a codec makes a body of at most ``Codec.max_body_size(target size)`` bytes (each codec's
module documents its worst case, from :mod:`edgerec.codecs.bounds`), so a payload is at most
:func:`max_payload_size`. A device knows only the signed target size: it refuses a plan whose
payload is larger before downloading it, and a container whose header promises another target
or a longer body before decoding a byte of it (``apply_patch(..., target_size=...)``).
"""

from __future__ import annotations

from pathlib import Path

from edgerec.codecs.base import Codec, check_body_length
from edgerec.codecs.bsdiff import BsdiffCodec
from edgerec.codecs.container import (
    DEFAULT_MAX_TARGET_SIZE,
    HEADER_SIZE,
    TRAILER_SIZE,
    PatchHeader,
    read_patch_info,
)
from edgerec.codecs.full import FullCodec
from edgerec.codecs.patch_from import PatchFromCodec
from edgerec.codecs.tensor import TensorCodec
from edgerec.errors import IntegrityError, PatchError

_CODECS: dict[str, Codec] = {
    codec.name: codec for codec in (FullCodec(), BsdiffCodec(), PatchFromCodec(), TensorCodec())
}

CODEC_NAMES: tuple[str, ...] = tuple(_CODECS)
"""Names of the codecs this version can make and apply."""

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_MAX_TARGET_SIZE",
    "Codec",
    "PatchHeader",
    "apply_patch",
    "get_codec",
    "make_patch",
    "max_payload_size",
    "read_patch_info",
]


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``; raise PatchError for a name this version does not know."""
    try:
        return _CODECS[name]
    except KeyError:
        raise PatchError(f"unknown codec {name!r}; known: {', '.join(CODEC_NAMES)}") from None


def make_patch(codec_name: str, old: Path | None, new: Path, out: Path) -> None:
    """Write at ``out`` a payload of codec ``codec_name`` that turns ``old`` into ``new``."""
    get_codec(codec_name).make(old, new, out)


def max_payload_size(codec_name: str, target_size: int) -> int:
    """The largest payload (container included) codec ``codec_name`` makes for a ``target_size``-byte file."""
    return HEADER_SIZE + get_codec(codec_name).max_body_size(target_size) + TRAILER_SIZE


def apply_patch(
    old: Path | None,
    patch: Path,
    out: Path,
    *,
    codec: str | None = None,
    target_size: int | None = None,
    target_sha256: str | None = None,
    max_target_size: int = DEFAULT_MAX_TARGET_SIZE,
) -> None:
    """Apply ``patch`` (to ``old`` if its codec needs a base) and write the result atomically at ``out``.

    ``codec``, ``target_size`` and ``target_sha256``, when given, are what the caller expects (a
    device: its plan and signed manifest); a header promising anything else, or a body longer than
    its codec makes for that size, is refused before a byte is decoded or written.

    Raises PatchError (corrupt, truncated, unknown or unexpected codec, target above
    ``max_target_size``, body over its bound), WrongBaseError (``old`` is not the patch's base)
    or IntegrityError (the header promises another target than expected, or the result does not
    match the header); on any error ``out`` is left as it was.
    """
    header = read_patch_info(patch, max_target_size)
    if codec is not None and header.codec != codec:
        raise PatchError(f"patch was made by codec {header.codec!r}, the plan says {codec!r}")
    if target_size is not None and header.target_size != target_size:
        raise IntegrityError(f"patch builds {header.target_size} bytes, expected {target_size}")
    if target_sha256 is not None and header.target_sha256 != target_sha256:
        raise IntegrityError(f"patch builds sha256 {header.target_sha256[:16]}…, expected {target_sha256[:16]}…")
    chosen = get_codec(header.codec)
    check_body_length(header, chosen)  # the codec checks it too; here before the body is even hashed
    chosen.apply(old, patch, out, max_target_size=header.target_size)
