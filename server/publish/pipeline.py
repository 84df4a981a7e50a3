"""Publishing: source model -> ONNX (and optional TFLite) artifacts -> gate -> manifest -> registry -> payloads.

Each long step is logged and reported to an optional observer (:mod:`edgerec.server.publish.steps`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgerec.artifacts import ONNX_RECIPES, PUBLISH_RECIPES, TFLITE_RECIPES
from edgerec.errors import PublishError
from edgerec.hashing import sha256_file
from edgerec.manifest import (
    FORMAT_VERSION,
    AccuracyGate,
    Artifact,
    ArtifactFile,
    FixedBatchFile,
    Manifest,
    SignedManifest,
    TensorSpec,
    make_artifact,
    now_rfc3339,
    sign_nothing,
    validate_model_name,
)
from edgerec.registry import ModelRegistry
from edgerec.runtimes import ModelRunner
from edgerec.server.payloads import DELTA_CODECS, FULL, PayloadStore, version_file
from edgerec.server.publish.gate import (
    DEFAULT_MAX_AUC_DROP,
    LABELS,
    REFERENCE_RECIPE,
    check_gate,
    evaluate,
    require_gate_data,
)
from edgerec.server.publish.golden import golden_cases, golden_inputs
from edgerec.server.publish.signature import read_signature
from edgerec.server.publish.steps import PublishObserver, report_step
from edgerec.server.publish.tflite import DEFAULT_BATCH_SIZES
from edgerec.units import format_bytes

log = logging.getLogger(__name__)

RECIPES = (*ONNX_RECIPES, *TFLITE_RECIPES)
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class PublishOptions:
    """How to publish; the defaults suit the reference model."""

    recipes: Sequence[str] = PUBLISH_RECIPES
    # A quantized artifact whose AUC falls more than this below fp32's on the validation data is refused.
    max_auc_drop: float = DEFAULT_MAX_AUC_DROP
    # Deltas from this many earlier versions are made now, so the first devices wait for nothing.
    delta_depth: int = 1
    delta_codecs: Sequence[str] = DELTA_CODECS
    # Make deltas from exactly these versions instead (a partial update names its base).
    delta_bases: Sequence[int] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    # The publisher's validation data: one array per model input plus "labels". Every recipe but fp32
    # must pass the accuracy gate on it, unless no_gate says explicitly to publish them unchecked.
    validation: Mapping[str, np.ndarray] | None = None
    no_gate: bool = False
    # Batch sizes of the TFLite recipes (one .tflite file each; the device pads to the next size).
    tflite_batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES


def publish(
    source: Path,
    name: str,
    registry: ModelRegistry,
    options: PublishOptions | None = None,
    *,
    observer: PublishObserver | None = None,
) -> Manifest:
    """Publish ``source`` (a ``.pt2`` torch.export program or an ``.onnx`` file) as the next version.

    ``observer`` hears of each step as it starts and ends (export, quantize and gate per recipe,
    golden cases, register, payloads).
    """
    options = options or PublishOptions()
    validate_model_name(name)
    if not source.exists():
        raise PublishError(f"source {source} does not exist")
    unknown = set(options.recipes) - set(RECIPES)
    if unknown or not options.recipes:
        raise PublishError(f"unknown recipes {sorted(unknown)}; choose from {list(RECIPES)}")
    if set(options.recipes) & set(TFLITE_RECIPES):
        from edgerec.server.publish.tflite import tflite_missing

        missing = tflite_missing()
        if missing:
            raise PublishError(missing)
    require_gate_data(options.recipes, options.validation, no_gate=options.no_gate)
    from edgerec.server.publish.export import to_onnx  # deferred: pulls in torch and onnx

    with tempfile.TemporaryDirectory(prefix="publish-", dir=registry.scratch_dir()) as tmp:
        staged = Path(tmp) / "version"
        with report_step(observer, "export", "fp32") as step:
            fp32_model = to_onnx(source, staged / "fp32" / MODEL_FILE)
            step.detail = format_bytes(_folder_bytes(fp32_model.parent))
        gate_annotations = _quantize_behind_gate(fp32_model, staged, options, observer)
        inputs, outputs = read_signature(fp32_model)
        runners, tflite_annotations = _tflite_behind_gate(
            source, fp32_model, staged, inputs, outputs, options, observer
        )
        gate_annotations |= tflite_annotations
        if "fp32" not in options.recipes:
            shutil.rmtree(staged / "fp32")
        artifacts = [_describe_artifact(staged, recipe, options) for recipe in options.recipes]
        for artifact in artifacts:
            artifact.accuracy_gate = _gate_record(artifact.recipe, options)
        entrypoints: dict[str, Path | ModelRunner] = {a.recipe: staged / a.entrypoint for a in artifacts}
        with report_step(observer, "golden") as step:
            golden = golden_cases(golden_inputs(inputs, options.validation), entrypoints | runners)
            step.detail = f"{len(golden)} cases"
        draft = Manifest(
            format_version=FORMAT_VERSION,
            model=name,
            version=registry.next_version(name),
            created_at=now_rfc3339(),
            inputs=inputs,
            outputs=outputs,
            artifacts=artifacts,
            annotations={"source": source.name, **gate_annotations, **options.annotations},
            golden=golden,
        )

        def numbered(version: int) -> SignedManifest:
            manifest = Manifest()
            manifest.CopyFrom(draft)
            manifest.version = version
            return sign_nothing(manifest)

        with report_step(observer, "register") as step:
            manifest = registry.add_version(name, staged, numbered)
            step.detail = f"{name} version {manifest.version}"
    with report_step(observer, "payloads") as step:
        made = prepare_payloads(registry, manifest, options)
        step.detail = f"{made} payloads"
    return manifest


def _quantize_behind_gate(
    fp32_model: Path, staged: Path, options: PublishOptions, observer: PublishObserver | None
) -> dict[str, str]:
    """Build each quantized recipe asked for; refuse one that fails the accuracy gate. Returns its metrics."""
    from edgerec.server.publish.quantize import quantize_int8
    from edgerec.server.publish.quantize_int4 import quantize_int4

    annotations: dict[str, str] = {}
    for recipe, quantize in (("int8", quantize_int8), ("int4", quantize_int4)):
        if recipe not in options.recipes:
            continue
        with report_step(observer, "quantize", recipe) as step:
            candidate = quantize(fp32_model, staged / recipe / MODEL_FILE)
            step.detail = format_bytes(_folder_bytes(candidate.parent))
        annotations |= _gate(fp32_model, candidate, recipe, options, observer)
    return annotations


def _gate(
    fp32_model: Path,
    candidate: Path | ModelRunner,
    recipe: str,
    options: PublishOptions,
    observer: PublishObserver | None,
) -> dict[str, str]:
    """Score ``candidate`` against fp32 (raising before anything is registered if it fails); its annotations."""
    with report_step(observer, "gate", recipe) as step:
        gate_data = _gate_data(options)
        if gate_data is None:
            step.detail = "skipped (no_gate)"
            return {f"edgerec.gate.{recipe}.status": _SKIPPED}
        metrics = evaluate(fp32_model, candidate, gate_data, recipe=recipe)
        check_gate(metrics, options.max_auc_drop)
        step.detail = f"passed, AUC drop {metrics.auc_drop:+.5f} (limit {options.max_auc_drop:g})"
        return metrics.annotations(options.max_auc_drop)


def _tflite_behind_gate(
    source: Path,
    fp32_model: Path,
    staged: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    options: PublishOptions,
    observer: PublishObserver | None,
) -> tuple[dict[str, ModelRunner], dict[str, str]]:
    """Export each TFLite recipe asked for, gate it against the fp32 ONNX model; its runner for the golden cases."""
    recipes = [recipe for recipe in options.recipes if recipe in TFLITE_RECIPES]
    if not recipes:
        return {}, {}
    from edgerec.runtimes.litert import LiteRTBatchRunner
    from edgerec.server.publish.tflite import export_tflite

    sample = golden_inputs(inputs, options.validation)
    runners: dict[str, ModelRunner] = {}
    annotations: dict[str, str] = {}
    for recipe in recipes:
        with report_step(observer, "quantize", recipe) as step:
            files = export_tflite(source, staged / recipe, recipe, options.tflite_batch_sizes, sample)
            step.detail = format_bytes(_folder_bytes(staged / recipe))
        runner = LiteRTBatchRunner(files, input_names=[s.name for s in inputs], output_names=[s.name for s in outputs])
        annotations |= _gate(fp32_model, runner, recipe, options, observer)
        runners[recipe] = runner
    return runners, annotations


_SKIPPED = "skipped: published with no_gate (--no-gate)"


def _gate_data(options: PublishOptions) -> Mapping[str, np.ndarray] | None:
    """The labelled data the gate scores recipes on; None when the publisher skips the gate.

    require_gate_data has refused to publish gated recipes with neither data nor no_gate.
    """
    if options.no_gate or options.validation is None or LABELS not in options.validation:
        return None
    return options.validation


def _gate_record(recipe: str, options: PublishOptions) -> AccuracyGate:
    if recipe == REFERENCE_RECIPE:
        return AccuracyGate.ACCURACY_GATE_REFERENCE
    return AccuracyGate.ACCURACY_GATE_PASSED if _gate_data(options) is not None else AccuracyGate.ACCURACY_GATE_SKIPPED


def _describe_artifact(staged: Path, recipe: str, options: PublishOptions) -> Artifact:
    folder = staged / recipe
    files = [
        ArtifactFile(path=p.relative_to(staged).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    if recipe not in TFLITE_RECIPES:
        return make_artifact(recipe, "onnxruntime", f"{recipe}/{MODEL_FILE}", files)
    from edgerec.server.publish.tflite import file_name

    sizes = sorted(set(options.tflite_batch_sizes))
    artifact = make_artifact(recipe, "litert", f"{recipe}/{file_name(sizes[0])}", files)
    artifact.fixed_batches.extend(FixedBatchFile(batch_size=n, path=f"{recipe}/{file_name(n)}") for n in sizes)
    return artifact


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare_payloads(registry: ModelRegistry, manifest: Manifest, options: PublishOptions) -> int:
    """Make the full payloads of a new version and its deltas from earlier versions (see PublishOptions).

    Returns how many payloads there are for it now (made or found).
    """
    store = PayloadStore(registry)
    earlier: list[int] = []
    if options.delta_bases is not None:
        earlier = list(options.delta_bases)
    elif options.delta_depth > 0:
        earlier = [v for v in registry.versions(manifest.model) if v < manifest.version][-options.delta_depth :]
    payloads = 0
    for artifact in manifest.artifacts:
        for target in artifact.files:
            target_path = version_file(registry, manifest.model, manifest.version, target.path)
            store.ensure(manifest.model, FULL, target_path, target.sha256)
            payloads += 1
            for base_version in earlier:
                base = next((f for f in registry.files(manifest.model, base_version) if f.path == target.path), None)
                if base is None or base.sha256 == target.sha256:
                    continue
                for codec in options.delta_codecs:
                    if store.can_make(codec, base.size, target.size):
                        base_path = version_file(registry, manifest.model, base_version, base.path)
                        store.ensure(manifest.model, codec, target_path, target.sha256, base_path, base.sha256)
                        payloads += 1
    return payloads
