"""Admission of Predict work: the rows of all requests being decoded and run at once stay under a bound.

Memory of a runtime call grows with its rows; a request that would take the server past the bound is
refused at once (RESOURCE_EXHAUSTED, the caller may retry later), never queued.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from edgerec.errors import ResourceLimitError


class RowBudget:
    """Rows admitted at once, at most ``max_rows``; ``admit`` holds a request's rows while it runs."""

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.refused = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, rows: int) -> Iterator[None]:
        """Hold ``rows`` for the block; ResourceLimitError when they do not fit beside those in flight."""
        with self._lock:
            if self._in_flight + rows > self.max_rows:
                self.refused += 1
                raise ResourceLimitError(
                    f"the server is busy: {self._in_flight} rows in flight, {rows} more would pass its "
                    f"limit of {self.max_rows}; retry later"
                )
            self._in_flight += rows
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= rows

    @property
    def in_flight(self) -> int:
        """Rows admitted and not yet released."""
        with self._lock:
            return self._in_flight
