"""The accuracy gate: a quantized artifact is published only if it ranks (almost) as well as fp32.

``evaluate`` scores the publisher's validation data with the fp32 artifact and a candidate
(real onnxruntime sessions, the device's settings) and ``check_gate`` refuses a candidate
whose AUC drops by more than the limit, raising :class:`AccuracyGateError`.
``GateMetrics.annotations()`` gives the manifest annotations that record the result.
Every artifact but the fp32 reference goes through the gate: :func:`require_gate_data` refuses to
publish one without labelled validation data unless the publisher explicitly skips the gate
(``no_gate``); the manifest records which in ``Artifact.accuracy_gate``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from edgerec.errors import AccuracyGateError, PublishError
from edgerec.evaluation import log_loss, roc_auc
from edgerec.runtimes import ModelRunner, OnnxRunner
from edgerec.server.publish.signature import read_signature

__all__ = [
    "ANNOTATION_PREFIX",
    "DEFAULT_MAX_AUC_DROP",
    "LABELS",
    "REFERENCE_RECIPE",
    "GateMetrics",
    "check_gate",
    "evaluate",
    "gated_recipes",
    "require_gate_data",
    "score",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_AUC_DROP: Final = 0.001
LABELS: Final = "labels"
"""Key of the 0/1 click labels in the validation mapping (beside one array per model input)."""
ANNOTATION_PREFIX: Final = "edgerec.gate"
REFERENCE_RECIPE: Final = "fp32"
"""The artifact every other one is compared with."""
MIN_ROWS: Final = 1_000
"""Below this many validation rows an AUC difference is mostly noise: the gate warns."""
_CHUNK: Final = 8_192


@dataclass(frozen=True)
class GateMetrics:
    """How a candidate artifact scores against fp32 on the same validation rows."""

    recipe: str
    rows: int
    auc_fp32: float
    auc_candidate: float
    log_loss_fp32: float
    log_loss_candidate: float
    max_abs_dp: float
    p99_abs_dp: float

    @property
    def auc_drop(self) -> float:
        """``auc_fp32 - auc_candidate``: positive when the candidate ranks worse."""
        return self.auc_fp32 - self.auc_candidate

    def annotations(self, max_auc_drop: float | None = None) -> dict[str, str]:
        """Manifest annotations ``edgerec.gate.<recipe>.<metric>`` (with the limit, when given)."""
        values: dict[str, float | int] = {
            "rows": self.rows,
            "auc_fp32": self.auc_fp32,
            "auc": self.auc_candidate,
            "auc_drop": self.auc_drop,
            "log_loss_fp32": self.log_loss_fp32,
            "log_loss": self.log_loss_candidate,
            "max_abs_dp": self.max_abs_dp,
            "p99_abs_dp": self.p99_abs_dp,
        }
        if max_auc_drop is not None:
            values["max_auc_drop"] = max_auc_drop
        return {f"{ANNOTATION_PREFIX}.{self.recipe}.{key}": _format(value) for key, value in values.items()}

    def summary(self) -> str:
        """One line: AUC fp32 -> candidate, drop, log loss and |dp| on how many rows."""
        return (
            f"AUC {self.auc_fp32:.5f} (fp32) -> {self.auc_candidate:.5f} ({self.recipe}), drop {self.auc_drop:+.5f}; "
            f"log loss {self.log_loss_fp32:.5f} -> {self.log_loss_candidate:.5f}; "
            f"|dp| max {self.max_abs_dp:.2e}, p99 {self.p99_abs_dp:.2e}; {self.rows} validation rows"
        )


def evaluate(
    fp32_entrypoint: Path,
    candidate_entrypoint: Path | ModelRunner,
    validation: Mapping[str, np.ndarray],
    *,
    recipe: str | None = None,
) -> GateMetrics:
    """Score ``validation`` (the model inputs plus ``labels``) with both artifacts and compare.

    The candidate is an ONNX file or any loaded runner (a LiteRT artifact). ``recipe`` names
    it in metrics and messages (default: its folder's name, ``int8`` for
    ``<version>/int8/model.onnx``). Raises :class:`PublishError` when the
    validation data cannot be scored (no labels, one class only, missing inputs) and
    :class:`AccuracyGateError` when the candidate outputs NaN or infinite scores.
    """
    if recipe is not None:
        name = recipe
    elif isinstance(candidate_entrypoint, Path):
        name = candidate_entrypoint.parent.name
    else:
        raise ValueError("name the recipe of a candidate given as a runner")
    labels = _labels(validation)
    inputs = _model_inputs(fp32_entrypoint, validation, len(labels))
    if len(labels) < MIN_ROWS:
        logger.warning("the accuracy gate has only %d validation rows: AUC differences will be noisy", len(labels))
    reference = score(fp32_entrypoint, inputs)
    candidate = score(candidate_entrypoint, inputs)
    if not np.isfinite(reference).all():
        raise PublishError("the fp32 model gives non-finite scores on the validation data")
    bad = int(np.count_nonzero(~np.isfinite(candidate)))
    if bad:
        raise AccuracyGateError(f"recipe {name!r} refused: {bad} of {len(candidate)} validation scores are not finite")
    dp = np.abs(candidate - reference)
    metrics = GateMetrics(
        recipe=name,
        rows=len(labels),
        auc_fp32=roc_auc(labels, reference),
        auc_candidate=roc_auc(labels, candidate),
        log_loss_fp32=log_loss(labels, reference),
        log_loss_candidate=log_loss(labels, candidate),
        max_abs_dp=float(dp.max()),
        p99_abs_dp=float(np.percentile(dp, 99)),
    )
    logger.info("accuracy gate, %s", metrics.summary())
    return metrics


def gated_recipes(recipes: Sequence[str]) -> list[str]:
    """The recipes the gate compares with fp32: all but the reference."""
    return [recipe for recipe in recipes if recipe != REFERENCE_RECIPE]


def require_gate_data(recipes: Sequence[str], validation: Mapping[str, np.ndarray] | None, *, no_gate: bool) -> None:
    """Refuse (PublishError) to publish gated recipes without labelled validation data, unless ``no_gate``."""
    gated = gated_recipes(recipes)
    if not gated or no_gate or (validation is not None and LABELS in validation):
        return
    have = "no validation data" if validation is None else f"validation data without {LABELS!r}"
    raise PublishError(
        f"recipes {', '.join(gated)} must pass the accuracy gate against fp32 before they are published, "
        f"but there is {have}: give labelled validation data (edgerec publish --validation data.npz), "
        "or publish them unchecked with --no-gate (PublishOptions(no_gate=True))"
    )


def check_gate(metrics: GateMetrics, max_auc_drop: float = DEFAULT_MAX_AUC_DROP) -> None:
    """Raise :class:`AccuracyGateError` if the candidate's AUC dropped by more than ``max_auc_drop``."""
    if not metrics.auc_drop <= max_auc_drop:
        raise AccuracyGateError(
            f"recipe {metrics.recipe!r} refused by the accuracy gate: its AUC drop {metrics.auc_drop:.5f} exceeds "
            f"the limit {max_auc_drop:g} ({metrics.summary()}); publish without it or quantize it less aggressively"
        )
    logger.info(
        "recipe %r passes the accuracy gate (AUC drop %.5f <= %g)", metrics.recipe, metrics.auc_drop, max_auc_drop
    )


