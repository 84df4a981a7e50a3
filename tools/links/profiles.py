"""Link profiles: named presets, ``key=value`` specs and TOML files of profiles.

A spec is ``rate=512kbit,rtt=200ms,loss=1%,drop_every=1MB``; it may start with a preset
name whose values it overrides (``3g,loss=2%``) and may set ``name=``. A TOML file holds
one table per profile (at the top level or under ``[links]``)::

    [rural]
    rate = "512kbit"
    rtt = "200ms"
    loss = "1%"
    drop_every = "1MB"
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerec.units import parse_rate, parse_size

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|min|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_KEYS = ("name", "rate", "rtt", "loss", "drop_every")
TCP_MSS = 1448  # TCP payload of a 1500-byte packet with timestamps


@dataclass(frozen=True)
class LinkProfile:
    """A device link: bottleneck rate, round-trip time, segment loss, and a cut every N bytes down."""

    name: str
    rate_bytes_per_s: float
    rtt_s: float
    loss: float = 0.0  # fraction of TCP segments lost, each way
    drop_every_bytes: int | None = None  # the connection is cut after this many bytes down

    def __post_init__(self) -> None:
        if self.rate_bytes_per_s <= 0:
            raise ValueError(f"link {self.name!r}: rate must be > 0")
        if self.rtt_s < 0:
            raise ValueError(f"link {self.name!r}: rtt must be >= 0")
        if not 0 <= self.loss < 0.5:
            raise ValueError(f"link {self.name!r}: loss must be in [0, 50%), got {self.loss}")
        if self.drop_every_bytes is not None and self.drop_every_bytes < 16 * 1024:
            raise ValueError(f"link {self.name!r}: drop_every must be >= 16 KiB, got {self.drop_every_bytes}")

    @property
    def effective_rate_bytes_per_s(self) -> float:
        """What one TCP flow gets: the rate, capped under loss by the Mathis et al. bound MSS/RTT * 1.22/sqrt(p)."""
        if not self.loss:
            return self.rate_bytes_per_s
        return min(self.rate_bytes_per_s, TCP_MSS * 1.22 / (max(self.rtt_s, 1e-3) * math.sqrt(self.loss)))

    def describe(self) -> str:
        """``2 Mbit/s, 100 ms RTT[, 1% loss][, cut every 1 MB]``."""
        parts = [format_bitrate(self.rate_bytes_per_s), f"{self.rtt_s * 1e3:g} ms RTT"]
        if self.loss:
            parts.append(f"{self.loss * 100:g}% loss")
        if self.drop_every_bytes:
            parts.append(f"cut every {compact_bytes(self.drop_every_bytes)}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("2g", parse_rate("64kbit"), 0.300),
        LinkProfile("3g", parse_rate("2mbit"), 0.100),
        LinkProfile("lte", parse_rate("20mbit"), 0.040),
        LinkProfile("satellite", parse_rate("10mbit"), 0.600),
        LinkProfile("wifi", parse_rate("100mbit"), 0.005),
    )
}


def format_bitrate(rate_bytes_per_s: float) -> str:
    """'64 kbit/s', '2 Mbit/s'."""
    bits = rate_bytes_per_s * 8
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def compact_bytes(n: float) -> str:
    """'812 B', '191 kB', '1.57 MB' (SI, as link rates use)."""
    if abs(n) < 1e3:
        return f"{n:.0f} B"
    if abs(n) < 1e6:
        return f"{n / 1e3:.0f} kB"
    return f"{n / 1e6:.2f} MB" if abs(n) < 1e9 else f"{n / 1e9:.2f} GB"


def parse_duration(text: str | float) -> float:
    """Seconds from '300ms', '1.5s', '2m' or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot read duration {text!r}; try '300ms' or '60s'")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[(unit or "s").lower()]


def parse_fraction(text: str | float) -> float:
    """A fraction from '1%', '0.5 %' or a plain number (0.01)."""
    if isinstance(text, int | float):
        return float(text)
    stripped = text.strip()
    try:
        return float(stripped[:-1]) / 100 if stripped.endswith("%") else float(stripped)
    except ValueError:
        raise ValueError(f"cannot read fraction {text!r}; try '1%' or 0.01") from None


def _from_fields(name: str, fields: Mapping[str, Any], base: LinkProfile | None = None) -> LinkProfile:
    unknown = set(fields) - set(_KEYS)
    if unknown:
        raise ValueError(f"link {name!r}: unknown keys {sorted(unknown)}; known: {', '.join(_KEYS)}")
    if base is None and not {"rate", "rtt"} <= set(fields):
        raise ValueError(f"link {name!r} needs rate and rtt (or start from a preset, e.g. '3g,loss=1%')")
    rate = fields.get("rate")
    drop = fields.get("drop_every")
    if "drop_every" not in fields:
        drop_every = base.drop_every_bytes if base else None
    else:
        drop_every = None if drop in (None, "", 0, "0", "none", "off") else _size(drop)
    return LinkProfile(
        name=str(fields.get("name", name)),
        rate_bytes_per_s=_rate(rate) if rate is not None else base.rate_bytes_per_s if base else 0.0,
        rtt_s=parse_duration(fields["rtt"]) if "rtt" in fields else base.rtt_s if base else 0.0,
        loss=parse_fraction(fields["loss"]) if "loss" in fields else base.loss if base else 0.0,
        drop_every_bytes=drop_every,
    )


def _rate(value: Any) -> float:
    """A rate string; a bare number is bits per second, as tc reads it."""
    return float(value) / 8 if isinstance(value, int | float) else parse_rate(str(value))


def _size(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else parse_size(str(value))


def parse_link(text: str, known: Mapping[str, LinkProfile] | None = None) -> LinkProfile:
    """A preset or file profile by name, or a ``key=value,...`` spec (optionally after a base name)."""
    known = {**PRESETS, **(known or {})}
    text = text.strip()
    if text in known:
        return known[text]
    if "=" not in text:
        raise ValueError(f"unknown link {text!r}; presets: {', '.join(PRESETS)}; or give rate=...,rtt=...")
    items = [item.strip() for item in text.split(",") if item.strip()]
    base: LinkProfile | None = None
    if items and "=" not in items[0]:
        if items[0] not in known:
            raise ValueError(f"unknown base link {items[0]!r} in {text!r}")
        base = known[items.pop(0)]
    fields: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value in link spec, got {item!r}")
        fields[key.strip().replace("-", "_")] = value.strip()
    name = fields.pop("name", None) or (f"{base.name}+" + "+".join(items) if base else text)
    return _from_fields(name, fields, base)


def load_links_file(path: Path) -> dict[str, LinkProfile]:
    """Profiles from a TOML file: one table per profile, at the top level or under ``[links]``."""
    with path.open("rb") as f:
        document = tomllib.load(f)
    tables = document.get("links", document) if set(document) <= {"links"} else document
    profiles: dict[str, LinkProfile] = {}
    for name, fields in tables.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: {name!r} should be a table of link settings")
        fields = dict(fields)
        base_name = fields.pop("base", None)
        base = PRESETS.get(str(base_name)) if base_name is not None else None
        if base_name is not None and base is None:
            raise ValueError(f"{path}: link {name!r} has unknown base {base_name!r}")
        profiles[name] = dataclasses.replace(_from_fields(name, fields, base), name=str(fields.get("name", name)))
    if not profiles:
        raise ValueError(f"{path} defines no link profiles")
    return profiles
