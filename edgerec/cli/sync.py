"""``edgerec sync``: bring a device's model up to date."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgerec.cli.connection import connection_options, read_token
from edgerec.cli.output import emit_json, print_table, transfer_progress
from edgerec.units import format_bytes, parse_rate, parse_size

F = TypeVar("F", bound=Callable[..., Any])


def parse_recipes(value: str) -> tuple[str, ...]:
    """A comma list of recipe names, in order, without repeats or blanks; UsageError when empty."""
    names: list[str] = []
    for name in (part.strip() for part in value.split(",")):
        if name and name not in names:
            names.append(name)
    if not names:
        raise click.UsageError("--recipes needs at least one recipe name")
    return tuple(names)


def download_limit_options(command: F) -> F:
    """--deadline, --min-rate and --retries; the command receives ``deadline``, ``min_rate`` and ``retries``."""
    command = click.option(
        "--retries",
        type=click.IntRange(min=1),
        default=None,
        help="Tries per download (and update check) without progress before giving up [default: 8].",
    )(command)
    command = click.option(
        "--min-rate",
        default=None,
        help="Slowest download worth waiting for, e.g. 16kbit or 2kB/s: each payload gets 60 s plus its "
        "size at this rate [default: 2KiB/s].",
    )(command)
    command = click.option(
        "--deadline",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Seconds each payload download may take, retries included (overrides --min-rate).",
    )(command)
    return command


def transport_config(deadline: float | None, min_rate: str | None, retries: int | None, rate: str | None = None) -> Any:
    """The device's TransportConfig with the download limits (and bandwidth cap) given on the command line."""
    from edgerec.device.transport import RetryPolicy, TransportConfig

    limits: dict[str, Any] = {}
    if rate is not None:
        try:
            limits["rate_bytes_per_s"] = parse_rate(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from exc
    if deadline is not None:
        limits["download_deadline_s"] = deadline
    if min_rate is not None:
        try:
            limits["min_rate_bytes_per_s"] = parse_rate(min_rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--min-rate") from exc
    if retries is not None:
        limits["retry"] = RetryPolicy(max_attempts=retries)
    return TransportConfig(**limits)


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
@click.option(
    "--channel", default="", help="Release channel this device follows (stable, canary, ...).  [default: stable]"
)
@click.option("--label", "labels", multiple=True, help="KEY=VALUE a rollout or pin may target, e.g. region=eu; repeat.")
@click.option("--app-version", default="", help="The host app's version, which rollouts may target.")
@download_limit_options
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
    channel: str,
    labels: tuple[str, ...],
    app_version: str,
    deadline: float | None,
    min_rate: str | None,
    retries: int | None,
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
    label_map = dict(_label(text) for text in labels)
    with (
        EdgeClient(
            server=server,
            model=model,
            data_dir=data_dir,
            recipes=allowed,
            max_payload_bytes=max_payload_bytes,
            trusted_keys=list(trusted_keys) or None,
            insecure=insecure,
            tls_ca=tls_ca,
            token=read_token(token_file),
            transport=transport_config(deadline, min_rate, retries, rate),
            channel=channel,
            labels=label_map,
            app_version=app_version,
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


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--label")
    return key, value
