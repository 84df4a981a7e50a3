"""Shared CLI output: JSON for machines, rich tables and progress bars for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 140)

# (what runs, None while it runs or its seconds once done, a short result once done)
StepCallback = Callable[[str, float | None, str], None]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


@contextmanager
def transfer_progress(enabled: bool) -> Iterator[Any]:
    """A progress callback ``(path, done, total)`` drawing one bar per file (no-op when disabled)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(path: str, done: int, total: int) -> None:
            if path not in tasks:
                tasks[path] = progress.add_task(path, total=total)
            progress.update(tasks[path], completed=done)

        yield update


@contextmanager
def step_progress(enabled: bool) -> Iterator[StepCallback]:
    """A callback for long steps, drawn on stderr: a spinner while a step runs, its time and result once done.

    Nothing is drawn until the first step (a command refused up front prints only its error), nor when disabled.
    """
    if not enabled:
        yield lambda label, seconds, detail: None
        return
    progress = Progress(
        SpinnerColumn(finished_text="[green]done"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    running: dict[str, TaskID] = {}

    def update(label: str, seconds: float | None, detail: str) -> None:
        if not progress.live.is_started:
            progress.start()
        if seconds is None:
            running[label] = progress.add_task(label, total=1)
            return
        task = running.pop(label, None)
        if task is None:
            task = progress.add_task(label, total=1)
        progress.update(task, completed=1, description=f"{label}: {detail}" if detail else label)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()
