"""Which artifact of a manifest a device runs: the one rule the server plans with and the device checks.

A manifest offers one artifact per recipe. A device states the recipes it accepts, in order of
preference, and the runtimes it has; it runs the first recipe in that order that the manifest
offers on one of those runtimes. An empty list means the defaults below (``update.proto``'s
``CheckUpdateRequest.recipes`` and ``.runtimes`` say the same), so a device that sends nothing
and a server that fills nothing in agree.

Used by the server's planner (which artifact an answer offers), the device's trust checks (an
answer may offer only an allowed recipe on a usable runtime), the device's artifact loader and
the server's fallback Predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from edgerec.errors import NoArtifactError
from edgerec.manifest import Artifact, Manifest, find_artifact

__all__ = [
    "DEFAULT_RECIPES",
    "DEFAULT_RUNTIMES",
    "ONNX_RECIPES",
    "PUBLISH_RECIPES",
    "TFLITE_RECIPES",
    "allowed_recipes",
    "choose_artifact",
    "usable_runtimes",
]

ONNX_RECIPES: Final = ("fp32", "int8", "int4")
"""The recipes publishing builds for onnxruntime."""
TFLITE_RECIPES: Final = ("tflite_fp32", "tflite_wi8")
"""The recipes publishing builds for LiteRT (the tflite extra)."""
PUBLISH_RECIPES: Final = ("fp32", "int8")
"""What ``edgerec publish`` builds unless told otherwise."""

DEFAULT_RECIPES: Final = ("int8", "fp32")
"""What a device accepts unless configured otherwise, best first (LiteRT recipes are opt-in)."""
DEFAULT_RUNTIMES: Final = ("onnxruntime",)
"""The runtimes a device that names none is taken to have."""


def allowed_recipes(recipes: Sequence[str]) -> tuple[str, ...]:
    """``recipes``, or the defaults when empty."""
    return tuple(recipes) or DEFAULT_RECIPES


def usable_runtimes(runtimes: Sequence[str]) -> tuple[str, ...]:
    """``runtimes``, or the defaults when empty."""
    return tuple(runtimes) or DEFAULT_RUNTIMES


def choose_artifact(manifest: Manifest, recipes: Sequence[str] = (), runtimes: Sequence[str] = ()) -> Artifact:
    """The first artifact in ``recipes`` order whose runtime is in ``runtimes`` (empty: the defaults).

    Raises :class:`~edgerec.errors.NoArtifactError` naming what the manifest offers when none fits.
    """
    wanted, usable = allowed_recipes(recipes), usable_runtimes(runtimes)
    for recipe in wanted:
        artifact = find_artifact(manifest, recipe)
        if artifact is not None and artifact.runtime in usable:
            return artifact
    offered = sorted(f"{a.recipe} ({a.runtime})" for a in manifest.artifacts)
    raise NoArtifactError(
        f"{manifest.model} version {manifest.version} offers {offered}; "
        f"asked for recipes {list(wanted)[:16]} on runtimes {list(usable)[:16]}"
    )
