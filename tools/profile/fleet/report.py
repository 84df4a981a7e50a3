"""A fleet run's outcome: the summary (against the link-limited ideal), JSON, CSV, a rich table, a PNG.

The link-limited ideal is when the last device would finish if every device's link were the only
limit: the last device's start (the ramp) plus the plan's payload bytes at the device rate.
Every summary field keeps one JSON type; a number that cannot exist (the device times when no
device finished, server figures without its pid) is null, never a string or NaN.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.tools.links.profiles import format_bitrate
from edgerec.tools.profile.fleet.device import DeviceResult
from edgerec.tools.profile.fleet.sampler import SampledUsage
from edgerec.tools.profile.fleet.settings import FleetSettings
from edgerec.tools.profile.fleet.source import KNOWN_SOURCES
from edgerec.units import format_bytes

log = logging.getLogger(__name__)

PLOT_NAME = "devices_done.png"


@dataclass
class FleetReport:
    """Everything a fleet run measured; :meth:`summary` is the flat view the tables and CSV show."""

    settings: FleetSettings
    plan_bytes: int  # payload bytes of the plan a fresh device gets
    device_deadline_s: float
    results: list[DeviceResult]
    elapsed_s: float  # the whole run, from the first device's start to the last device's end
    sim_cpu_s: float
    sim_peak_rss_bytes: int
    server: SampledUsage | None = None
    label: str = ""  # names the run in a plot or a table of several

    # --- derived figures ---------------------------------------------------------------------

    @property
    def device_ideal_s(self) -> float:
        return self.plan_bytes / self.settings.rate_bytes_per_s

    @property
    def ideal_s(self) -> float:
        return self.settings.start_offset_s(self.settings.devices - 1) + self.device_ideal_s

    @property
    def completion_s(self) -> float:
        """When the last device finished or gave up, in seconds since the first one started."""
        return max((r.end_s for r in self.results), default=0.0)

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.results)

    def bytes_by_source(self) -> dict[str, int]:
        total: Counter[str] = Counter({name: 0 for name in KNOWN_SOURCES})
        for r in self.results:
            total.update(r.bytes_by_source)
        return dict(total)

    def errors_by_code(self) -> dict[str, int]:
        """Failed calls (and failed checks) by gRPC status code or error, over all devices."""
        total: Counter[str] = Counter()
        for r in self.results:
            total.update(r.errors_by_code)
        return dict(total.most_common())

    def failures_by_error(self) -> dict[str, int]:
        """Failed devices by why they failed."""
        return dict(Counter(r.error for r in self.results if not r.finished).most_common())

    def summary(self) -> dict[str, Any]:
        """The run in one flat mapping of stable names and JSON types (see the module docstring)."""
        s = self.settings
        sources = self.bytes_by_source()
        delivered = sum(sources.values())
        times = np.array([r.seconds for r in self.results if r.finished])
        server_cpu = self.server.cpu_s if self.server is not None else None
        return {
            "label": self.label,
            "server": s.server,
            "model": s.model,
            "devices": s.devices,
            "rate_bytes_per_s": float(s.rate_bytes_per_s),
            "ramp_s": float(s.ramp_s),
            "device_deadline_s": _round(self.device_deadline_s),
            "channels": s.channels or s.devices,
            "plan_bytes": self.plan_bytes,
            "finished": self.finished,
            "failed": len(self.results) - self.finished,
            "all_finished": self.finished == s.devices,
            "completion_s": _round(self.completion_s),
            "ideal_s": _round(self.ideal_s),
            "ratio": _round(self.completion_s / self.ideal_s if self.ideal_s > 0 else 0.0),
            "device_ideal_s": _round(self.device_ideal_s),
            "device_p50_s": _round(float(np.percentile(times, 50))) if times.size else None,
            "device_p95_s": _round(float(np.percentile(times, 95))) if times.size else None,
            "device_max_s": _round(float(times.max())) if times.size else None,
            "bytes_delivered": delivered,
            **{f"bytes_{name}": sources[name] for name in KNOWN_SOURCES},
            "calls": sum(r.calls for r in self.results),
            "retries": sum(r.retries for r in self.results),
            "failovers": sum(r.failovers for r in self.results),
            "redundant_bytes": sum(r.redundant_bytes for r in self.results),
            "server_cpu_s": _round(server_cpu) if server_cpu is not None else None,
            "server_cpu_s_per_gb": (
                _round(server_cpu / (delivered / 1e9)) if server_cpu is not None and delivered else None
            ),
            "server_peak_rss_bytes": self.server.peak_rss_bytes if self.server is not None else None,
            "sim_cpu_s": _round(self.sim_cpu_s),
            "sim_peak_rss_bytes": self.sim_peak_rss_bytes,
            "elapsed_s": _round(self.elapsed_s),
        }

    def as_dict(self) -> dict[str, Any]:
        """The summary, the error counts, every device and every server sample: the JSON file's content."""
        return {
            "summary": self.summary(),
            "bytes_by_source": self.bytes_by_source(),
            "errors_by_code": self.errors_by_code(),
            "failures_by_error": self.failures_by_error(),
            "devices": [
                {
                    "device_id": r.device_id,
                    "start_s": _round(r.start_s),
                    "end_s": _round(r.end_s),
                    "seconds": _round(r.seconds),
                    "finished": r.finished,
                    "error": r.error,
                    "detail": r.detail,
                    "plan_bytes": r.plan_bytes,
                    "bytes_by_source": {name: r.bytes_by_source.get(name, 0) for name in KNOWN_SOURCES},
                    "calls": r.calls,
                    "retries": r.retries,
                    "failovers": r.failovers,
                    "redundant_bytes": r.redundant_bytes,
                    "errors_by_code": dict(r.errors_by_code),
                }
                for r in self.results
            ],
            "server_samples": [
                {"t_s": _round(p.t_s), "cpu_s": _round(p.cpu_s), "rss_bytes": p.rss_bytes}
                for p in (self.server.samples if self.server is not None else [])
            ],
        }


