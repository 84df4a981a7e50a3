"""``edgerec device clear-rollback``: operator actions on a device's installed models."""

from __future__ import annotations

from pathlib import Path

import click

from edgerec.cli.output import emit_json


@click.group()
def device() -> None:
    """Act on a device's installed models (run on the device)."""


@device.command("clear-rollback")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Device data folder.",
)
@click.option("--model", required=True, help="Model name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def clear_rollback(data_dir: Path, model: str, as_json: bool) -> None:
    """Let the next sync install again the version this device rolled back from."""
    from edgerec.device import EdgeClient

    with EdgeClient(server=None, model=model, data_dir=data_dir) as client:
        released = client.clear_rollback()
        active = client.active_version
    if as_json:
        emit_json({"model": model, "released_version": released, "active_version": active})
    elif released is None:
        click.echo(f"{model}: no version is held back (active version {active or 'none'})")
    else:
        click.echo(f"{model}: version {released} is no longer held back; the next sync installs it again")
