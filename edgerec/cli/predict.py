"""``edgerec predict``: score a request from an .npz file on the device."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from edgerec.cli.connection import connection_options, read_token
from edgerec.cli.output import emit_json, print_table


@click.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path), help="Device data folder.")
@click.option("--model", required=True, help="Model name.")
@click.option("--server", default=None, help="HOST:PORT for fallback inference.")
@click.option(
    "--input",
    "input_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An .npz with one array per model input, by input name.",
)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def predict(
    data_dir: Path,
    model: str,
    server: str | None,
    input_file: Path,
    tls_ca: Path | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Predict with the local model, falling back to the server."""
    from edgerec.device import EdgeClient

    with np.load(input_file) as npz:
        inputs = {name: npz[name] for name in npz.files if name != "labels"}
    with EdgeClient(
        server=server, model=model, data_dir=data_dir, tls_ca=tls_ca, token=read_token(token_file)
    ) as client:
        result = client.predict(inputs)
        runtime = client.runtime_info()  # what the local model runs (recipe, runtime, files), or why none
    if as_json:
        emit_json(
            {
                "scores": result.scores.tolist(),
                "source": result.source,
                "version": result.version,
                "latency_s": result.latency_s,
                "fallback_reason": result.fallback_reason,
                "runtime": runtime,
            }
        )
        return
    print_table(
        f"{model} prediction",
        ["source", "version", "recipe", "runtime", "latency ms", "scores"],
        [
            (
                result.source,
                result.version,
                runtime["recipe"] or "-",
                runtime["runtime"] or "-",
                f"{result.latency_s * 1e3:.2f}",
                np.array2string(result.scores[:8], precision=4),
            )
        ],
    )
