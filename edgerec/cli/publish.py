"""``edgerec publish``: export, quantize and register a model version."""

from __future__ import annotations

from pathlib import Path

import click

from edgerec.cli.output import emit_json, print_table


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (a folder name on server and device).")
@click.option("--registry", "registry_dir", required=True, type=click.Path(path_type=Path), help="Registry folder.")
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    default=("fp32", "int8"),
    show_default=True,
    help="Artifacts to build (repeat the option).",
)
@click.option("--delta-depth", default=1, show_default=True, help="Precompute deltas from this many earlier versions.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def publish(
    source: Path, name: str, registry_dir: Path, recipes: tuple[str, ...], delta_depth: int, as_json: bool
) -> None:
    """Publish SOURCE (a torch.export .pt2 program or an .onnx file) as the next version of NAME."""
    from edgerec.registry import Registry
    from edgerec.server.publish import PublishOptions
    from edgerec.server.publish import publish as run_publish

    manifest = run_publish(
        source, name, Registry(registry_dir), PublishOptions(recipes=recipes, delta_depth=delta_depth)
    )
    if as_json:
        emit_json(
            {
                "model": manifest.model,
                "version": manifest.version,
                "artifacts": [
                    {"recipe": a.recipe, "digest": a.digest, "bytes": sum(f.size for f in a.files)}
                    for a in manifest.artifacts
                ],
            }
        )
        return
    print_table(
        f"{manifest.model} version {manifest.version}",
        ["recipe", "files", "bytes", "digest"],
        [(a.recipe, len(a.files), sum(f.size for f in a.files), a.digest[:16]) for a in manifest.artifacts],
    )
