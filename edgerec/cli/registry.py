"""``edgerec registry ls|show``: what a registry holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgerec.cli.output import emit_json, print_table
from edgerec.manifest import manifest_to_dict
from edgerec.registry import Registry

_registry_option = click.option(
    "--registry",
    "registry_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Registry folder.",
)


@click.group()
def registry() -> None:
    """Inspect a model registry."""


def version_entry(reg: Registry, model: str, version: int) -> dict[str, Any]:
    """The JSON description of one version: model, version, sha256 and its files."""
    _, manifest = reg.load_manifest(model, version)
    files = reg.files(model, version)
    prefix = reg.version_dir(model, version).relative_to(reg.root).as_posix()
    return {
        "model": model,
        "version": version,
        "created_at": manifest.created_at,
        # The sha256 of the artifact devices run by default: int8 when published.
        "sha256": next(
            (a.digest for r in ("int8", "fp32") for a in manifest.artifacts if a.recipe == r),
            manifest.artifacts[0].digest,
        ),
        "files": [
            {"path": f"{prefix}/{f.path}", "size": f.size, "sha256": f.sha256, "recipe": f.recipe} for f in files
        ],
    }


@registry.command("ls")
@_registry_option
@click.option("--model", default=None, help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of versions.")
def ls(registry_dir: Path, model: str | None, as_json: bool) -> None:
    """List published versions."""
    reg = Registry(registry_dir)
    models = [model] if model else reg.models()
    entries = [version_entry(reg, m, v) for m in models for v in reg.versions(m)]
    if as_json:
        emit_json(entries)
        return
    print_table(
        f"registry {registry_dir}",
        ["model", "version", "created", "files", "bytes", "sha256"],
        [
            (
                e["model"],
                e["version"],
                e["created_at"],
                len(e["files"]),
                sum(f["size"] for f in e["files"]),
                e["sha256"][:16],
            )
            for e in entries
        ],
    )


@registry.command("show")
@_registry_option
@click.option("--model", required=True)
@click.option("--version", default=0, help="Version (default: latest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(registry_dir: Path, model: str, version: int, as_json: bool) -> None:
    """Show one version's manifest and files."""
    reg = Registry(registry_dir)
    version = reg.resolve_version(model, version)
    _, manifest = reg.load_manifest(model, version)
    entry = {**version_entry(reg, model, version), "manifest": manifest_to_dict(manifest)}
    if as_json:
        emit_json(entry)
        return
    print_table(
        f"{model} version {version}",
        ["path", "recipe", "size", "sha256"],
        [(f["path"], f["recipe"], f["size"], f["sha256"][:16]) for f in entry["files"]],
    )
    print_table(
        "signature",
        ["kind", "name", "dtype", "shape"],
        [("input", s.name, s.dtype, list(s.shape)) for s in manifest.inputs]
        + [("output", s.name, s.dtype, list(s.shape)) for s in manifest.outputs],
    )
