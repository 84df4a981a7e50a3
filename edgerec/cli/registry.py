"""``edgerec registry ls|show``: what a registry holds."""

from __future__ import annotations

from typing import Any

import click

from edgerec.cli.output import emit_json, print_table
from edgerec.cli.registry_option import open_cli_registry, registry_options
from edgerec.manifest import PARTIAL_BASE, PARTIAL_OF, manifest_to_dict
from edgerec.registry import LocalRegistry, ModelRegistry


@click.group()
def registry() -> None:
    """Inspect a model registry."""


def _stored_at(reg: ModelRegistry, model: str, version: int, path: str, sha256: str) -> str:
    """Where a version's file is inside the registry: a path under its folder, or an object key."""
    if isinstance(reg, LocalRegistry):
        return reg.file_path(model, version, path).relative_to(reg.root).as_posix()
    blob_key = getattr(reg, "blob_key", None)
    return str(blob_key(sha256)) if blob_key is not None else path


def version_entry(reg: ModelRegistry, model: str, version: int) -> dict[str, Any]:
    """The JSON description of one version: model, version, its artifacts (one digest per recipe), files, and
    for a partial (budgeted) version the full version it approximates and the base it was built for.
    A file's "path" is where it is stored in the registry (under its folder, or its object key in the bucket)."""
    _, manifest = reg.load_manifest(model, version)
    files = reg.files(model, version)
    partial_of = manifest.annotations.get(PARTIAL_OF)
    partial_base = manifest.annotations.get(PARTIAL_BASE)
    return {
        "model": model,
        "version": version,
        "created_at": manifest.created_at,
        "partial_of": int(partial_of) if partial_of else None,
        "partial_base": int(partial_base) if partial_base else None,
        "artifacts": [
            {
                "recipe": a.recipe,
                "runtime": a.runtime,
                "digest": a.digest,
                "bytes": sum(f.size for f in a.files),
            }
            for a in manifest.artifacts
        ],
        "files": [
            {
                "path": _stored_at(reg, model, version, f.path, f.sha256),
                "size": f.size,
                "sha256": f.sha256,
                "recipe": f.recipe,
            }
            for f in files
        ],
    }


@registry.command("ls")
@registry_options
@click.option("--model", default=None, help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of versions.")
def ls(registry_spec: str, s3_endpoint: str | None, model: str | None, as_json: bool) -> None:
    """List published versions (partial versions are marked with the version they approximate)."""
    reg = open_cli_registry(registry_spec, s3_endpoint, must_exist=True)
    models = [model] if model else reg.models()
    entries = [version_entry(reg, m, v) for m in models for v in reg.versions(m)]
    if as_json:
        emit_json(entries)
        return
    print_table(
        f"registry {reg.location}",
        ["model", "version", "kind", "created", "files", "bytes", "artifacts (recipe sha256)"],
        [
            (
                e["model"],
                e["version"],
                "full" if e["partial_of"] is None else f"partial of {e['partial_of']} from {e['partial_base']}",
                e["created_at"],
                len(e["files"]),
                sum(f["size"] for f in e["files"]),
                ", ".join(f"{a['recipe']} {a['digest'][:12]}" for a in e["artifacts"]),
            )
            for e in entries
        ],
    )


@registry.command("show")
@registry_options
@click.option("--model", required=True)
@click.option("--version", default=0, help="Version (default: latest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(registry_spec: str, s3_endpoint: str | None, model: str, version: int, as_json: bool) -> None:
    """Show one version's manifest and files."""
    reg = open_cli_registry(registry_spec, s3_endpoint, must_exist=True)
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
