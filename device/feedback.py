"""Outcome feedback and per-version counts: what each model version did on this device, in aggregate.

The application says which of the items it showed for a prediction were clicked
(``EdgeClient.record_feedback``); :class:`OutcomeLedger` adds up, per model version, the items shown
(impressions), those clicked, and the scores the model gave them. It also takes each status report's
predict counters and credits their growth since the previous report to the version active then, so
a version's predictions, local errors and fallbacks survive a switch and a restart. Nothing else
is kept: no feature, item or score of a single request leaves the device, only these sums.

The ledger keeps the ``max_versions`` most recently active versions and saves itself atomically
(``outcomes.json`` in the model's data folder) at most every ``save_every_s`` and on :meth:`save`.
A file that does not parse is logged and replaced, never trusted.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgerec.fsutil import atomic_write_bytes

__all__ = ["FILE_NAME", "MAX_FILE_BYTES", "CounterSnapshot", "OutcomeLedger", "VersionOutcome"]

log = logging.getLogger(__name__)

FILE_NAME = "outcomes.json"
MAX_FILE_BYTES = 64 * 1024
DEFAULT_MAX_VERSIONS = 8
DEFAULT_SAVE_EVERY_S = 5.0
_MAX_COUNT = 2**63 - 1


@dataclass(frozen=True)
class VersionOutcome:
    """One version's sums on this device (cumulative across restarts)."""

    version: int
    predictions: int = 0
    local_errors: int = 0
    fallbacks: int = 0
    p99_s: float = 0.0
    impressions: int = 0
    clicks: int = 0
    score_sum: float = 0.0
    active_since_unix_s: float = 0.0
    updated_unix_s: float = 0.0


@dataclass(frozen=True)
class CounterSnapshot:
    """A client's predict counters since it started: what :meth:`OutcomeLedger.credit` takes."""

    predictions: int
    local_errors: int
    fallbacks: int
    p99_s: float


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise ValueError("a count must be an integer in range")
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError("a number must be finite and >= 0")
    return float(value)


def _parse(data: bytes, max_versions: int) -> dict[int, VersionOutcome]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("versions"), list):
        raise ValueError("not a format-1 outcome ledger")
    out: dict[int, VersionOutcome] = {}
    for entry in doc["versions"][:max_versions]:
        if not isinstance(entry, dict):
            raise ValueError("a version entry must be an object")
        outcome = VersionOutcome(
            version=_count(entry.get("version")),
            predictions=_count(entry.get("predictions")),
            local_errors=_count(entry.get("local_errors")),
            fallbacks=_count(entry.get("fallbacks")),
            p99_s=_number(entry.get("p99_s")),
            impressions=_count(entry.get("impressions")),
            clicks=_count(entry.get("clicks")),
            score_sum=_number(entry.get("score_sum")),
            active_since_unix_s=_number(entry.get("active_since_unix_s")),
            updated_unix_s=_number(entry.get("updated_unix_s")),
        )
        if outcome.clicks > outcome.impressions or outcome.version == 0:
            raise ValueError("more clicks than impressions, or version 0")
        out[outcome.version] = outcome
    return out


