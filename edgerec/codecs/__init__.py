"""Payload codecs: make a patch that turns one file into another, and apply it safely.

Every payload is a container (see :mod:`edgerec.codecs.container`) naming the codec that
made it, so :func:`apply_patch` needs no other information than the files::

    make_patch("bsdiff4", old, new, patch)
    apply_patch(old, patch, out)  # out now holds new's bytes, or nothing changed
"""

from __future__ import annotations

from pathlib import Path

from edgerec.codecs.base import Codec
from edgerec.codecs.bsdiff import BsdiffCodec
from edgerec.codecs.container import DEFAULT_MAX_TARGET_SIZE, PatchHeader, read_patch_info
from edgerec.codecs.full import FullCodec
from edgerec.codecs.patch_from import PatchFromCodec
from edgerec.codecs.tensor import TensorCodec
from edgerec.errors import PatchError

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


def apply_patch(old: Path | None, patch: Path, out: Path, *, max_target_size: int = DEFAULT_MAX_TARGET_SIZE) -> None:
    """Apply ``patch`` (to ``old`` if its codec needs a base) and write the result atomically at ``out``.

    Raises PatchError (corrupt, truncated, unknown codec, target above ``max_target_size``),
    WrongBaseError (``old`` is not the patch's base) or IntegrityError (the result does not
    match the header); on any error ``out`` is left as it was.
    """
    header = read_patch_info(patch, max_target_size)
    get_codec(header.codec).apply(old, patch, out, max_target_size=max_target_size)
