"""``edgerec profile``: what an update costs per codec over emulated links (``update``), and what a
fleet of devices updating at once costs the server (``fleet``)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgerec.cli.output import console, emit_json
from edgerec.cli.registry_option import REGISTRY_HELP
from edgerec.codecs import CODEC_NAMES

if TYPE_CHECKING:
    from edgerec.tools.profile.runner import ProgressHook

CODECS = tuple(sorted(CODEC_NAMES))


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table without vertical rules: the profile has many columns."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column not in ("note", "advice", "extra", "link model"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[ProgressHook | None]:
    """A ``(done, total, label)`` callback drawing one bar on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("starting", total=None)

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        yield update


def _default_versions(
    registry_spec: str, s3_endpoint: str | None, model: str, from_version: int | None, to_version: int | None
) -> tuple[int, int]:
    from edgerec.cli.registry_option import open_cli_registry

    versions = open_cli_registry(registry_spec, s3_endpoint, must_exist=True).versions(model, include_partial=False)
    if len(versions) < 2 and (from_version is None or to_version is None):
        raise click.UsageError(f"{model!r} needs two published versions in {registry_spec} (found {versions})")
    to = to_version if to_version is not None else versions[-1]
    if from_version is not None:
        return from_version, to
    older = [v for v in versions if v < to]
    if not older:
        raise click.UsageError(f"no version of {model!r} older than {to} to update from; give --from")
    return older[-1], to


@click.group()
def profile() -> None:
    """Profile updates: per codec over emulated links (update), or a simulated fleet against a server (fleet)."""


@profile.command("update")
@click.option("--registry", "registry_spec", default=None, help=REGISTRY_HELP)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="URL of the S3-compatible store of an s3:// registry.",
)
@click.option("--model", default=None, help="Model name (with --old/--new: the name to publish as, default 'model').")
@click.option("--from", "from_version", type=int, default=None, help="Version the device runs (default: before --to).")
@click.option("--to", "to_version", type=int, default=None, help="Version to update to (default: the latest).")
@click.option(
    "--old",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Instead of --registry: the model the device runs (.onnx or .pt2), version 1 of a temporary registry.",
)
@click.option(
    "--new",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --old: the model to update to, published as version 2.",
)
@click.option(
    "--link",
    "links",
    multiple=True,
    help="2g, 3g, lte, satellite, wifi, a profile of --links-file, or rate=512kbit,rtt=200ms,loss=1%,drop_every=1MB "
    "(repeat; default: every preset, or every profile of --links-file).",
)
@click.option(
    "--links-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of link profiles: one table per link with rate, rtt, loss, drop_every.",
)
@click.option(
    "--codec", "codecs", multiple=True, type=click.Choice(CODECS), help="Codec to profile (repeat; default: all)."
)
@click.option(
    "--method",
    type=click.Choice(["auto", "netns", "tokenbucket"]),
    default="auto",
    show_default=True,
    help="netns: namespace + tbf (root); tokenbucket: userspace proxy only; auto: netns when possible.",
)
@click.option("--recipe", default="int8", show_default=True, help="Artifact the device installs.")
@click.option("--window", default="60s", show_default=True, help="Time an update should fit in.")
@click.option(
    "--max-transfer",
    default="30s",
    show_default=True,
    help="Estimate, rather than run, transfers the link model puts above this.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as JSON.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as CSV.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write PNG plots here.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep device folders and logs here (default: a temporary folder, removed).",
)
@click.option("--chunk", default="64KiB", show_default=True, help="The device's download chunk size.")
@click.option("--seed", default=0, show_default=True, help="Seed of the emulated segment losses.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def update(
    registry_spec: str | None,
    s3_endpoint: str | None,
    model: str | None,
    from_version: int | None,
    to_version: int | None,
    old: Path | None,
    new: Path | None,
    links: tuple[str, ...],
    links_file: Path | None,
    codecs: tuple[str, ...],
    method: str,
    recipe: str,
    window: str,
    max_transfer: str,
    json_out: Path | None,
    csv_out: Path | None,
    plots_dir: Path | None,
    workdir: Path | None,
    chunk: str,
    seed: int,
    no_progress: bool,
) -> None:
    """Measure each payload codec over each link: bytes, server preparation, transfer, apply,
    device CPU and memory, time to the first prediction on the new version; recommend a codec
    per link and say whether an update (or a budgeted partial one) fits --window.
    """
    from edgerec.tools.links.profiles import PRESETS, load_links_file, parse_duration, parse_link
    from edgerec.tools.profile import report as out
    from edgerec.tools.profile.runner import DEFAULT_CODECS, Profiler, ProfileSettings
    from edgerec.units import parse_size

    if (old is None) != (new is None):
        raise click.UsageError("--old and --new go together")
    if old is not None and registry_spec is not None:
        raise click.UsageError("give either --registry or --old/--new")
    if old is None and registry_spec is None:
        raise click.UsageError("give --registry (with --model) or --old and --new")
    if registry_spec is not None and model is None:
        raise click.UsageError("--registry needs --model")
    known = load_links_file(links_file) if links_file else {}
    chosen = [parse_link(text, known) for text in links] if links else list((known or PRESETS).values())
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # A private server on loopback: its warnings about tokens are beside the point here.
        logging.getLogger("edgerec.server.app").setLevel(logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="edgerec-profile-registry-")) if old is not None else None
    try:
        if old is not None and new is not None and scratch is not None:
            from edgerec.registry import Registry
            from edgerec.server.publish import PublishOptions, publish

            model = model or "model"
            registry = Registry(scratch / "registry")
            console.print(f"publishing {old.name} and {new.name} as {model} 1 and 2 in a temporary registry")
            publish(old, model, registry, PublishOptions(no_gate=True))
            publish(new, model, registry, PublishOptions(no_gate=True))
            registry_spec, from_version, to_version = str(registry.root), 1, 2
        assert registry_spec is not None and model is not None
        base, target = _default_versions(registry_spec, s3_endpoint, model, from_version, to_version)
        settings = ProfileSettings(
            registry=registry_spec if registry_spec.startswith("s3://") else Path(registry_spec),
            s3_endpoint=s3_endpoint,
            model=model,
            from_version=base,
            to_version=target,
            links=tuple(chosen),
            codecs=tuple(codecs) or DEFAULT_CODECS,
            method=method,
            recipe=recipe,
            window_s=parse_duration(window),
            max_transfer_s=parse_duration(max_transfer),
            chunk_bytes=parse_size(chunk),
            seed=seed,
            workdir=workdir,
        )
        with _progress_bar(not no_progress) as progress:
            result = Profiler(settings, progress).run()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _print_table(f"edgerec profile update: {model} {base} -> {target}", out.ROW_COLUMNS, out.table_rows(result.rows))
    _print_table(
        f"recommendation per link (window {settings.window_s:.0f}s)",
        out.RECOMMENDATION_COLUMNS,
        out.recommendation_rows(result),
    )
    for line in out.summary_lines(result):
        console.print(line)
    if json_out is not None:
        out.write_json(result.rows, json_out)
        console.print(f"rows written to {json_out}")
    if csv_out is not None:
        out.write_csv(result.rows, csv_out)
        console.print(f"rows written to {csv_out}")
    if plots_dir is not None:
        for path in out.write_plots(result, plots_dir):
            console.print(f"plot written to {path}")


