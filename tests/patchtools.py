"""Helpers for tests that take payload containers apart and put them back together."""

from __future__ import annotations

import io

from edgerec.codecs.container import HEADER_SIZE, TRAILER_SIZE, read_header, write_container


def body_of(patch: bytes) -> bytes:
    """The body of a container, without header and trailer."""
    return patch[HEADER_SIZE:-TRAILER_SIZE]


def reseal(patch: bytes, body: bytes) -> bytes:
    """``patch`` with another body, and a valid CRC and trailer again (damage reaches the decoder)."""
    header = read_header(io.BytesIO(patch))
    f = io.BytesIO()
    write_container(
        f,
        codec=header.codec,
        base_sha256=header.base_sha256,
        target_sha256=header.target_sha256,
        target_size=header.target_size,
        body=[body],
    )
    return f.getvalue()
