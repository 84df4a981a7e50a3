"""The rollout controller: on each tick, checks every running rollout's current wave against its gates
and moves it (next wave, awaiting approval, completed, halted), writing each move with compare-and-swap.

Any number of replicas may run one over the same registry: a tick re-reads the policy before each move
and applies it only if the rollout is still in the state and wave it evaluated, so a wave advances once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgerec.errors import EdgerecError
from edgerec.registry import ModelRegistry
from edgerec.server.release import gates, rollouts
from edgerec.server.release.cohorts import in_wave
from edgerec.server.release.decide import targets
from edgerec.server.release.gates import GateReport, GateThresholds
from edgerec.server.release.policy import ReleasePolicy, Rollout, load_policy, update_policy
from edgerec.server.release.records import DeviceRecord, FleetSource
from edgerec.server.release.targeting import Attributes

log = logging.getLogger(__name__)

__all__ = ["Cohorts", "Evaluate", "Move", "RolloutController", "split_cohorts"]

Evaluate = Callable[..., GateReport]


@dataclass(frozen=True)
class Cohorts:
    """A wave's devices: ``treatment`` were offered the rollout's version, ``control`` its baseline."""

    treatment: tuple[DeviceRecord, ...]
    control: tuple[DeviceRecord, ...]


@dataclass(frozen=True)
class Move:
    """A rollout one tick moved (or re-recorded): from which state and wave to which."""

    model: str
    rollout_id: str
    before: tuple[str, int]
    after: tuple[str, int]


def attributes_of(record: DeviceRecord) -> Attributes:
    """What a device reported, as targeting expressions read it."""
    return Attributes(record.runtimes, (), record.app_version, record.channel, record.labels)


def split_cohorts(rollout: Rollout, devices: Sequence[DeviceRecord]) -> Cohorts:
    """The targeted devices of ``rollout``'s current wave offered its version, and the targeted ones
    outside the wave kept on its baseline."""
    treatment: list[DeviceRecord] = []
    control: list[DeviceRecord] = []
    for record in devices:
        if not targets(rollout, attributes_of(record)):
            continue
        if in_wave(rollout.seed, record.device_id, rollout.percent):
            if record.offered_version == rollout.version:
                treatment.append(record)
        elif record.offered_version == rollout.baseline_version:
            control.append(record)
    return Cohorts(tuple(treatment), tuple(control))


class RolloutController:
    """Moves the registry's running rollouts by their gates; ``tick()`` once, or ``start()`` a thread
    that ticks every ``tick_s`` seconds until ``stop()``."""

    def __init__(
        self,
        registry: ModelRegistry,
        fleet: FleetSource,
        *,
        thresholds: GateThresholds | None = None,
        evaluate: Evaluate = gates.evaluate_wave,
        clock: Callable[[], float] = time.time,
        tick_s: float = 10.0,
    ) -> None:
        self.registry = registry
        self.fleet = fleet
        self.thresholds = thresholds if thresholds is not None else GateThresholds()
        self.evaluate = evaluate
        self.clock = clock
        self.tick_s = tick_s
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: float | None = None) -> list[Move]:
        """Check every running rollout of every model once; return the moves written."""
        moment = self.clock() if now is None else now
        moves: list[Move] = []
        for model in self.registry.models():
            try:
                moves.extend(self._tick_model(model, moment))
            except EdgerecError as exc:
                log.warning("rollouts of %s not checked this tick: %s", model[:80], exc)
        self.ticks += 1
        return moves

    def _tick_model(self, model: str, now: float) -> list[Move]:
        policy, _ = load_policy(self.registry, model)
        if policy is None:
            return []
        running = [r for r in policy.rollouts if r.state == "running"]
        if not running:
            return []
        devices = self.fleet.devices(model)
        moves = []
        for rollout in running:
            cohorts = split_cohorts(rollout, devices)
            report = self.evaluate(
                version=rollout.version,
                baseline_version=rollout.baseline_version,
                treatment=cohorts.treatment,
                control=cohorts.control,
                wave_started_unix_s=rollout.wave_started_unix_s,
                now_unix_s=now,
                thresholds=self.wave_thresholds(rollout),
            )
            move = self._apply(model, rollout, report, cohorts, now)
            if move is not None:
                moves.append(move)
        return moves

    def wave_thresholds(self, rollout: Rollout) -> GateThresholds:
        """The thresholds of ``rollout``'s current wave: the server's, with the rollout's own overrides
        (``Rollout.gate_thresholds``) in their place. A wave of every targeted device leaves no control
        cohort, so its comparisons are skipped instead of waited for (its own health rates still decide),
        whatever the rollout set."""
        thresholds = self.thresholds.overridden(rollout.gate_thresholds)
        if rollout.percent >= 100:
            return dataclasses.replace(thresholds, require_control=False)
        return thresholds

    def _apply(self, model: str, rollout: Rollout, report: GateReport, sizes: Cohorts, now: float) -> Move | None:
        """Write ``rollout``'s step for ``report`` unless it moved meanwhile; the move, if this call made one."""
        seen = (rollout.state, rollout.wave_index)
        wrote = False  # by the change's last run (runs before it lost a race do not count)

        def change(current: ReleasePolicy) -> ReleasePolicy:
            nonlocal wrote
            mine = current.rollout(rollout.id)
            wrote = False
            if mine is None or (mine.state, mine.wave_index) != seen:
                return current  # another replica or an operator moved it meanwhile: theirs stands
            changed = rollouts.step(
                current, rollout.id, report, now, treatment=len(sizes.treatment), control=len(sizes.control)
            )
            wrote = changed != current
            return changed

        after = update_policy(self.registry, model, change).rollout(rollout.id)
        if wrote and after is not None and (after.state, after.wave_index) != seen:
            return Move(model, rollout.id, seen, (after.state, after.wave_index))
        return None

    def start(self) -> RolloutController:
        self._thread = threading.Thread(target=self._loop, name="edgerec-rollouts", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # a bad tick must not end the controller: the next one tries again
                log.exception("rollout controller tick failed")