@profile.command("fleet")
@click.option("--server", required=True, help="HOST:PORT of the server (a running `edgerec serve`).")
@click.option(
    "--also",
    "also",
    multiple=True,
    help="HOST:PORT of another replica (repeat): the devices spread over all and fail over between them.",
)
@click.option("--http", is_flag=True, help="Fetch payloads from the plan's URLs (HTTP Range) before the servers.")
@click.option("--model", required=True, help="Model name, as published.")
@click.option("--devices", default=100, show_default=True, type=click.IntRange(min=1), help="Simulated devices.")
@click.option("--rate", default="128kbit", show_default=True, help="Each device's link rate, e.g. 128kbit, 1mbit.")
@click.option("--ramp", default="10s", show_default=True, help="Devices start one after another over this time.")
@click.option(
    "--deadline",
    default=None,
    help="Time each device has from its start to finish.  [default: 10x its link-limited download, at least 60s]",
)
@click.option(
    "--channels",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Connections shared by the devices (0: one per device, as real devices have).",
)
@click.option(
    "--max-attempts",
    default=30,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failed attempts in a row, without new bytes, after which a device gives up.",
)
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 public key (PEM) the devices trust: manifests must be signed by it (repeat for several).",
)
@click.option("--server-pid", type=int, default=None, help="The server's process id: sample its CPU time and RSS.")
@click.option("--seed", default=0, show_default=True, help="Seed of the devices' retry jitter.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (instead of tables).")
@click.option("--json-file", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the summary as CSV.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write the PNG plot here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def fleet(
    server: str,
    also: tuple[str, ...],
    http: bool,
    model: str,
    devices: int,
    rate: str,
    ramp: str,
    deadline: str | None,
    channels: int,
    max_attempts: int,
    trusted_keys: tuple[Path, ...],
    server_pid: int | None,
    seed: int,
    as_json: bool,
    json_file: Path | None,
    csv_out: Path | None,
    plots_dir: Path | None,
    no_progress: bool,
) -> None:
    """Simulate --devices fresh devices updating --model from --server at once, each on a link of --rate.

    Every device (one asyncio task of this process) checks for an update, verifies the plan (and the
    manifest's signature with --trusted-key), downloads every payload paced to its link, resuming after
    failures, and checks each payload's sha256; nothing is applied. Reports the fleet's completion time
    against the link-limited ideal, devices done over time, errors by code, bytes by source, and, with
    --server-pid, the server's CPU seconds per GB delivered and peak RSS.
    """
    from edgerec.tools.links.profiles import parse_duration
    from edgerec.tools.profile.fleet import FleetSettings, RetryPolicy, run_fleet
    from edgerec.tools.profile.fleet import report as out
    from edgerec.units import parse_rate

    try:
        settings = FleetSettings(
            server=server,
            also=also,
            http=http,
            model=model,
            devices=devices,
            rate_bytes_per_s=parse_rate(rate),
            ramp_s=parse_duration(ramp),
            deadline_s=parse_duration(deadline) if deadline is not None else None,
            channels=channels,
            trusted_keys=trusted_keys,
            server_pid=server_pid,
            retry=RetryPolicy(max_attempts=max_attempts),
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        with _progress_bar(not no_progress) as progress:
            report = run_fleet(settings, progress)
    except ProcessLookupError as exc:
        raise click.UsageError(f"--server-pid: {exc}") from exc
    written: list[str] = []
    if json_file is not None:
        out.write_json([report], json_file)
        written.append(f"report written to {json_file}")
    if csv_out is not None:
        out.write_csv([report], csv_out)
        written.append(f"summary written to {csv_out}")
    if plots_dir is not None:
        path = out.write_plot([report], plots_dir / out.PLOT_NAME)
        written.append(f"plot written to {path}")
    if as_json:
        emit_json(report.as_dict())
        for line in written:
            click.echo(line, err=True)
        return
    _print_table(f"edgerec profile fleet: {model} from {server}", out.SUMMARY_COLUMNS, out.summary_rows(report))
    for line in written:
        console.print(line)
