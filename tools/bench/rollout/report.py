"""The rollout simulation's outputs: a markdown report, JSON, and devices per version over time (PNG)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.tools.bench.rollout.scenario import ScenarioResult, criteria, summary_rows

__all__ = ["gate_rows", "markdown", "plot", "write_outputs"]

SUMMARY_HEADER = (
    "scenario",
    "ended",
    "devices offered v3 per wave",
    "ever ran v3",
    "halted after",
    "revert: back on v2's bytes",
    "operator actions",
)
GATE_HEADER = ("scenario", "round", "t (s)", "wave", "verdict", "treatment", "control", "numbers", "reasons")
# Gate numbers shown in the table (all of them are in the JSON).
_SHOWN_NUMBERS = (
    "install_failure_rate",
    "silent_rate",
    "rollback_rate",
    "p99_ratio",
    "impressions.treatment",
    "ctr.treatment",
    "ctr.control",
    "ctr.p_value",
    "calibration.drift",
    "calibration.p_value",
)


def _cell(values: Sequence[object]) -> str:
    return "| " + " | ".join(str(v).replace("|", "/") for v in values) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    return "\n".join([_cell(header), _cell(["---"] * len(header)), *(_cell(r) for r in rows)])


def _numbers(numbers: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={numbers[k]:.4g}" for k in _SHOWN_NUMBERS if k in numbers)


def gate_rows(result: ScenarioResult) -> list[tuple[object, ...]]:
    """The gate verdicts that matter: each wave's first pass or fail, and its last verdict."""
    last = {g.wave: g for g in result.gates}
    first: dict[tuple[int, str], object] = {}
    for g in result.gates:
        if g.verdict != "wait":
            first.setdefault((g.wave, g.verdict), g)
    kept = [g for g in result.gates if last[g.wave] is g or any(f is g for f in first.values())]
    return [
        (
            result.scenario,
            g.round + 1,
            f"{g.t_s:.0f}",
            f"{g.wave + 1} ({result.waves[g.wave]:g}%)",
            g.verdict,
            g.treatment,
            g.control,
            _numbers(g.numbers),
            "; ".join(g.reasons)[:300],
        )
        for g in kept
    ]


def markdown(results: Sequence[ScenarioResult], context: Mapping[str, Any]) -> str:
    """The human report: the run's settings, one row per scenario, the criteria, the gate verdicts."""
    lines = ["# Rollout simulation", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", table(SUMMARY_HEADER, summary_rows(results)), "", "## Criteria", ""]
    lines += [f"- {r.scenario}: {'PASS' if ok else 'FAIL'}: {what}" for r in results for what, ok in criteria(r)]
    lines += ["", "## Gate verdicts (each wave's first pass or fail, and its last)", ""]
    lines += [table(GATE_HEADER, [row for r in results for row in gate_rows(r)])]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[ScenarioResult], path: Path) -> Path:
    """Devices per active version over time, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        versions = sorted({v for s in result.timeline for v in s.versions})
        times = [s.t_s for s in result.timeline]
        for version in versions:
            counts = [s.versions.get(version, 0) for s in result.timeline]
            ax.plot(times, counts, marker=".", label=f"v{version}")
        if result.halted_at_s is not None:
            ax.axvline(result.halted_at_s, color="red", linestyle="--", linewidth=1, label="halted")
        if result.revert_version is not None:
            ax.set_yscale("symlog")
        ax.set_title(f"{result.scenario}: {result.final_state} in wave {result.final_wave + 1}")
        ax.set_xlabel("seconds since the rollout started")
        ax.set_ylabel("devices")
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(results: Sequence[ScenarioResult], context: Mapping[str, Any], out: Path) -> list[Path]:
    """``rollout.md``, ``rollout.json`` and ``rollout.png`` in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "rollout.md"
    report.write_text(markdown(results, context))
    data = out / "rollout.json"
    data.write_text(json.dumps(to_json(results, context), indent=2) + "\n")
    return [report, data, plot(results, out / "rollout.png")]


def to_json(results: Sequence[ScenarioResult], context: Mapping[str, Any]) -> dict[str, Any]:
    """Everything: the settings, and per scenario its result and its criteria."""
    return {
        "context": dict(context),
        "scenarios": [
            {**r.to_json(), "criteria": [{"criterion": what, "met": ok} for what, ok in criteria(r)]} for r in results
        ],
    }
