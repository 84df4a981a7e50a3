"""Helpers for tests that take payload containers apart and put them back together."""

from __future__ import annotations

import io

from hypothesis import strategies as st

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


@st.composite
def byte_pairs(draw: st.DrawFn, max_size: int = 4096) -> tuple[bytes, bytes]:
    """(old, new): unrelated bytes, or ``new`` made from ``old`` by a few splices and moves."""
    old = draw(st.binary(max_size=max_size))
    if draw(st.booleans()):
        return old, draw(st.binary(max_size=max_size))
    new = old
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, len(new)))
        end = draw(st.integers(start, min(len(new), start + 200)))
        if draw(st.booleans()):
            new = new[:start] + draw(st.binary(max_size=64)) + new[end:]
        else:
            new = new[end:] + new[start:end] + new[:start]
    return old, new
