"""Observer: the public seam to watch what a client does, sync phase by phase and prediction by prediction.

Subclass :class:`Observer`, override what you need, and pass it to ``EdgeClient(...,
observer=...)``. Calls come on the thread doing the work (the caller of ``sync`` or ``predict``),
in order, so keep them quick; an exception an observer raises is logged and ignored (it never
fails a sync or a prediction). A profiler times phases with it, a progress bar reads bytes from
it, and a fault runner stops a process at a named phase.

A sync goes through these phases, in this order (phases in brackets happen once per file or
payload, several times or not at all)::

    CHECK -> [PLAN -> (DOWNLOAD -> PROGRESS... -> DOWNLOADED) / SOURCE_FAILED... -> APPLY ...
          -> VERIFY -> HEALTH -> ACTIVATE -> SWITCH -> PRUNE -> ACTIVATED] -> DONE   (or FAILED)

A device already up to date goes CHECK -> DONE. A delta that fails to apply is replaced by full
files: a second CHECK and PLAN follow. An expired URL brings a second CHECK in the middle of a
download (for fresh links).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgerec.device.local_model import Prediction

log = logging.getLogger(__name__)


class SyncPhase(enum.StrEnum):
    """A step of a sync, named where a newcomer would look for it."""

    CHECK = "check"
    """A CheckUpdate goes out (``version``: the version the device builds on, 0 for none)."""
    PLAN = "plan"
    """The answer is verified and its plan checked: ``version`` is offered, ``total`` payload bytes to fetch."""
    DOWNLOAD = "download"
    """A payload's download starts: ``path`` is the file it builds, ``total`` its size, ``done`` bytes already
    here, ``detail`` its codec."""
    PROGRESS = "progress"
    """Bytes of the payload arrived: ``done`` of ``total``, just written by ``source`` ("grpc", "http", ...)."""
    SOURCE_FAILED = "source_failed"
    """One source of the payload failed (``source``, ``detail``: why); the download goes on from the next."""
    DOWNLOADED = "downloaded"
    """The payload is complete and its sha256 checked; its ``.part`` is renamed to ``.payload`` next."""
    APPLY = "apply"
    """A staged file is built from its payload, or copied from the base (``path``; ``detail``: the codec)."""
    VERIFY = "verify"
    """Every staged file is checked against the signed manifest (size and sha256)."""
    HEALTH = "health"
    """The staged model is loaded and runs the manifest's golden cases."""
    ACTIVATE = "activate"
    """The staged version is checked and its files made durable; it is moved into ``versions/`` next."""
    SWITCH = "switch"
    """The version's folder is in place; ``state.json`` is replaced next to make it the active one."""
    PRUNE = "prune"
    """It is active; versions no longer kept are removed next."""
    ACTIVATED = "activated"
    """Activation is done; downloads kept for this update are removed next."""
    DONE = "done"
    """The sync ended: ``version`` is the active version; ``detail`` says "updated", "current" or "held back"."""
    FAILED = "failed"
    """The sync raised: ``detail`` names the error; nothing active changed."""


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """One sync phase as an observer sees it; fields a phase does not use are left empty."""

    phase: SyncPhase
    model: str
    version: int = 0
    path: str = ""
    done: int = 0
    total: int = 0
    source: str = ""
    detail: str = ""


class Observer:
    """Hooks for what a client does; every default does nothing."""

    def on_sync(self, event: SyncEvent) -> None:
        """A sync reached ``event.phase`` (see :class:`SyncPhase`)."""

    def on_predict(self, prediction: Prediction) -> None:
        """``predict`` answered: ``prediction.source``, ``.version``, ``.latency_s`` and ``.fallback`` say how.

        Not called for a prediction that raised (a typed error reaches the caller instead).
        """


def notify_sync(observer: Observer | None, event: SyncEvent) -> None:
    """Tell ``observer`` (if any) about ``event``; its exceptions are logged, never raised."""
    if observer is None:
        return
    try:
        observer.on_sync(event)
    except Exception:
        log.exception("observer failed on %s", event.phase)


def overrides_predict(observer: Observer | None) -> bool:
    """Whether ``observer`` listens to predictions (the predict path adds nothing for one that does not)."""
    return observer is not None and type(observer).on_predict is not Observer.on_predict
