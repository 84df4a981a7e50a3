"""What publishing reports while it runs: each long step as it starts and as it ends.

Publishing takes seconds to minutes (export, quantizing each recipe, the accuracy gate, golden
cases, registering, making payloads). The pipeline never prints: it logs, and calls an optional
:data:`PublishObserver` with a :class:`PublishStep` when a step starts (``seconds`` is None)
and again when it ends (with its duration and a short result in ``detail``). A CLI draws its
progress from those calls; a step that raises is reported as started only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["STEPS", "PublishObserver", "PublishStep", "StepOutcome", "report_step"]

log = logging.getLogger(__name__)

STEPS = ("budget", "export", "quantize", "gate", "golden", "register", "payloads")
"""The steps, in the order a publish runs them: ``budget`` for a partial version only, ``quantize``
(building a recipe's artifact) and ``gate`` once per recipe."""


@dataclass(frozen=True)
class PublishStep:
    """One step of a publish: ``name`` (one of :data:`STEPS`), the recipe it is about, if any."""

    name: str
    recipe: str = ""
    seconds: float | None = None  # None: the step starts; else it ended after this long
    detail: str = ""  # at the end: a short result ("passed, AUC drop +0.00012", "8 payloads")

    @property
    def finished(self) -> bool:
        return self.seconds is not None

    def label(self) -> str:
        """``quantize int8``: the step and its recipe."""
        return f"{self.name} {self.recipe}".strip()


PublishObserver = Callable[[PublishStep], None]


@dataclass
class StepOutcome:
    """What the block of :func:`report_step` sets for the end of its step."""

    detail: str = ""


@contextmanager
def report_step(observer: PublishObserver | None, name: str, recipe: str = "") -> Iterator[StepOutcome]:
    """Report ``name`` as started, run the block, then report it ended with its duration and ``detail``."""
    outcome = StepOutcome()
    if observer is not None:
        observer(PublishStep(name, recipe))
    started = time.perf_counter()
    yield outcome
    seconds = time.perf_counter() - started
    ended = PublishStep(name, recipe, seconds, outcome.detail)
    log.info("publish: %s took %.2f s %s", ended.label(), seconds, outcome.detail)
    if observer is not None:
        observer(ended)
