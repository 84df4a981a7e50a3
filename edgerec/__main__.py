"""``python -m edgerec``: the same as the ``edgerec`` command."""

from edgerec.cli.main import cli

cli()
