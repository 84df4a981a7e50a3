"""``edgerec tokens add|revoke``: per-device tokens the server accepts (stored as hashes)."""

from __future__ import annotations

from pathlib import Path

import click

from edgerec.cli.output import emit_json

_tokens_file = click.option(
    "--tokens-file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The server's token file."
)


@click.group()
def tokens() -> None:
    """Issue and revoke device tokens (the server re-reads the file; no restart needed)."""


@tokens.command("add")
@_tokens_file
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def add(tokens_file: Path, device_id: str, as_json: bool) -> None:
    """Create DEVICE_ID's token and print it once (only its hash is stored)."""
    from edgerec.server.auth import add_device_token

    token = add_device_token(tokens_file, device_id)
    if as_json:
        emit_json({"device_id": device_id, "token": token})
    else:
        click.echo(token)


@tokens.command("revoke")
@_tokens_file
@click.argument("device_id")
def revoke(tokens_file: Path, device_id: str) -> None:
    """Remove DEVICE_ID's token: its next call is refused."""
    from edgerec.server.auth import revoke_device_token

    if not revoke_device_token(tokens_file, device_id):
        raise click.ClickException(f"{device_id} has no token in {tokens_file}")
    click.echo(f"revoked {device_id}")
