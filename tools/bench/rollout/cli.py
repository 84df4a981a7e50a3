"""Run the rollout simulation: ``python -m edgerec.tools.bench.rollout [--devices 1000] [--out DIR] [--json]``.

Builds the model variants, then runs each scenario (``--scenarios bad,worse,good``) against its own
registry and real server, and writes ``rollout.md``, ``rollout.json`` and ``rollout.png`` to ``--out``.
Exits 1 when a scenario misses one of its criteria.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast

from edgerec.reference.data import ReferenceConfig
from edgerec.tools.bench.rollout.clicks import SlateSettings
from edgerec.tools.bench.rollout.report import table, to_json, write_outputs
from edgerec.tools.bench.rollout.scenario import (
    RolloutSettings,
    ScenarioResult,
    criteria,
    run_scenario,
    summary_rows,
)
from edgerec.tools.bench.rollout.variants import SCENARIOS, Scenario, build_variants
from edgerec.tools.bench.rollout.world import WorldSettings
from edgerec.tools.links.profiles import parse_duration

__all__ = ["main", "run"]

MODULE: Final = "edgerec.tools.bench.rollout"
log = logging.getLogger(MODULE)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: bad, worse, good")
    parser.add_argument("--waves", default="1,10,50,100", help="percent of the fleet per wave")
    parser.add_argument("--wave-min-time", default="20s", help="each wave's minimum time (wall clock)")
    parser.add_argument("--max-rounds", type=int, default=80, help="check intervals before a scenario gives up")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--ftz-fraction", type=float, default=0.3, help="devices whose hardware flushes subnormals")
    parser.add_argument("--impressions", type=int, default=20, help="items each device shows per check interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/rollout"))
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the tables")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(f"--scenarios takes a comma-separated list of {', '.join(SCENARIOS)}")
    if args.devices < 10 or args.max_rounds < 1 or args.impressions < 1:
        parser.error("need --devices >= 10, --max-rounds >= 1 and --impressions >= 1")
    args.scenario_list = cast(list[Scenario], scenarios)
    args.wave_list = tuple(float(w) for w in args.waves.split(","))
    args.wave_min_time_s = parse_duration(args.wave_min_time)
    return args


def run(args: argparse.Namespace, work: Path) -> tuple[list[ScenarioResult], dict[str, Any]]:
    """Build the variants, run every scenario; returns the results and the run's context."""
    from edgerec.tools.bench.rollout.release_driver import SERVER_SETTINGS, ServerRelease

    shown = 5
    world = WorldSettings(
        devices=args.devices,
        size=args.size,
        seed=args.seed,
        ftz_fraction=args.ftz_fraction,
        slates=SlateSettings(slates=max(args.impressions // shown, 1), candidates=20, shown=shown),
    )
    rollout = RolloutSettings(waves=args.wave_list, wave_min_time_s=args.wave_min_time_s, max_rounds=args.max_rounds)
    started = time.monotonic()
    log.info("building the model variants (%s, %d samples)", args.size, args.train_samples)
    variants = build_variants(
        work / "variants", ReferenceConfig.from_name(args.size), world.generator(), train_samples=args.train_samples
    )
    results = []
    for scenario in args.scenario_list:
        log.info("scenario %s: %d devices", scenario, args.devices)
        results.append(
            run_scenario(
                scenario,
                work / scenario,
                variants,
                ServerRelease,
                world=world,
                rollout=rollout,
                progress=log.info,
                server_settings=SERVER_SETTINGS,
            )
        )
    context = {
        "command": f"python -m {MODULE} " + " ".join(sys.argv[1:]),
        "devices": args.devices,
        "waves": ",".join(f"{w:g}" for w in args.wave_list),
        "wave minimum time (s)": args.wave_min_time_s,
        "flush-to-zero devices": f"{args.ftz_fraction:.0%}",
        "impressions per device per check interval": world.slates.slates * world.slates.shown,
        "model": f"reference {args.size}, {args.train_samples} training samples",
        "AUC on held-out data": ", ".join(f"{k} {v:.4f}" for k, v in variants.auc.items()),
        "oracle AUC": round(variants.oracle_auc, 4),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load average before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "seconds": round(time.monotonic() - started, 1),
    }
    return results, context


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("edgerec").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        results, context = run(args, Path(tmp))
    paths = write_outputs(results, context, args.out)
    if args.json:
        print(json.dumps(to_json(results, context), indent=2))
    else:
        print(
            table(
                ("scenario", "ended", "devices per wave", "ever ran v3", "halted after", "revert", "actions"),
                summary_rows(results),
            )
        )
        for result in results:
            for what, ok in criteria(result):
                print(f"{result.scenario}: {'PASS' if ok else 'FAIL'}: {what}")
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(ok for r in results for _, ok in criteria(r)) else 1
