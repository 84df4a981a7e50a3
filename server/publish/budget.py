"""Budgeted partial updates (QuickUpdate): the most-changed rows of a new version within a byte budget.

A device on a tiny link cannot take every changed row of version M. Given its base
version N and a budget, this builds a real version P: N's weights, with the embedding
rows that changed most between N and M (largest L2 change first) and M's dense layers.
P is published like any version (its manifest says ``edgerec.partial_of = M`` and
``edgerec.partial_base = N``), its deltas from N are made at once, and the server
offers it to devices on N that ask with a payload budget. Devices that can afford M
are never offered P: "latest" means the latest full version.

The number of rows is found by measuring real payloads (quantize, then diff with the
server's delta codecs), not by estimating: a few secant steps on rows -> bytes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgerec.artifacts import PUBLISH_RECIPES
from edgerec.codecs import make_patch
from edgerec.errors import PublishError
from edgerec.evaluation import roc_auc
from edgerec.manifest import PARTIAL_BASE, PARTIAL_OF, Manifest, find_artifact
from edgerec.registry import ModelRegistry
from edgerec.registry.folder import version_folder
from edgerec.runtimes import OnnxRunner
from edgerec.server.payloads import DELTA_CODECS
from edgerec.server.publish.export import load_onnx, save_canonical
from edgerec.server.publish.gate import require_gate_data
from edgerec.server.publish.pipeline import MODEL_FILE, PublishOptions, publish
from edgerec.server.publish.quantize import find_embedding_tables, quantize_int8
from edgerec.server.publish.steps import PublishObserver, report_step

log = logging.getLogger(__name__)

_MAX_STEPS = 8


@dataclass(frozen=True)
class _ChangedRow:
    table: str
    row: int
    change: float


@dataclass(frozen=True)
class PartialResult:
    """The published partial version and how it was chosen."""

    manifest: Manifest
    rows_taken: int
    rows_changed: int
    payload_bytes: int
    budget_bytes: int


def publish_partial(
    registry: ModelRegistry,
    model: str,
    base_version: int,
    budget_bytes: int,
    *,
    target_version: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    no_gate: bool = False,
    observer: PublishObserver | None = None,
) -> PartialResult:
    """Build, check and publish the partial version of ``target_version`` (latest) for devices on ``base_version``.

    Its quantized artifact passes the accuracy gate on ``validation`` like any other, unless ``no_gate``.
    ``observer`` hears of the steps as :func:`~edgerec.server.publish.pipeline.publish` reports them, after a
    ``budget`` step that picks the rows.
    """
    require_gate_data(PUBLISH_RECIPES, validation, no_gate=no_gate)
    target_version = registry.resolve_version(model, target_version)
    if base_version >= target_version:
        raise PublishError(f"base version {base_version} is not older than target {target_version}")
    base = load_onnx(_fp32_model(registry, model, base_version))
    target = load_onnx(_fp32_model(registry, model, target_version))
    rows = _changed_rows(base, target)
    with tempfile.TemporaryDirectory(prefix="partial-", dir=registry.scratch_dir()) as tmp:
        with report_step(observer, "budget") as step:
            sizer = _PayloadSizer(registry, model, base_version, Path(tmp))
            cost = {0: sizer.cost(_blend(base, target, rows[:0]))}
            if cost[0] > budget_bytes:
                raise PublishError(
                    f"a budget of {budget_bytes} B cannot hold even the dense layers' update ({cost[0]} B)"
                )
            taken = _largest_fitting(
                lambda k: sizer.cost(_blend(base, target, rows[:k])), len(rows), budget_bytes, cost
            )
            step.detail = f"{taken} of {len(rows)} changed rows, {cost[taken]} B of payload"
        source = Path(tmp) / "partial" / MODEL_FILE
        save_canonical(_blend(base, target, rows[:taken]), source)
        annotations = {
            PARTIAL_OF: str(target_version),
            PARTIAL_BASE: str(base_version),
            "edgerec.budget_bytes": str(budget_bytes),
            "edgerec.rows_taken": f"{taken}/{len(rows)}",
        }
        if validation is not None:
            annotations |= _accuracy(registry, model, target_version, source, validation)
        options = PublishOptions(
            annotations=annotations, delta_bases=(base_version,), validation=validation, no_gate=no_gate
        )
        manifest = publish(source, model, registry, options, observer=observer)
    log.info(
        "partial version %d of %s: %d of %d changed rows, %d B payload for a %d B budget",
        manifest.version,
        model,
        taken,
        len(rows),
        cost[taken],
        budget_bytes,
    )
    return PartialResult(manifest, taken, len(rows), cost[taken], budget_bytes)


def _fp32_model(registry: ModelRegistry, model: str, version: int) -> Path:
    """A local path of a version's fp32 model, its other files (external weights) beside it."""
    _, manifest = registry.load_manifest(model, version)
    artifact = find_artifact(manifest, "fp32")
    if artifact is None:
        raise PublishError(f"{model} version {version} has no fp32 artifact")
    return version_folder(registry, model, version, [f.path for f in artifact.files]) / artifact.entrypoint


