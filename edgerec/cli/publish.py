"""``edgerec publish``: export, quantize and register a model version (or a budgeted partial one).

People see each long step on stderr while it runs, then a summary table; ``--json`` prints the JSON alone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from edgerec.artifacts import ONNX_RECIPES, PUBLISH_RECIPES, TFLITE_RECIPES
from edgerec.cli.output import StepCallback, emit_json, print_table, step_progress
from edgerec.cli.registry_option import open_cli_registry, registry_options
from edgerec.manifest import AccuracyGate, Manifest
from edgerec.units import format_bytes, parse_size

if TYPE_CHECKING:
    from edgerec.registry import ModelRegistry


def _recipes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--recipe`` values, each one name or a comma list, in order without repeats; unknown names refused."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in ONNX_RECIPES + TFLITE_RECIPES:
                raise click.BadParameter(
                    f"unknown recipe {name!r}; choose from {', '.join(ONNX_RECIPES + TFLITE_RECIPES)}", ctx, param
                )
            if name not in names:
                names.append(name)
    if not names:
        raise click.BadParameter("give at least one recipe", ctx, param)
    return tuple(names)


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``--batch-sizes 1,8,256``: positive integers, sorted, without repeats."""
    if value is None:
        return None
    try:
        sizes = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"expected a comma list of integers, got {value!r}", ctx, param) from exc
    if not sizes or sizes[0] < 1:
        raise click.BadParameter(f"batch sizes must be positive integers, got {value!r}", ctx, param)
    return tuple(sizes)


@click.command()
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (a folder name on server and device).")
@registry_options
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    default=PUBLISH_RECIPES,
    show_default=True,
    callback=_recipes,
    help=(
        f"Artifacts to build: {', '.join(ONNX_RECIPES + TFLITE_RECIPES)} (repeat the option, or a comma list). "
        "TFLite recipes need the tflite extra and a .pt2 SOURCE."
    ),
)
@click.option(
    "--batch-sizes",
    callback=_batch_sizes,
    default=None,
    help="Fixed batch sizes of the TFLite recipes, e.g. 1,256 (one .tflite file each; devices pad). Default: 1,256.",
)
@click.option(
    "--max-auc-drop",
    default=0.001,
    show_default=True,
    help="Refuse a quantized artifact whose validation AUC falls more than this below fp32's.",
)
@click.option("--delta-depth", default=1, show_default=True, help="Precompute deltas from this many earlier versions.")
@click.option(
    "--budget",
    default=None,
    help="Also build a partial version for devices on --base whose payload fits this size (e.g. 200KB).",
)
@click.option("--base", "base_version", type=int, default=None, help="The version a --budget update starts from.")
@click.option(
    "--validation",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An .npz with one array per model input plus 'labels': the accuracy gate's data (and golden cases). "
    "Needed for every recipe but fp32, unless --no-gate.",
)
@click.option(
    "--no-gate",
    is_flag=True,
    help="Publish recipes other than fp32 without comparing them to fp32 (the manifest records it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def publish(
    source: Path | None,
    name: str,
    registry_spec: str,
    s3_endpoint: str | None,
    recipes: tuple[str, ...],
    batch_sizes: tuple[int, ...] | None,
    max_auc_drop: float,
    delta_depth: int,
    budget: str | None,
    base_version: int | None,
    validation: Path | None,
    no_gate: bool,
    as_json: bool,
) -> None:
    """Publish SOURCE (a torch.export .pt2 program or an .onnx file) as the next version of NAME.

    With --budget and --base, also (or, without SOURCE, only) publish a partial version of the
    latest version: the rows that changed most since --base, within the payload budget.
    """
    from edgerec.server.publish import PublishOptions, PublishStep
    from edgerec.server.publish import publish as run_publish

    if source is None and budget is None:
        raise click.UsageError("give a SOURCE to publish, or --budget and --base for a partial version")
    if (budget is None) != (base_version is None):
        raise click.UsageError("--budget and --base go together")
    tflite = [recipe for recipe in recipes if recipe in TFLITE_RECIPES]
    if batch_sizes is not None and not tflite:
        raise click.UsageError("--batch-sizes applies to the TFLite recipes (tflite_fp32, tflite_wi8) only")
    if tflite and source is not None:
        from edgerec.server.publish.tflite import tflite_missing

        missing = tflite_missing()
        if missing:  # before anything is exported (the pipeline refuses too)
            raise click.ClickException(f"cannot build {', '.join(tflite)}: {missing}")
    registry = open_cli_registry(registry_spec, s3_endpoint)
    arrays = dict(np.load(validation)) if validation is not None else None
    published: list[dict[str, Any]] = []
    with step_progress(not as_json) as show:

        def observer(step: PublishStep) -> None:
            show(step.label(), step.seconds, step.detail)

        if source is not None:
            options = PublishOptions(
                recipes=recipes, delta_depth=delta_depth, validation=arrays, max_auc_drop=max_auc_drop, no_gate=no_gate
            )
            if batch_sizes is not None:
                options = dataclasses.replace(options, tflite_batch_sizes=batch_sizes)
            started = time.perf_counter()
            manifest = run_publish(source, name, registry, options, observer=observer)
            published.append(_describe(manifest) | {"seconds": time.perf_counter() - started})
        if budget is not None and base_version is not None:
            published.append(_publish_partial(registry, name, base_version, budget, arrays, no_gate, show))
    if as_json:
        emit_json(published[0] if len(published) == 1 else published)
        return
    for entry in published:
        _print_summary(entry)


