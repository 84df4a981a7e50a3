"""The interface every runtime implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class ModelRunner(Protocol):
    """A loaded model: ``run`` takes arrays by input name and returns arrays by output name."""

    output_names: list[str]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