def score(model: Path | ModelRunner, inputs: Mapping[str, np.ndarray]) -> npt.NDArray[np.float64]:
    """The first output of ``model`` (an ONNX file or a runner) for ``inputs``, flattened, in chunks of 8192 rows."""
    runner: ModelRunner = OnnxRunner(model) if isinstance(model, Path) else model
    rows = len(next(iter(inputs.values())))
    parts = []
    for begin in range(0, rows, _CHUNK):
        chunk = {name: array[begin : begin + _CHUNK] for name, array in inputs.items()}
        parts.append(np.asarray(runner.run(chunk)[runner.output_names[0]], dtype=np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def _labels(validation: Mapping[str, np.ndarray]) -> npt.NDArray[np.float64]:
    if LABELS not in validation:
        raise PublishError(f"the accuracy gate needs {LABELS!r} (0/1 clicks) in the validation data")
    labels = np.asarray(validation[LABELS], dtype=np.float64).ravel()
    if not np.isin(labels, (0.0, 1.0)).all():
        raise PublishError("validation labels must be 0 or 1")
    if np.unique(labels).size < 2:
        raise PublishError("validation labels must hold both clicks and non-clicks to compute an AUC")
    return labels


def _model_inputs(model: Path, validation: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    specs, _ = read_signature(model)
    missing = [spec.name for spec in specs if spec.name not in validation]
    if missing:
        raise PublishError(f"the validation data lacks model inputs {missing}")
    inputs = {spec.name: np.ascontiguousarray(validation[spec.name]) for spec in specs}
    wrong = {name: len(array) for name, array in inputs.items() if len(array) != rows}
    if wrong:
        raise PublishError(f"validation inputs {wrong} do not have one row per label ({rows})")
    return inputs


def _format(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"