def _changed_rows(base: onnx.ModelProto, target: onnx.ModelProto) -> list[_ChangedRow]:
    """Every embedding row that differs between the versions, largest L2 change first."""
    base_tensors = {t.name: t for t in base.graph.initializer}
    target_tensors = {t.name: t for t in target.graph.initializer}
    if base_tensors.keys() != target_tensors.keys():
        raise PublishError("a partial update needs two versions of one architecture (their tensors differ)")
    rows: list[_ChangedRow] = []
    for name in find_embedding_tables(target):
        old, new = numpy_helper.to_array(base_tensors[name]), numpy_helper.to_array(target_tensors[name])
        if old.shape != new.shape:
            raise PublishError(f"table {name} changed shape {old.shape} -> {new.shape}: publish a full version")
        change = np.linalg.norm((new - old).astype(np.float64), axis=1)
        rows += [_ChangedRow(name, int(i), float(change[i])) for i in np.flatnonzero(change)]
    rows.sort(key=lambda r: (-r.change, r.table, r.row))
    return rows


def _blend(base: onnx.ModelProto, target: onnx.ModelProto, rows: list[_ChangedRow]) -> onnx.ModelProto:
    """The target's graph and dense tensors, the base's embedding tables with ``rows`` taken from the target."""
    blended = onnx.ModelProto()
    blended.CopyFrom(target)
    tables = set(find_embedding_tables(target))
    base_tensors = {t.name: t for t in base.graph.initializer}
    target_tensors = {t.name: t for t in target.graph.initializer}
    by_table: dict[str, list[int]] = {}
    for r in rows:
        by_table.setdefault(r.table, []).append(r.row)
    for index, tensor in enumerate(blended.graph.initializer):
        if tensor.name not in tables:
            continue
        values = numpy_helper.to_array(base_tensors[tensor.name]).copy()
        taken = by_table.get(tensor.name)
        if taken:
            values[taken] = numpy_helper.to_array(target_tensors[tensor.name])[taken]
        blended.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    return blended


def _largest_fitting(measure: Callable[[int], int], total: int, budget: int, cost: dict[int, int]) -> int:
    """The largest row count whose measured payload fits ``budget`` (secant steps on measured costs).

    ``cost`` holds the measurements so far (``cost[0]`` fits) and receives the new ones.
    """
    cost[total] = measure(total)
    if cost[total] <= budget:
        return total
    low, high = 0, total  # cost[low] <= budget < cost[high]
    for _ in range(_MAX_STEPS):
        if high - low <= 1:
            break
        slope = (cost[high] - cost[low]) / (high - low)
        guess = low + int((budget - cost[low]) / slope) if slope > 0 else (low + high) // 2
        guess = min(max(guess, low + 1), high - 1)
        cost[guess] = measure(guess)
        if cost[guess] <= budget:
            low = guess
        else:
            high = guess
    return low


class _PayloadSizer:
    """Measures what a candidate costs a device on ``base_version``: its int8 files' smallest payloads."""

    def __init__(self, registry: ModelRegistry, model: str, base_version: int, scratch: Path) -> None:
        _, manifest = registry.load_manifest(model, base_version)
        artifact = find_artifact(manifest, "int8")
        if artifact is None:
            raise PublishError(f"{model} version {base_version} has no int8 artifact to diff against")
        self.base_files = {f.path: registry.local_file(model, base_version, f.path) for f in artifact.files}
        self.scratch = scratch
        self.calls = 0

    def cost(self, candidate: onnx.ModelProto) -> int:
        self.calls += 1
        folder = self.scratch / f"candidate-{self.calls}"
        fp32 = save_canonical(candidate, folder / "fp32" / MODEL_FILE)
        quantize_int8(fp32, folder / "int8" / MODEL_FILE)
        total = 0
        for path, base in self.base_files.items():
            new = folder / path
            sizes = []
            for codec in DELTA_CODECS:
                patch = folder / f"{Path(path).name}.{codec}"
                make_patch(codec, base, new, patch)
                sizes.append(patch.stat().st_size)
            total += min(sizes)
        return total


def _accuracy(
    registry: ModelRegistry, model: str, target_version: int, partial_fp32: Path, validation: Mapping[str, np.ndarray]
) -> dict[str, str]:
    """AUC of the partial and the full version on the publisher's validation data, and their max |dp|."""
    labels = np.asarray(validation["labels"])
    inputs = {name: np.asarray(a) for name, a in validation.items() if name != "labels"}
    full = OnnxRunner(_fp32_model(registry, model, target_version))
    partial = OnnxRunner(partial_fp32)
    full_scores = np.asarray(full.run(inputs)[full.output_names[0]], dtype=np.float64).ravel()
    partial_scores = np.asarray(partial.run(inputs)[partial.output_names[0]], dtype=np.float64).ravel()
    return {
        "edgerec.partial_auc": f"{roc_auc(labels, partial_scores):.6f}",
        "edgerec.full_auc": f"{roc_auc(labels, full_scores):.6f}",
        "edgerec.partial_max_abs_dp": f"{float(np.max(np.abs(partial_scores - full_scores))):.6g}",
    }
