"""Options every device command shares to reach a secured server: TLS root and device token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgerec.errors import ConfigError
from edgerec.tokens import check_token_text

F = TypeVar("F", bound=Callable[..., Any])


def read_token(token_file: Path | None) -> str | None:
    """The token in ``token_file`` (a file, not an argument: a command line shows in the process list)."""
    if token_file is None:
        return None
    try:
        return check_token_text(token_file.read_text().strip())
    except (ConfigError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{token_file} does not hold a device token: {exc}") from exc


def connection_options(command: F) -> F:
    """Add --tls-ca and --token-file; the command receives ``tls_ca`` and ``token_file``."""
    command = click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="File holding this device's token (from `edgerec tokens add`).",
    )(command)
    command = click.option(
        "--tls-ca",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="CA certificate (PEM) to verify the server's TLS certificate with.",
    )(command)
    return command
