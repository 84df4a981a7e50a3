"""The ``edgerec`` command: one group, each command in its own module."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from edgerec.cli import (
    delta,
    demo,
    device,
    fleet,
    keys,
    predict,
    profile,
    publish,
    registry,
    release,
    serve,
    sync,
    tokens,
)
from edgerec.errors import EdgerecError


class _Group(click.Group):
    """Turns edgerec's typed errors into a one-line message and exit code 1, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgerecError as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        except (OSError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """edgerec: ship recommendation models to edge devices."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (
    publish.publish,
    registry.registry,
    serve.serve,
    sync.sync,
    predict.predict,
    delta.delta,
    keys.keys,
    tokens.tokens,
    profile.profile,
    demo.demo,
    device.device,
    fleet.fleet,
    release.rollout,
    release.channel,
    release.pin,
    release.revert,
):
    cli.add_command(command)
