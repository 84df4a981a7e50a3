"""What every benchmark report shares: its targets table and the machine it ran on."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One line of a targets table: what was measured against its limit, and whether it met it."""

    name: str
    measured: str
    limit: str
    met: bool


def targets_table(targets: Sequence[Target]) -> list[str]:
    """The targets as Markdown table lines."""
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.limit} | {'met' if t.met else 'NOT met'} |" for t in targets]
    return lines


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages ("n/a" where the system does not say)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_context(load_before: str, cpu: str | None = None) -> dict[str, str]:
    """A report's date, machine and load lines (``load_before``: :func:`loadavg` when the run began)."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load average before / after": f"{load_before} / {loadavg()}",
    }
