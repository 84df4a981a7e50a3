"""Profile output: terminal tables, JSON and CSV rows, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgerec.tools.links.profiles import compact_bytes, format_bitrate
from edgerec.tools.profile.runner import ProfileReport, ProfileRow

log = logging.getLogger(__name__)

ROW_COLUMNS = (
    "link",
    "codec",
    "payload",
    "prep s",
    "check s",
    "xfer s",
    "vs model",
    "apply s",
    "pred s",
    "update s",
    "cpu s",
    "RSS",
    "extra",
    "note",
)
RECOMMENDATION_COLUMNS = ("link", "link model", "best codec", "time to update", "fits window", "advice")


def _seconds(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"~{text}" if estimated else text


def _codec(row: ProfileRow) -> str:
    return row.codec if row.codec_used == row.codec else f"{row.codec}→{row.codec_used}"


def _extra(row: ProfileRow) -> str:
    """Bytes and time that cuts and losses added (only for links that have them)."""
    if row.extra_bytes is None or not (row.drop_every_bytes or row.loss):
        return "-"
    text = f"+{compact_bytes(row.extra_bytes)}"
    if row.extra_s is not None:
        text += f" {row.extra_s:+.1f}s"
    counts = [f"{row.cuts} cuts" if row.cuts else "", f"{row.lost_segments} lost" if row.lost_segments else ""]
    counts = [c for c in counts if c]
    return f"{text} ({', '.join(counts)})" if counts else text


def table_rows(rows: Sequence[ProfileRow]) -> list[tuple[str, ...]]:
    """One line per (link, codec), in :data:`ROW_COLUMNS` order; ``~`` marks estimates, ``*`` the pick."""
    out: list[tuple[str, ...]] = []
    for r in rows:
        estimated = not r.measured
        ratio = r.transfer_ratio
        note = ("* " if r.recommended else "") + r.note
        out.append(
            (
                r.link,
                _codec(r),
                compact_bytes(r.payload_bytes),
                _seconds(r.prep_s),
                _seconds(r.check_s, estimated),
                _seconds(r.transfer_s, estimated),
                f"{ratio:.2f}" if ratio is not None else "-",
                _seconds(r.apply_s),
                _seconds(r.first_predict_s),
                _seconds(r.time_to_update_s, estimated),
                _seconds(r.cpu_s),
                f"{r.peak_rss_bytes / 1e6:.0f} MB" if r.peak_rss_bytes is not None else "-",
                _extra(r),
                note.strip(),
            )
        )
    return out


def recommendation_rows(report: ProfileReport) -> list[tuple[str, ...]]:
    links = {link.name: link for link in report.settings.links}
    return [
        (
            rec.link,
            links[rec.link].describe(),
            rec.codec,
            _seconds(rec.time_to_update_s),
            "yes" if rec.fits_window else "no",
            rec.advice,
        )
        for rec in report.recommendations
    ]


def summary_lines(report: ProfileReport) -> list[str]:
    s = report.settings
    measured = sum(r.measured for r in report.rows)
    return [
        f"{s.model} {s.from_version} -> {s.to_version} ({s.recipe}), shaping: {report.method}, "
        f"{measured} of {len(report.rows)} rows measured, {report.total_s:.1f}s in all",
        "prep: server makes the payloads (once per version pair); check: CheckUpdate incl. connecting; "
        "xfer: payload download; vs model: xfer / (payload x wire factor / rate + 1 RTT per payload file); "
        "apply: patch, verify, health check, switch; pred: verify, load and run the new version once; "
        "update = check + xfer + apply + pred; cpu, RSS: device process; "
        "extra: bytes and seconds that cuts and losses added",
        f"~ / est. = estimated from the link model (transfer above --max-transfer {s.max_transfer_s:.0f}s) with the "
        "device numbers of a measured run of the codec; * = recommended for the link",
    ]


def rows_as_dicts(rows: Sequence[ProfileRow]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]


def write_json(rows: Sequence[ProfileRow], path: Path) -> None:
    """The rows as a JSON list of objects."""
    path.write_text(json.dumps(rows_as_dicts(rows), indent=2) + "\n")


def write_csv(rows: Sequence[ProfileRow], path: Path) -> None:
    """The rows as CSV, one column per field (empty for None)."""
    dicts = rows_as_dicts(rows)
    if not dicts:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dicts[0]))
        writer.writeheader()
        for d in dicts:
            writer.writerow({k: "" if v is None else v for k, v in d.items()})


def write_plots(report: ProfileReport, folder: Path) -> list[Path]:
    """``time_to_update.png``, ``payload_bytes.png`` and ``time_breakdown.png`` in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        _plot_time_to_update(report, folder / "time_to_update.png"),
        _plot_bytes(report, folder / "payload_bytes.png"),
        _plot_breakdown(report, folder / "time_breakdown.png"),
    ]
    log.info("wrote plots %s", ", ".join(str(p) for p in paths))
    return paths