def _round(value: float) -> float:
    return round(float(value), 3)


# --- files -------------------------------------------------------------------------------------


CSV_EXTRA = ("errors_by_code", "failures_by_error")


def csv_row(report: FleetReport) -> dict[str, Any]:
    """The summary as one CSV row; the error counts as ``CODE=n`` lists."""
    row = report.summary()
    row["errors_by_code"] = _counts(report.errors_by_code())
    row["failures_by_error"] = _counts(report.failures_by_error())
    return row


def write_json(reports: Sequence[FleetReport], path: Path) -> None:
    """One run: its :meth:`FleetReport.as_dict`; several: a list of them."""
    data: Any = reports[0].as_dict() if len(reports) == 1 else [r.as_dict() for r in reports]
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(reports: Sequence[FleetReport], path: Path) -> None:
    """One summary row per run (empty cells for null)."""
    rows = [csv_row(r) for r in reports]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())


# --- for people --------------------------------------------------------------------------------


SUMMARY_COLUMNS = ("what", "value")


def summary_rows(report: FleetReport) -> list[tuple[str, str]]:
    """(what, value) lines for a terminal table."""
    s = report.summary()
    rate = format_bitrate(report.settings.rate_bytes_per_s)

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    def size(value: int | None) -> str:
        return "-" if value is None else format_bytes(value)

    rows = [
        ("devices", f"{s['devices']} at {rate}, ramp {s['ramp_s']:g} s, {s['channels']} connection(s)"),
        ("finished / failed", f"{s['finished']} / {s['failed']}"),
        (
            "fleet completion",
            f"{seconds(s['completion_s'])} ({s['ratio']:.2f}x the link-limited ideal"
            + (f"; the last of {s['failed']} failed devices gave up then)" if s["failed"] else ")"),
        ),
        ("link-limited ideal", f"{seconds(s['ideal_s'])} (ramp + {size(s['plan_bytes'])} at {rate})"),
        (
            "device time p50 / p95 / max",
            f"{seconds(s['device_p50_s'])} / {seconds(s['device_p95_s'])} / {seconds(s['device_max_s'])} "
            f"(ideal {seconds(s['device_ideal_s'])}, deadline {seconds(s['device_deadline_s'])})",
        ),
        ("bytes by source", ", ".join(f"{name} {size(s[f'bytes_{name}'])}" for name in KNOWN_SOURCES)),
        ("calls / retries", f"{s['calls']} / {s['retries']}"),
        ("failovers / bytes received twice", f"{s['failovers']} / {size(s['redundant_bytes'])}"),
        ("errors by code", _counts(report.errors_by_code()) or "none"),
        ("failed devices by error", _counts(report.failures_by_error()) or "none"),
    ]
    if report.server is not None:
        per_gb = s["server_cpu_s_per_gb"]
        rows.append(
            (
                "server CPU",
                f"{s['server_cpu_s']:.1f} s"
                + (f", {per_gb:.1f} s per GB delivered" if per_gb is not None else "")
                + (" (the server exited during the run)" if report.server.exited else ""),
            )
        )
        rows.append(("server peak RSS", size(s["server_peak_rss_bytes"])))
    rows.append(("simulator CPU / peak RSS", f"{s['sim_cpu_s']:.1f} s / {size(s['sim_peak_rss_bytes'])}"))
    return rows


