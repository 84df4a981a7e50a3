"""One scenario of the rollout simulation: v2 stable on every device, then a staged rollout of a v3.

The rollout runs on the server's own release machinery (:class:`ReleaseDriver`): a rollout started
as ``edgerec rollout start`` starts it, the controller's tick moves it, its gates read the fleet's
reports. Each round is one check interval of every device; after it the fleet records are flushed
and the controller ticks once. The run ends when the rollout completes, halts (the "bad" scenario
then reverts to v2 and counts the rounds until every device that ran v3 is back on v2's bytes), or
after ``max_rounds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgerec.tools.bench.rollout.variants import Scenario, Variants
from edgerec.tools.bench.rollout.world import World, WorldSettings

__all__ = [
    "GateEvaluation",
    "ReleaseDriver",
    "RolloutSettings",
    "RolloutView",
    "Sample",
    "ScenarioResult",
    "run_scenario",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# Rounds a revert may take before the run says it failed (the criterion is one).
MAX_REVERT_ROUNDS = 3
SETTLE_ROUNDS = 3


@dataclass(frozen=True)
class RolloutSettings:
    """The rollout each scenario starts, and how long the simulation may run."""

    waves: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    wave_min_time_s: float = 20.0
    max_rounds: int = 60
    seed: str = "rollout-sim"


@dataclass(frozen=True)
class GateEvaluation:
    """One gate verdict the controller recorded: for which wave, when, and the numbers behind it."""

    round: int
    t_s: float
    wave: int
    verdict: str
    treatment: int
    control: int
    reasons: tuple[str, ...]
    numbers: dict[str, float]


@dataclass(frozen=True)
class RolloutView:
    """What the simulation reads of a rollout after each tick."""

    state: str
    wave_index: int
    reason: str
    gates: tuple[GateEvaluation, ...]


class ReleaseDriver(Protocol):
    """The server's release machinery as the simulation drives it (see :mod:`.release_driver`)."""

    def pin_channel(self, channel: str, version: int) -> None:
        """Point ``channel`` at ``version``."""

    def start(self, version: int, settings: RolloutSettings) -> str:
        """Start a rollout of ``version`` on the stable channel; returns its id."""

    def tick(self, now_unix_s: float) -> None:
        """Flush the fleet records and run the controller once."""

    def view(self, rollout_id: str, round_index: int, t0: float) -> RolloutView:
        """The rollout's state, wave and gate verdicts."""

    def revert(self, to_version: int) -> int:
        """``edgerec revert --to``: returns the new version that carries ``to_version``'s bytes."""


@dataclass(frozen=True)
class Sample:
    """The fleet after one round: devices per active version, the rollout's wave and state."""

    round: int
    t_s: float
    versions: dict[int, int]
    offered_new: int
    wave: int
    state: str


@dataclass
class ScenarioResult:
    """What one scenario did, in the issue's terms."""

    scenario: str
    devices: int
    waves: tuple[float, ...]
    wave_min_time_s: float
    baseline_version: int
    version: int
    final_state: str = ""
    final_wave: int = 0
    reason: str = ""
    halted_in_wave: int | None = None
    halted_at_s: float | None = None
    completed_at_s: float | None = None
    rounds: int = 0
    # Devices offered the new version by the end of each wave (wave index -> devices).
    devices_per_wave: dict[int, int] = field(default_factory=dict)
    ever_ran_new: int = 0
    ever_ran_new_pct: float = 0.0
    install_failures: int = 0
    operator_actions: list[str] = field(default_factory=list)
    revert_version: int | None = None
    revert_rounds: int | None = None
    revert_seconds: float | None = None
    reverted_to_baseline_bytes: int | None = None
    gates: list[GateEvaluation] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    auc: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timeline"] = [{**s, "versions": {str(k): v for k, v in s["versions"].items()}} for s in data["timeline"]]
        data["devices_per_wave"] = {str(k): v for k, v in self.devices_per_wave.items()}
        return data


