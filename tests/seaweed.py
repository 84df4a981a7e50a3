"""SeaweedFS for tests: the launcher of :mod:`edgerec.tools.seaweed` (skipping a test when the pinned
``weed`` is missing), and a two-host race harness."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgerec.tools import seaweed as _seaweed
from edgerec.tools.seaweed import ACCESS_KEY, SECRET_KEY, WEED_VERSION, SeaweedS3, WeedUnavailableError, weed_binary

__all__ = [
    "ACCESS_KEY",
    "SECRET_KEY",
    "WEED_VERSION",
    "SeaweedS3",
    "race_two_hosts",
    "require_weed",
    "seaweed_s3",
    "weed_binary",
]


def require_weed() -> Path:
    """The pinned ``weed`` binary; skips the test when it is missing or another release."""
    try:
        return _seaweed.require_weed()
    except WeedUnavailableError as exc:
        pytest.skip(str(exc))


@contextmanager
def seaweed_s3(data_dir: Path) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` on free loopback ports with its data in ``data_dir`` (skips without it)."""
    require_weed()
    with _seaweed.seaweed_s3(data_dir) as server:
        yield server


def race_two_hosts(
    target: Callable[..., None], host_args: Callable[[int], tuple[object, ...]], *, timeout_s: float
) -> list[tuple[int, str]]:
    """Run ``target(*host_args(h), ready, go, results)`` in two spawned processes (two "hosts") started
    together; returns every ``(version, digest)`` pair they put on ``results``.

    Each host waits on the ``ready`` barrier, then on ``go``, so both publish at the same moment.
    """
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Barrier(3), context.Event(), context.Queue()
    hosts = [context.Process(target=target, args=(*host_args(h), ready, go, results)) for h in range(2)]
    for host in hosts:
        host.start()
    try:
        ready.wait(timeout=timeout_s)
        go.set()
        published: list[tuple[int, str]] = [pair for _ in hosts for pair in results.get(timeout=timeout_s)]
    finally:
        for host in hosts:
            host.join(timeout=30)
            if host.is_alive():
                host.kill()
    assert all(host.exitcode == 0 for host in hosts)
    return published