class OutcomeLedger:
    """Per-version impressions, clicks, score sums and predict counts, saved in ``folder``. Thread-safe."""

    def __init__(
        self,
        folder: Path,
        *,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        save_every_s: float = DEFAULT_SAVE_EVERY_S,
    ) -> None:
        if max_versions < 1 or save_every_s < 0:
            raise ValueError(f"need max_versions >= 1 and save_every_s >= 0, got {max_versions}, {save_every_s}")
        self.path = Path(folder) / FILE_NAME
        self.max_versions = max_versions
        self.save_every_s = save_every_s
        self._lock = threading.Lock()
        self._versions = self._load()
        self._dirty = False
        self._saved_at = time.monotonic()
        # The counters as the last credit saw them (they restart with the client, so they are not saved).
        self._last_counts: CounterSnapshot | None = None

    def _load(self) -> dict[int, VersionOutcome]:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read %s, starting a new outcome ledger: %s", self.path, exc)
            return {}
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            return _parse(data, self.max_versions)
        except (ValueError, RecursionError) as exc:
            log.warning("ignoring the malformed outcome ledger %s: %s", self.path, exc)
            return {}

    def record(self, version: int, *, impressions: int, clicks: int, score_sum: float) -> None:
        """Add feedback for ``version``: ``impressions`` items shown, ``clicks`` of them clicked, their scores'
        sum. ValueError for negative counts, more clicks than impressions or a non-finite sum."""
        if version < 1 or impressions < 0 or not 0 <= clicks <= impressions:
            raise ValueError(
                f"need version >= 1 and 0 <= clicks <= impressions, got {version}, {clicks}, {impressions}"
            )
        if not math.isfinite(score_sum) or not 0 <= score_sum <= impressions:
            raise ValueError(f"score_sum must be in 0..impressions, got {score_sum}")
        with self._lock:
            old = self._entry(version)
            self._put(
                replace(
                    old,
                    impressions=min(_MAX_COUNT, old.impressions + impressions),
                    clicks=min(_MAX_COUNT, old.clicks + clicks),
                    score_sum=old.score_sum + score_sum,
                )
            )
        self._maybe_save()

    def credit(self, active_version: int, counts: CounterSnapshot) -> None:
        """Credit the counters' growth since the previous call to ``active_version`` (0: none active)."""
        with self._lock:
            last = self._last_counts
            self._last_counts = counts
            if active_version < 1:
                return
            grew = last is None or counts.predictions >= last.predictions
            base = last if last is not None and grew else CounterSnapshot(0, 0, 0, 0.0)
            old = self._entry(active_version)
            self._put(
                replace(
                    old,
                    predictions=min(_MAX_COUNT, old.predictions + max(0, counts.predictions - base.predictions)),
                    local_errors=min(_MAX_COUNT, old.local_errors + max(0, counts.local_errors - base.local_errors)),
                    fallbacks=min(_MAX_COUNT, old.fallbacks + max(0, counts.fallbacks - base.fallbacks)),
                    p99_s=counts.p99_s if math.isfinite(counts.p99_s) and counts.p99_s > 0 else old.p99_s,
                )
            )
        self._maybe_save()

    def outcomes(self) -> list[VersionOutcome]:
        """Every version kept, most recently updated first."""
        with self._lock:
            return sorted(self._versions.values(), key=lambda o: (o.updated_unix_s, o.version), reverse=True)

    def get(self, version: int) -> VersionOutcome | None:
        with self._lock:
            return self._versions.get(version)

    def save(self) -> None:
        """Write the ledger now if it changed (atomically: a crash leaves the old file or the new)."""
        with self._lock:
            if not self._dirty:
                return
            versions = [vars(o) for o in self._versions.values()]
            self._dirty = False
            self._saved_at = time.monotonic()
        data = json.dumps({"format": 1, "versions": versions}, allow_nan=False).encode()
        try:
            atomic_write_bytes(self.path, data)
        except OSError as exc:
            with self._lock:
                self._dirty = True
            log.warning("cannot save the outcome ledger %s: %s", self.path, exc)

    def _maybe_save(self) -> None:
        if time.monotonic() - self._saved_at >= self.save_every_s:
            self.save()

    def _entry(self, version: int) -> VersionOutcome:
        found = self._versions.get(version)
        return found if found is not None else VersionOutcome(version, active_since_unix_s=time.time())

    def _put(self, outcome: VersionOutcome) -> None:
        self._versions[outcome.version] = replace(outcome, updated_unix_s=time.time())
        self._dirty = True
        while len(self._versions) > self.max_versions:
            oldest = min(self._versions.values(), key=lambda o: (o.updated_unix_s, o.version))
            del self._versions[oldest.version]
