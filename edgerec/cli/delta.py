"""``edgerec delta make|apply|info``: the payload codecs on plain files."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import click

from edgerec.cli.output import emit_json, print_table
from edgerec.codecs import CODEC_NAMES, apply_patch, make_patch, read_patch_info
from edgerec.units import format_bytes

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def delta() -> None:
    """Make, apply and inspect payloads (patches) between two files."""


@delta.command("make")
@click.argument("old", type=_file)
@click.argument("new", type=_file)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Patch file.")
@click.option(
    "--codec",
    type=click.Choice(["auto", *CODEC_NAMES]),
    default="auto",
    show_default=True,
    help="auto tries every codec and keeps the smallest patch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def make(old: Path, new: Path, output: Path, codec: str, as_json: bool) -> None:
    """Write a patch that turns OLD into NEW.

    For an ONNX model with external data, give the .onnx.data files (the tensor codec
    reads the companion .onnx beside each) or the .onnx graph files.
    """
    candidates = list(CODEC_NAMES) if codec == "auto" else [codec]
    tried: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        for name in candidates:
            attempt = Path(scratch) / name
            started = time.perf_counter()
            make_patch(name, None if name == "full" else old, new, attempt)
            tried.append(
                {"codec": name, "bytes": attempt.stat().st_size, "seconds": round(time.perf_counter() - started, 3)}
            )
        smallest = min(tried, key=lambda t: int(str(t["bytes"])))
        (Path(scratch) / str(smallest["codec"])).replace(output)
    chosen = read_patch_info(output).codec
    if as_json:
        emit_json({"output": str(output), "codec": chosen, "bytes": output.stat().st_size, "tried": tried})
        return
    print_table(
        f"{output} ({chosen})",
        ["codec", "patch size", "seconds"],
        [(t["codec"], format_bytes(float(str(t["bytes"]))), t["seconds"]) for t in tried],
    )


@delta.command("apply")
@click.argument("old", type=_file)
@click.argument("patch", type=_file)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Result file.")
def apply(old: Path, patch: Path, output: Path) -> None:
    """Rebuild the patch's target from OLD into OUTPUT (checked by size and sha256; atomic)."""
    apply_patch(old, patch, output)
    click.echo(f"wrote {output}")


@delta.command("info")
@click.argument("patch", type=_file)
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
def info(patch: Path, as_json: bool) -> None:
    """Show a patch's header: codec, base and target digests, sizes."""
    header = dataclasses.asdict(read_patch_info(patch))
    header["patch_bytes"] = patch.stat().st_size
    if as_json:
        emit_json(header)
        return
    print_table(str(patch), ["field", "value"], sorted(header.items()))
