"""``edgerec publish``: export, quantize and register a model version (or a budgeted partial one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from edgerec.cli.output import emit_json, print_table
from edgerec.manifest import Manifest
from edgerec.units import parse_size


@click.command()
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (a folder name on server and device).")
@click.option("--registry", "registry_dir", required=True, type=click.Path(path_type=Path), help="Registry folder.")
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    type=click.Choice(["fp32", "int8", "int4"]),
    default=("fp32", "int8"),
    show_default=True,
    help="Artifacts to build (repeat the option).",
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
    help="An .npz with one array per model input plus 'labels': the accuracy gate's data (and golden cases).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def publish(
    source: Path | None,
    name: str,
    registry_dir: Path,
    recipes: tuple[str, ...],
    max_auc_drop: float,
    delta_depth: int,
    budget: str | None,
    base_version: int | None,
    validation: Path | None,
    as_json: bool,
) -> None:
    """Publish SOURCE (a torch.export .pt2 program or an .onnx file) as the next version of NAME.

    With --budget and --base, also (or, without SOURCE, only) publish a partial version of the
    latest version: the rows that changed most since --base, within the payload budget.
    """
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions
    from edgerec.server.publish import publish as run_publish

    if source is None and budget is None:
        raise click.UsageError("give a SOURCE to publish, or --budget and --base for a partial version")
    if (budget is None) != (base_version is None):
        raise click.UsageError("--budget and --base go together")
    registry = Registry(registry_dir)
    arrays = dict(np.load(validation)) if validation is not None else None
    published: list[dict[str, Any]] = []
    if source is not None:
        options = PublishOptions(recipes=recipes, delta_depth=delta_depth, validation=arrays, max_auc_drop=max_auc_drop)
        manifest = run_publish(source, name, registry, options)
        published.append(_describe(manifest))
    if budget is not None and base_version is not None:
        from edgerec.server.publish.budget import publish_partial

        result = publish_partial(registry, name, base_version, parse_size(budget), validation=arrays)
        published.append(
            _describe(result.manifest)
            | {
                "rows_taken": result.rows_taken,
                "rows_changed": result.rows_changed,
                "payload_bytes": result.payload_bytes,
            }
        )
    if as_json:
        emit_json(published[0] if len(published) == 1 else published)
        return
    for entry in published:
        print_table(
            f"{entry['model']} version {entry['version']}",
            ["recipe", "bytes", "digest"],
            [(a["recipe"], a["bytes"], a["digest"][:16]) for a in entry["artifacts"]],
        )


def _describe(manifest: Manifest) -> dict[str, Any]:
    return {
        "model": manifest.model,
        "version": manifest.version,
        "annotations": dict(manifest.annotations),
        "artifacts": [
            {"recipe": a.recipe, "digest": a.digest, "bytes": sum(f.size for f in a.files)} for a in manifest.artifacts
        ],
    }
