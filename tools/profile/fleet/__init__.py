"""``edgerec profile fleet``: many simulated devices updating at once from one server.

N fresh devices run as asyncio tasks in one process (:mod:`.runner`); each (:mod:`.device`) checks
for an update, verifies the plan, and downloads every payload over its own paced link from a
payload source (:mod:`.source`: gRPC now, HTTP mirrors next), resuming after failures within
bounded retries and a deadline. The server's CPU and memory are sampled from ``/proc``
(:mod:`.sampler`); :mod:`.report` compares the fleet's completion with the link-limited ideal
and writes JSON, CSV and a devices-done-over-time plot.
"""

from edgerec.tools.profile.fleet.report import FleetReport
from edgerec.tools.profile.fleet.runner import run_fleet
from edgerec.tools.profile.fleet.settings import FleetSettings, RetryPolicy

__all__ = ["FleetReport", "FleetSettings", "RetryPolicy", "run_fleet"]
