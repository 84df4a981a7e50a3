"""``edgerec sync``: bring a device's model up to date."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from edgerec.cli.connection import connection_options, read_token
from edgerec.cli.output import emit_json, print_table, transfer_progress
from edgerec.units import format_bytes, parse_size


def parse_recipes(value: str) -> tuple[str, ...]:
    """A comma list of recipe names, in order, without repeats or blanks; UsageError when empty."""
    names: list[str] = []
    for name in (part.strip() for part in value.split(",")):
        if name and name not in names:
            names.append(name)
    if not names:
        raise click.UsageError("--recipes needs at least one recipe name")
    return tuple(names)


@click.command()
@click.option("--server", required=True, help="HOST:PORT of the model-push server.")
@click.option("--model", required=True, help="Model name.")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path), help="Device data folder.")
@click.option("--rate", default=None, help="Cap the download rate, e.g. 2mbit or 250kB/s.")
@click.option("--version", "target_version", default=0, help="Version to install (default: latest).")
@click.option(
    "--budget", default=None, help="Most payload bytes to take, e.g. 200KB (a partial update may be offered)."
)
@click.option(
    "--recipes",
    default="int8,fp32",
    show_default=True,
    help="Recipes this device allows, most preferred first (comma list), e.g. tflite_wi8,int8,fp32. "
    "The server offers the first one the version has whose runtime is installed here.",
)
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key (PEM) whose signature makes a manifest acceptable; repeat for several. "
    "Required unless --insecure-skip-verify.",
)
@click.option(
    "--insecure-skip-verify",
    "insecure",
    is_flag=True,
    help="Install updates without checking any signature (testing only): anyone on the network path "
    "can then install a model of their own or hold this device back.",
)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sync(
    server: str,
    model: str,
    data_dir: Path,
    rate: str | None,
    target_version: int,
    budget: str | None,
    recipes: str,
    trusted_keys: tuple[Path, ...],
    insecure: bool,
    tls_ca: Path | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Check for a newer version, download the smallest payload, verify and switch."""
    from edgerec.device import EdgeClient

    if insecure and trusted_keys:
        raise click.UsageError("--trusted-key and --insecure-skip-verify exclude each other")
    max_payload_bytes = parse_size(budget) if budget else 0
    allowed = parse_recipes(recipes)
    with (
        EdgeClient(
            server=server,
            model=model,
            data_dir=data_dir,
            rate=rate,
            recipes=allowed,
            max_payload_bytes=max_payload_bytes,
            trusted_keys=list(trusted_keys) or None,
            insecure=insecure,
            tls_ca=tls_ca,
            token=read_token(token_file),
        ) as client,
        transfer_progress(not as_json) as progress,
    ):
        result = client.sync(target_version, progress=progress)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    print_table(
        f"{model} sync",
        ["version", "previous", "codec", "shipped", "full size", "seconds", "verification"],
        [
            (
                result.version,
                result.previous_version or "-",
                result.codec,
                format_bytes(result.payload_bytes),
                format_bytes(result.full_bytes),
                f"{result.seconds:.2f}",
                result.verification,
            )
        ],
    )
    if result.held_back_reason:
        click.echo(f"{model}: {result.held_back_reason}")
