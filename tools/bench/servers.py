"""Servers the benchmarks start in a subprocess on a free loopback port and stop when done."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
_SERVING: Final = re.compile(r"serving .* on (\S+:\d+)")


@contextmanager
def serve(
    registry: Path | str,
    signing_key: Path,
    log_file: Path,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """``edgerec serve`` of ``registry`` (a folder or an s3:// URL) signing with ``signing_key`` (its defaults,
    plus ``extra`` arguments; ``env``: its environment, None for ours); yields its address and process id."""
    command = [sys.executable, "-m", "edgerec", "serve", "--registry", str(registry), "--listen", "127.0.0.1:0"]
    command += ["--signing-key", str(signing_key), *extra]
    with serving(command, log_file, env) as served:
        yield served


@contextmanager
def serving(command: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """Run a server command that logs "serving ... on HOST:PORT" into ``log_file``; yields that address and
    its process id, and stops the process on exit (if it still runs)."""
    with log_file.open("w") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (found := _SERVING.search(log_file.read_text())) is None:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(command[2:4])} exited: {log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[2:4])} did not start within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        yield found.group(1), process.pid
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