def run_scenario(
    scenario: Scenario,
    workdir: Path,
    variants: Variants,
    make_driver: Callable[[World], ReleaseDriver],
    *,
    world: WorldSettings,
    rollout: RolloutSettings,
    progress: Progress = lambda _: None,
    server_settings: dict[str, Any] | None = None,
) -> ScenarioResult:
    """Run ``scenario`` ("bad", "worse" or "good") in ``workdir`` and return what happened."""
    started = time.monotonic()
    with World(workdir, world, **(server_settings or {})) as sim:
        driver = make_driver(sim)
        sim.publish(variants.v1)  # the model's history: v2 is its second version
        baseline = sim.publish(variants.v2).version
        driver.pin_channel("stable", baseline)
        _settle(sim, baseline, progress)
        version = sim.publish(variants.v3[scenario]).version
        result = ScenarioResult(
            scenario=scenario,
            devices=len(sim.devices),
            waves=rollout.waves,
            wave_min_time_s=rollout.wave_min_time_s,
            baseline_version=baseline,
            version=version,
            auc={"v2": variants.auc["v2"], "v3": variants.auc[scenario]},
        )
        rollout_id = driver.start(version, rollout)
        t0 = time.time()
        result.timeline.append(Sample(-1, 0.0, dict(sorted(sim.versions().items())), 0, 0, "running"))
        wave = 0
        for round_index in range(rollout.max_rounds):
            sim.run_round()
            # Devices checked under the wave before this tick: they count for that wave.
            offered = sum(1 for d in sim.devices if d.offered_version == version)
            result.devices_per_wave[wave] = max(result.devices_per_wave.get(wave, 0), offered)
            driver.tick(time.time())
            view = driver.view(rollout_id, round_index, t0)
            _record(result, sim, view, round_index, t0, offered)
            wave = view.wave_index
            progress(
                f"{scenario}: round {round_index + 1}, wave {view.wave_index + 1}/{len(rollout.waves)} "
                f"({rollout.waves[view.wave_index]:g}%), {view.state}, {_on(sim, version)} devices on the new version"
            )
            if view.state in ("halted", "completed"):
                break
        result.rounds = len(result.timeline) - 1
        result.ever_ran_new = sum(d.ever_ran(version) for d in sim.devices)
        result.ever_ran_new_pct = 100.0 * result.ever_ran_new / len(sim.devices)
        result.install_failures = sum(1 for d in sim.devices if any(f[0] == version for f in d.install_failures))
        if result.final_state == "halted" and scenario == "bad":
            _revert(result, sim, driver, baseline, version, progress, t0)
    result.seconds = time.monotonic() - started
    return result


def _on(sim: World, version: int) -> int:
    return sim.versions().get(version, 0)


def _settle(sim: World, baseline: int, progress: Progress) -> None:
    """Rounds until every device runs ``baseline`` (a fresh fleet installs it in one)."""
    for _ in range(SETTLE_ROUNDS):
        sim.run_round()
        if _on(sim, baseline) == len(sim.devices):
            progress(f"every device runs v{baseline}")
            return
    raise RuntimeError(f"only {_on(sim, baseline)} of {len(sim.devices)} devices run v{baseline}")


def _record(
    result: ScenarioResult,
    sim: World,
    view: RolloutView,
    round_index: int,
    t0: float,
    offered: int,
) -> None:
    t = time.time() - t0
    result.timeline.append(
        Sample(round_index, t, dict(sorted(sim.versions().items())), offered, view.wave_index, view.state)
    )
    result.gates.extend(view.gates)
    result.final_state, result.final_wave, result.reason = view.state, view.wave_index, view.reason
    if view.state == "halted" and result.halted_in_wave is None:
        result.halted_in_wave, result.halted_at_s = view.wave_index, t
    if view.state == "completed" and result.completed_at_s is None:
        result.completed_at_s = t


