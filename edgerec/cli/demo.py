"""``edgerec demo``: the whole path once, end to end, on local defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from edgerec.cli.output import console, emit_json, print_table


@click.command()
@click.option(
    "--workdir",
    default="demo-out",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the registry, models and device data (emptied first).",
)
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "large"]),
    default="small",
    show_default=True,
    help="Reference model size (large: >= 100 MB of fp32 embeddings).",
)
@click.option("--rate", default="2mbit", show_default=True, help="Device link rate.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo(workdir: Path, size: str, rate: str, seed: int, as_json: bool) -> None:
    """Train v1, publish, serve, sync a device, train and publish v2, sync the delta, predict, break, fall back."""
    from edgerec.tools.demo import prediction_rows, run_demo, summary_rows, sync_rows

    with console.status("starting") as status:
        report = run_demo(workdir, size=size, rate=rate, seed=seed, on_step=lambda step: status.update(step))
    if as_json:
        emit_json(dataclasses.asdict(report))
        return
    print_table(
        f"edgerec demo: syncs over a {rate} link (reference model '{size}')",
        ["versions", "recipe", "codec", "bytes shipped", "full size", "shipped/full", "seconds"],
        sync_rows(report),
    )
    print_table("predictions", ["request", "source", "version", "latency ms"], prediction_rows(report))
    print_table("facts", ["what", "value"], summary_rows(report))
