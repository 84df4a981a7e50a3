"""``edgerec keys generate|id``: Ed25519 signing keys for manifests."""

from __future__ import annotations

from pathlib import Path

import click

from edgerec.cli.output import emit_json
from edgerec.signing import generate_keypair, key_id, load_public_key

_key_path = click.Path(dir_okay=False, path_type=Path)


@click.group()
def keys() -> None:
    """Create and inspect the keys that sign manifests."""


@keys.command("generate")
@click.option("--private", "private_path", required=True, type=_key_path, help="New private key file (mode 0600).")
@click.option("--public", "public_path", required=True, type=_key_path, help="New public key file, for devices.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: key_id and both paths.")
def generate(private_path: Path, public_path: Path, as_json: bool) -> None:
    """Create a key pair and print its key id. Never overwrites a file."""
    kid = generate_keypair(private_path, public_path)
    if as_json:
        emit_json({"key_id": kid, "private": str(private_path), "public": str(public_path)})
    else:
        click.echo(kid)


@keys.command("id")
@click.argument("public_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON: key_id and path.")
def id_(public_path: Path, as_json: bool) -> None:
    """Print the key id of a public key file."""
    kid = key_id(load_public_key(public_path))
    if as_json:
        emit_json({"key_id": kid, "public": str(public_path)})
    else:
        click.echo(kid)
