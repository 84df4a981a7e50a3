"""``--registry`` and ``--s3-endpoint``: the options every command that opens a registry shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from edgerec.errors import RegistryUnavailableError
from edgerec.registry import ModelRegistry, open_registry

F = TypeVar("F", bound=Callable[..., object])

REGISTRY_HELP = "Registry: a folder, or s3://BUCKET/PREFIX shared by several servers (credentials: the AWS ways)."


def registry_options(func: F) -> F:
    """Add ``--registry`` (passed as ``registry_spec``) and ``--s3-endpoint`` to a command."""
    func = click.option(
        "--s3-endpoint",
        envvar="AWS_ENDPOINT_URL",
        default=None,
        help="URL of an S3-compatible store for an s3:// registry.  [default: $AWS_ENDPOINT_URL, else AWS]",
    )(func)
    return click.option("--registry", "registry_spec", required=True, help=REGISTRY_HELP)(func)


def open_cli_registry(spec: str, s3_endpoint: str | None, *, must_exist: bool = False) -> ModelRegistry:
    """The registry ``spec`` names, checked reachable; a click error (one line) when it is not.

    ``must_exist``: a folder registry must already be there (for commands that only read).
    """
    if not spec.startswith("s3://") and must_exist and not Path(spec).is_dir():
        raise click.ClickException(f"no registry folder at {spec}")
    try:
        registry = open_registry(spec, s3_endpoint=s3_endpoint)
        registry.change_stamp()  # one cheap request: an unreachable bucket fails here, not mid-command
    except RegistryUnavailableError as exc:
        raise click.ClickException(f"registry {spec} is unreachable: {exc}") from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    return registry
