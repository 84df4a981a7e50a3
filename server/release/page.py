"""The read-only ``/rollouts`` page of the metrics port, and the rollout gauges of ``/metrics``.

Model names, label values and ``--where`` texts come from publishers and devices: every one is
escaped, and the page loads nothing and runs no script (the metrics server's Content-Security-Policy
forbids both).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgerec.errors import EdgerecError
from edgerec.registry import ModelRegistry
from edgerec.server.release.policy import ROLLOUT_STATES, ReleasePolicy, load_policy
from edgerec.server.release.records import FleetSource
from edgerec.server.release.view import policy_view

log = logging.getLogger(__name__)

__all__ = ["RolloutCollector", "policies", "render_rollouts"]

MAX_MODELS_SHOWN = 200

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4}
.fail,.halted{color:#b00020;font-weight:bold}
.pass,.passed,.completed{color:#1b5e20}
.running,.wait{color:#0d47a1}
code{background:#f4f4f4;padding:0 .2rem}
"""


def policies(registry: ModelRegistry) -> Iterator[ReleasePolicy]:
    """Each model's readable policy (an unreadable one is logged and skipped)."""
    for model in registry.models()[:MAX_MODELS_SHOWN]:
        try:
            policy, _ = load_policy(registry, model)
        except EdgerecError as exc:
            log.warning("release policy of %s not shown: %s", model[:80], exc)
            continue
        if policy is not None:
            yield policy


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if unix_s else "-"


def _cell(value: object, css: str = "") -> str:
    attr = f' class="{_e(css)}"' if css else ""
    return f"<td{attr}>{_e(value)}</td>"


def _overrides(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the server's"


def _rollout_html(r: dict[str, Any]) -> str:
    wave_text = "{} of {} ({:g}%)".format(r["current_wave"], len(r["waves"]), r["percent"])
    arms = "{} / {}".format(r["treatment_devices"], r["control_devices"])
    parts = [
        f'<section class="rollout" data-rollout="{_e(r["id"])}">',
        f"<h3>Rollout {_e(r['id'])}: version {_e(r['version'])} over {_e(r['baseline_version'])}</h3>",
        "<table><tbody>",
        f"<tr><th>state</th>{_cell(r['state'], r['state'])}</tr>",
        f"<tr><th>channel</th>{_cell(r['channel'])}</tr>",
        f"<tr><th>where</th><td><code>{_e(r['where'] or 'every device')}</code></td></tr>",
        f"<tr><th>wave</th>{_cell(wave_text)}</tr>",
        f"<tr><th>wave started</th>{_cell(_when(r['wave_started_unix_s']))}</tr>",
        f"<tr><th>treatment / control</th>{_cell(arms)}</tr>",
        f"<tr><th>reason</th>{_cell(r['reason'])}</tr>",
        f"<tr><th>gate thresholds</th>{_cell(_overrides(r['gate_thresholds']))}</tr>",
        "</tbody></table>",
        '<table class="waves"><thead><tr><th>wave</th><th>share</th><th>devices</th>'
        f"<th>on v{_e(r['version'])}</th><th>status</th><th>gate</th></tr></thead><tbody>",
    ]
    for w in r["wave_table"]:
        verdict = w["verdict"] or "-"
        share = "{:g}%".format(w["percent"])
        parts.append(
            f"<tr>{_cell(w['wave'])}{_cell(share)}{_cell(w['devices'])}{_cell(w['on_version'])}"
            f"{_cell(w['status'], w['status'])}{_cell(verdict, verdict)}</tr>"
        )
    parts.append("</tbody></table>")
    for gate in r["gates"]:
        parts.append(
            f'<h4>Gate of wave {_e(gate["wave"] + 1)}: <span class="{_e(gate["verdict"])}">{_e(gate["verdict"])}'
            f"</span> ({_e(gate['treatment'])} treatment, {_e(gate['control'])} control, "
            f"{_e(_when(gate['at_unix_s']))})</h4>"
        )
        if gate["reasons"]:
            parts.append("<ul>" + "".join(f"<li>{_e(reason)}</li>" for reason in gate["reasons"]) + "</ul>")
        if gate["numbers"]:
            rows = "".join(
                f"<tr><td>{_e(k)}</td><td>{_e(format(v, '.6g'))}</td></tr>" for k, v in gate["numbers"].items()
            )
            parts.append(
                '<table class="numbers"><thead><tr><th>number</th><th>value</th></tr></thead>'
                f"<tbody>{rows}</tbody></table>"
            )
    parts.append("</section>")
    return "".join(parts)


def render_rollouts(registry: ModelRegistry, fleet: FleetSource | None) -> bytes:
    """The ``/rollouts`` page: every model with a policy, its channels and each rollout's waves and gates."""
    body = []
    for policy in policies(registry):
        devices = fleet.devices(policy.model) if fleet is not None else ()
        view = policy_view(policy, devices)
        channels = ", ".join(f"{name} \u2192 {version}" for name, version in view["channels"].items()) or "none"
        body.append(f'<section class="model" data-model="{_e(policy.model)}"><h2>{_e(policy.model)}</h2>')
        body.append(f"<p>Channels: {_e(channels)}. Devices known: {_e(len(devices))}.</p>")
        if not view["rollouts"]:
            body.append("<p>No rollouts.</p>")
        body.extend(_rollout_html(r) for r in view["rollouts"])
        body.append("</section>")
    if not body:
        body.append("<p>No release policies: every model's devices track its latest version.</p>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgerec rollouts</title>'
        f"<style>{_STYLE}</style></head><body><h1>Rollouts</h1>{''.join(body)}</body></html>"
    )
    return page.encode()


class RolloutCollector(Collector):
    """Rollout gauges computed at scrape time from the policies in the registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "edgerec_rollout_state",
            "1 for a rollout's current state, 0 for the others.",
            labels=["model", "rollout", "state"],
        )
        wave = GaugeMetricFamily(
            "edgerec_rollout_wave", "A rollout's current wave (1-based).", labels=["model", "rollout"]
        )
        percent = GaugeMetricFamily(
            "edgerec_rollout_percent",
            "Share of targeted devices in a rollout's current wave.",
            labels=["model", "rollout"],
        )
        version = GaugeMetricFamily(
            "edgerec_rollout_version", "The version a rollout offers.", labels=["model", "rollout"]
        )
        for policy in policies(self.registry):
            for r in policy.rollouts:
                for name in ROLLOUT_STATES:
                    state.add_metric([policy.model, r.id, name], 1.0 if r.state == name else 0.0)
                wave.add_metric([policy.model, r.id], r.wave_index + 1)
                percent.add_metric([policy.model, r.id], r.percent)
                version.add_metric([policy.model, r.id], r.version)
        yield from (state, wave, percent, version)
