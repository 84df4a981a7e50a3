"""Clicks from the reference data's ground truth: what a device shows and what its user clicks.

Each round a device gets ``slates`` slates of ``candidates`` items (rows of the reference data: an
item and its context), scores every candidate with the version it runs, shows the ``shown`` best of
each slate, and its user clicks each shown item with the item's true click probability
(:attr:`~edgerec.reference.data.ClickBatch.true_prob`). A model that ranks worse shows items with
lower true probabilities, so its click-through rate is lower; its predicted scores against the clicks
measure its calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgerec.reference.data import ClickBatch, ClickGenerator

__all__ = ["Feedback", "SlateSettings", "draw_candidates", "show_and_click"]

# Days of the reference data the simulation draws candidates from start here (training used the first days).
CANDIDATE_DAY_BASE = 1_000

Scorer = Callable[[dict[str, np.ndarray]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class SlateSettings:
    """How many items a device scores, shows and offers for clicks each round."""

    slates: int = 4
    candidates: int = 20
    shown: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.shown <= self.candidates or self.slates < 1:
            raise ValueError(f"need 1 <= shown <= candidates and slates >= 1, got {self}")

    @property
    def rows_per_device(self) -> int:
        """Candidates one device scores in one round."""
        return self.slates * self.candidates


@dataclass(frozen=True)
class Feedback:
    """One device's outcomes of one round: predictions made, items shown and clicked, scores of those shown."""

    predictions: int
    impressions: int
    clicks: int
    score_sum: float


def draw_candidates(generator: ClickGenerator, round_index: int, devices: int, settings: SlateSettings) -> ClickBatch:
    """The candidates of every device for one round: ``devices * rows_per_device`` rows, device-major."""
    return generator.day(CANDIDATE_DAY_BASE + round_index, devices * settings.rows_per_device)


def show_and_click(
    scores: npt.NDArray[np.float32],
    true_prob: npt.NDArray[np.float32],
    settings: SlateSettings,
    rng: np.random.Generator,
) -> list[Feedback]:
    """Per device (rows device-major, ``rows_per_device`` each): show each slate's best items, draw the clicks."""
    per_slate = settings.candidates
    slate_scores = scores.reshape(-1, per_slate)
    slate_truth = true_prob.reshape(-1, per_slate)
    top = np.argpartition(-slate_scores, settings.shown - 1, axis=1)[:, : settings.shown]
    shown_scores = np.take_along_axis(slate_scores, top, axis=1).astype(np.float64)
    shown_truth = np.take_along_axis(slate_truth, top, axis=1).astype(np.float64)
    clicked = rng.random(shown_truth.shape) < shown_truth
    by_device = shown_scores.reshape(-1, settings.slates * settings.shown)
    clicks = clicked.reshape(by_device.shape).sum(axis=1)
    sums = by_device.sum(axis=1)
    impressions = settings.slates * settings.shown
    return [
        Feedback(predictions=settings.rows_per_device, impressions=impressions, clicks=int(c), score_sum=float(s))
        for c, s in zip(clicks, sums, strict=True)
    ]
