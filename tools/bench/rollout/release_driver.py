"""The server's release machinery, driven by the simulation: policy changes, the controller's tick, revert.

The server runs no controller thread of its own here (``rollout_tick_s=None``): the simulation ticks a
:class:`~edgerec.server.release.controller.RolloutController` over the same registry and the server's
fleet records after each round, through the controller's public ``evaluate`` seam so that every gate
verdict and its numbers are kept (the policy keeps only the latest per wave).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from edgerec.server.release import gates, rollouts
from edgerec.server.release.controller import RolloutController
from edgerec.server.release.gates import GateReport, GateThresholds
from edgerec.server.release.policy import ReleasePolicy, load_policy, update_policy
from edgerec.server.release.revert import revert
from edgerec.tools.bench.rollout.scenario import GateEvaluation, RolloutSettings, RolloutView
from edgerec.tools.bench.rollout.world import MODEL, World

__all__ = ["SERVER_SETTINGS", "ServerRelease"]

SERVER_SETTINGS: dict[str, Any] = {"rollout_tick_s": None, "policy_refresh_s": 0.0}
"""What the simulation's server is started with: no controller thread (the simulation ticks one), and
every CheckUpdate reads the current policy."""


class ServerRelease:
    """:class:`~.scenario.ReleaseDriver` over a :class:`~.world.World`'s server and registry."""

    def __init__(self, world: World, thresholds: GateThresholds | None = None) -> None:
        self.world = world
        fleet = world.server.fleet
        assert fleet is not None, "the server keeps fleet records"
        self._lock = threading.Lock()
        self._evaluations: list[tuple[float, int, GateReport, int, int]] = []
        self._wave = 0
        self.controller = RolloutController(
            world.registry, fleet, thresholds=thresholds, evaluate=self._evaluate, clock=time.time
        )

    def _evaluate(self, **kwargs: Any) -> GateReport:
        report = gates.evaluate_wave(**kwargs)
        with self._lock:
            self._evaluations.append(
                (kwargs["now_unix_s"], self._wave, report, len(kwargs["treatment"]), len(kwargs["control"]))
            )
        return report

    def pin_channel(self, channel: str, version: int) -> None:
        def change(policy: ReleasePolicy) -> ReleasePolicy:
            return dataclasses.replace(policy, channels={**policy.channels, channel: version})

        update_policy(self.world.registry, MODEL, change)

    def start(self, version: int, settings: RolloutSettings) -> str:
        published = self.world.registry.versions(MODEL)
        now = time.time()

        def change(policy: ReleasePolicy) -> ReleasePolicy:
            return rollouts.start_rollout(
                policy,
                version=version,
                published=published,
                now=now,
                waves=settings.waves,
                wave_min_time_s=settings.wave_min_time_s,
                seed=settings.seed,
            )

        policy = update_policy(self.world.registry, MODEL, change)
        return policy.rollouts[-1].id

    def tick(self, now_unix_s: float) -> None:
        policy, _ = load_policy(self.world.registry, MODEL)
        running = [r for r in policy.rollouts if r.state == "running"] if policy is not None else []
        self._wave = running[-1].wave_index if running else 0
        self.controller.tick(now_unix_s)

    def view(self, rollout_id: str, round_index: int, t0: float) -> RolloutView:
        policy, _ = load_policy(self.world.registry, MODEL)
        rollout = policy.rollout(rollout_id) if policy is not None else None
        if rollout is None:
            raise RuntimeError(f"rollout {rollout_id} is gone from the release policy")
        with self._lock:
            fresh, self._evaluations = self._evaluations, []
        evaluations = tuple(
            GateEvaluation(
                round=round_index,
                t_s=now - t0,
                wave=wave,
                verdict=report.verdict,
                treatment=treatment,
                control=control,
                reasons=tuple(report.reasons),
                numbers=dict(report.numbers),
            )
            for now, wave, report, treatment, control in fresh
        )
        return RolloutView(rollout.state, rollout.wave_index, rollout.reason, evaluations)

    def revert(self, to_version: int) -> int:
        """What ``edgerec revert --to`` does; returns the new version carrying ``to_version``'s bytes."""
        return revert(self.world.registry, MODEL, to_version).version