def _colors(codecs: Sequence[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10")
    return {codec: cycle(i % 10) for i, codec in enumerate(codecs)}


def _plot_time_to_update(report: ProfileReport, path: Path) -> Path:
    """Grouped bars: time to update per link, one bar per codec (log scale); the window as a line."""
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    links = [link.name for link in report.settings.links]
    codecs = list(report.settings.codecs)
    colors = _colors(codecs)
    by_key = {(r.link, r.codec): r for r in report.rows}
    width = 0.8 / len(codecs)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(links) + 2), 4.8))
    for i, codec in enumerate(codecs):
        for j, link in enumerate(links):
            row = by_key.get((link, codec))
            if row is None or row.time_to_update_s is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.bar(
                x,
                row.time_to_update_s,
                width,
                color=colors[codec],
                hatch="//" if not row.measured else None,
                edgecolor="black" if row.recommended else "none",
                linewidth=1.5 if row.recommended else 0,
            )
            if row.recommended:
                ax.annotate("*", (x, row.time_to_update_s), ha="center", va="bottom", fontsize=14)
    ax.axhline(report.settings.window_s, color="red", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(links)))
    ax.set_xticklabels([f"{name}\n{_short(report, name)}" for name in links], fontsize=8)
    ax.set_ylabel("seconds (log scale)")
    model = report.settings
    ax.set_title(
        f"{model.model} {model.from_version} -> {model.to_version}: time to update "
        "(check + transfer + apply + first prediction)",
        fontsize=10,
    )
    handles: list[Artist] = [Patch(color=colors[c], label=c) for c in codecs]
    handles.append(Patch(facecolor="white", edgecolor="gray", hatch="//", label="estimated"))
    handles.append(Line2D([], [], color="red", linestyle="--", label=f"window {report.settings.window_s:.0f}s"))
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(report: ProfileReport, name: str) -> str:
    link = next(link for link in report.settings.links if link.name == name)
    return f"{format_bitrate(link.rate_bytes_per_s)}, {link.rtt_s * 1e3:g} ms"


def _plot_bytes(report: ProfileReport, path: Path) -> Path:
    """One bar per codec: payload bytes shipped (and server preparation time on top)."""
    import matplotlib.pyplot as plt

    codecs = list(report.settings.codecs)
    colors = _colors(codecs)
    first: dict[str, ProfileRow] = {}
    for r in report.rows:
        first.setdefault(r.codec, r)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    full_bytes = next(iter(first.values())).full_bytes if first else 0
    for i, codec in enumerate(codecs):
        row = first.get(codec)
        if row is None:
            continue
        ax.bar(i, row.payload_bytes / 1e3, color=colors[codec])
        label = f"{compact_bytes(row.payload_bytes)}\nprep {row.prep_s:.2f}s"
        if row.codec_used != codec:
            label += f"\nsent as {row.codec_used}"
        ax.annotate(label, (i, row.payload_bytes / 1e3), ha="center", va="bottom", fontsize=8)
    if full_bytes:
        ax.axhline(full_bytes / 1e3, color="gray", linestyle=":", linewidth=1)
        ax.annotate("artifact size", (len(codecs) - 0.5, full_bytes / 1e3), ha="right", va="bottom", fontsize=8)
    ax.set_xticks(range(len(codecs)))
    ax.set_xticklabels(codecs)
    ax.set_ylabel("payload (kB)")
    ax.set_ylim(0, max([full_bytes / 1e3] + [r.payload_bytes / 1e3 for r in first.values()]) * 1.3)
    s = report.settings
    ax.set_title(f"{s.model} {s.from_version} -> {s.to_version} ({s.recipe}): bytes per codec")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_breakdown(report: ProfileReport, path: Path) -> Path:
    """100% stacked bars per (link, codec): the share of each phase in the time to update, total on the right."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in report.rows if r.time_to_update_s]
    parts = (
        ("check_s", "check", "#9e9e9e"),
        ("transfer_s", "transfer", "#1f77b4"),
        ("apply_s", "apply", "#ff7f0e"),
        ("first_predict_s", "first prediction", "#2ca02c"),
    )
    fig, ax = plt.subplots(figsize=(8.0, max(3.0, 0.28 * len(rows) + 1.4)))
    for y, row in enumerate(rows):
        total = row.time_to_update_s or 1.0
        left = 0.0
        for attr, _, color in parts:
            share = 100 * (getattr(row, attr) or 0.0) / total
            ax.barh(y, share, left=left, color=color, hatch="//" if not row.measured else None)
            left += share
        ax.annotate(f" {_seconds(row.time_to_update_s, not row.measured)} s", (100, y), va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r.link} / {r.codec}" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("share of the time to update (%); total on the right")
    ax.set_title("where the time to update goes (hatched: estimated)")
    handles = [Patch(color=c, label=label) for _, label, c in parts]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