def write_plot(reports: Sequence[FleetReport], path: Path) -> Path:
    """Devices done over time against the link-limited ideal (left) and the server's CPU and RSS (right),
    one row per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 2, figsize=(12.0, 4.2 * len(reports)), squeeze=False)
    for report, (done_ax, server_ax) in zip(reports, axes, strict=True):
        _plot_done(report, done_ax)
        _plot_server(report, server_ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote plot %s", path)
    return path


def _steps(times: Sequence[float]) -> tuple[list[float], list[int]]:
    ordered = sorted(times)
    return [0.0, *ordered], list(range(len(ordered) + 1))


def _plot_done(report: FleetReport, ax: Any) -> None:
    s = report.settings
    ideal = [s.start_offset_s(i) + report.device_ideal_s for i in range(s.devices)]
    x, y = _steps(ideal)
    ax.step(x, y, where="post", color="gray", linestyle="--", label="link-limited ideal")
    x, y = _steps([r.end_s for r in report.results if r.finished])
    ax.step(x, y, where="post", color="tab:blue", label=f"finished ({report.finished})")
    failed = [r.end_s for r in report.results if not r.finished]
    if failed:
        x, y = _steps(failed)
        ax.step(x, y, where="post", color="tab:red", label=f"failed ({len(failed)})")
    ax.axvline(report.ideal_s, color="gray", linewidth=0.8)
    ax.set_xlabel("seconds since the first device started")
    ax.set_ylabel("devices done")
    ax.set_ylim(0, s.devices * 1.05)
    name = report.label or f"{s.devices} devices at {format_bitrate(s.rate_bytes_per_s)}"
    failed_note = f", {len(failed)} failed" if failed else ""
    ax.set_title(
        f"{name}: {report.completion_s:.0f} s vs {report.ideal_s:.0f} s ideal "
        f"({report.completion_s / report.ideal_s:.2f}x{failed_note})",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")


def _plot_server(report: FleetReport, ax: Any) -> None:
    samples = report.server.samples if report.server is not None else []
    if len(samples) < 2:
        ax.text(0.5, 0.5, "server not sampled (no --server-pid)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    t = np.array([p.t_s for p in samples])
    cpu = np.array([p.cpu_s for p in samples])
    busy = np.diff(cpu) / np.maximum(np.diff(t), 1e-9) * 100
    ax.plot(t[1:], busy, color="tab:orange", label="server CPU (% of one core)")
    ax.set_xlabel("seconds since the first device started")
    ax.set_ylabel("CPU, % of one core")
    rss_ax = ax.twinx()
    rss_ax.plot(t, [p.rss_bytes / 1e6 for p in samples], color="tab:purple", label="server RSS (MB)")
    rss_ax.set_ylabel("RSS (MB)")
    rss_ax.set_ylim(0, max(p.rss_bytes for p in samples) / 1e6 * 1.25)
    ax.set_ylim(0, max(10.0, float(busy.max()) * 1.25))
    handles = ax.get_legend_handles_labels()[0] + rss_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title("server CPU and memory", fontsize=10)