def _publish_partial(
    registry: ModelRegistry,
    name: str,
    base_version: int,
    budget: str,
    validation: dict[str, np.ndarray] | None,
    no_gate: bool,
    show: StepCallback,
) -> dict[str, Any]:
    from edgerec.server.publish import PublishStep
    from edgerec.server.publish.budget import publish_partial

    def observer(step: PublishStep) -> None:
        show(f"partial: {step.label()}", step.seconds, step.detail)

    started = time.perf_counter()
    result = publish_partial(
        registry, name, base_version, parse_size(budget), validation=validation, no_gate=no_gate, observer=observer
    )
    return _describe(result.manifest) | {
        "rows_taken": result.rows_taken,
        "rows_changed": result.rows_changed,
        "payload_bytes": result.payload_bytes,
        "seconds": time.perf_counter() - started,
    }


def _print_summary(entry: dict[str, Any]) -> None:
    """One table per published version: each recipe's runtime, size and gate result, and the time it took."""
    notes = [f"published in {entry['seconds']:.1f} s"]
    if "rows_taken" in entry:
        notes.append(
            f"partial: {entry['rows_taken']} of {entry['rows_changed']} changed rows, "
            f"{format_bytes(entry['payload_bytes'])} of payload"
        )
    print_table(
        f"{entry['model']} version {entry['version']}",
        ["recipe", "runtime", "batches", "size", "gate", "AUC drop", "digest"],
        [
            (
                a["recipe"],
                a["runtime"],
                ",".join(map(str, a["batch_sizes"])) or "any",
                format_bytes(a["bytes"]),
                a["gate"],
                "-" if a["auc_drop"] is None else f"{a['auc_drop']:+.5f}",
                a["digest"][:16],
            )
            for a in entry["artifacts"]
        ],
        caption="; ".join(notes),
    )


def _describe(manifest: Manifest) -> dict[str, Any]:
    return {
        "model": manifest.model,
        "version": manifest.version,
        "annotations": dict(manifest.annotations),
        "artifacts": [
            {
                "recipe": a.recipe,
                "runtime": a.runtime,
                "batch_sizes": [entry.batch_size for entry in a.fixed_batches],
                "gate": AccuracyGate.Name(a.accuracy_gate).removeprefix("ACCURACY_GATE_").lower(),
                "digest": a.digest,
                "bytes": sum(f.size for f in a.files),
                "auc_drop": _auc_drop(manifest, a.recipe),
            }
            for a in manifest.artifacts
        ],
    }


def _auc_drop(manifest: Manifest, recipe: str) -> float | None:
    """The AUC drop the accuracy gate recorded for ``recipe``, None when it was not gated."""
    value = manifest.annotations.get(f"edgerec.gate.{recipe}.auc_drop")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
