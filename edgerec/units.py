"""Human units: link rates ("2mbit") and sizes ("200KB")."""

from __future__ import annotations

import re

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps|b/s|B/s|B)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SI = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_IEC = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_rate(text: str) -> float:
    """Bytes per second from '2mbit', '512kbit', '100kbps' (bits) or '1MB/s', '64kB' (bytes).

    The unit is required: a bare number could mean bits or bytes, which differ eightfold.
    """
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"cannot read rate {text!r}; try '2mbit' or '250kB/s'")
    number, prefix, unit = match.groups()
    if unit is None:
        raise ValueError(
            f"rate {text!r} needs a unit: '{number}{prefix}bit' (bits/s) or '{number}{prefix}B/s' (bytes/s)"
        )
    value = float(number) * _SI[prefix.lower()]
    is_bytes = unit in ("B", "B/s")
    rate = value if is_bytes else value / 8
    if rate <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    return rate


def parse_size(text: str) -> int:
    """Bytes from '200KB' (SI), '4MiB' (IEC) or a plain number of bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"cannot read size {text!r}; try '200KB' or '4MiB'")
    number, prefix, iec, _ = match.groups()
    table = _IEC if iec else _SI
    return int(float(number) * table[prefix.lower()])


def format_bytes(n: float) -> str:
    """'1.5 MB' style (SI units, as link rates use)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"