def _revert(
    result: ScenarioResult,
    sim: World,
    driver: ReleaseDriver,
    baseline: int,
    version: int,
    progress: Progress,
    t0: float,
) -> None:
    """``edgerec revert --to baseline``, then rounds until every device that ran ``version`` runs baseline's bytes."""
    ran = [d for d in sim.devices if d.ever_ran(version)]
    baseline_bytes = sim.artifact_digests(baseline)
    started = time.time()
    result.revert_version = driver.revert(baseline)
    result.operator_actions.append(f"edgerec revert --to {baseline} (published v{result.revert_version})")
    for rounds in range(1, MAX_REVERT_ROUNDS + 1):
        sim.run_round()
        versions = dict(sorted(sim.versions().items()))
        result.timeline.append(
            Sample(result.rounds + rounds - 1, time.time() - t0, versions, 0, result.final_wave, "reverted")
        )
        back = sum(1 for d in ran if d.active_digest in baseline_bytes)
        progress(f"revert: round {rounds}, {back} of {len(ran)} devices that ran v{version} are on v{baseline}'s bytes")
        if back == len(ran):
            result.revert_rounds, result.revert_seconds = rounds, time.time() - started
            break
    result.reverted_to_baseline_bytes = sum(1 for d in ran if d.active_digest in baseline_bytes)


def criteria(result: ScenarioResult) -> list[tuple[str, bool]]:
    """The issue's criteria for ``result``'s scenario, each with whether the run met it."""
    last_wave = len(result.waves) - 1
    no_action = not result.operator_actions
    if result.scenario == "bad":
        return [
            ("halted in wave 1 by itself", result.halted_in_wave == 0 and no_action_before_halt(result)),
            (
                f"at most {max_ever_ran_pct(result):g}% of the fleet ever ran v3 (1.5x the first wave)",
                result.ever_ran_new_pct <= max_ever_ran_pct(result),
            ),
            (
                "after revert, every device that ran v3 is on v2's bytes within one check interval",
                result.revert_rounds == 1 and result.reverted_to_baseline_bytes == result.ever_ran_new,
            ),
        ]
    if result.scenario == "worse":
        return [("the gates halted it in wave 1 or 2", result.halted_in_wave in (0, 1) and no_action)]
    return [
        (
            "reached 100% through every wave with no operator action",
            result.final_state == "completed"
            and result.final_wave == last_wave
            and result.waves[last_wave] >= 100
            and no_action
            and sorted(result.devices_per_wave) == list(range(len(result.waves))),
        ),
        (
            "every device runs v3",
            result.timeline[-1].versions.get(result.version, 0) == result.devices if result.timeline else False,
        ),
    ]


def max_ever_ran_pct(result: ScenarioResult) -> float:
    """The share of the fleet that may ever run a bad version: 1.5% for a first wave of 1%."""
    return 1.5 * result.waves[0]


def no_action_before_halt(result: ScenarioResult) -> bool:
    """No operator action came before the rollout halted (a revert after it is expected)."""
    return all(action.startswith("edgerec revert") for action in result.operator_actions)


def summary_rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    """One row per scenario for the human table."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        per_wave = ", ".join(f"w{w + 1}:{n}" for w, n in sorted(r.devices_per_wave.items()))
        rows.append(
            (
                r.scenario,
                f"{r.final_state} in wave {r.final_wave + 1} ({r.waves[r.final_wave]:g}%)",
                per_wave,
                f"{r.ever_ran_new} ({r.ever_ran_new_pct:.1f}%)",
                f"{r.halted_at_s:.0f} s" if r.halted_at_s is not None else "-",
                f"{r.revert_rounds} round(s), {r.revert_seconds:.1f} s" if r.revert_rounds is not None else "-",
                ", ".join(r.operator_actions) or "none",
            )
        )
    return rows
