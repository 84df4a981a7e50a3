"""Small crash-safe file operations: fsync'ed writes and renames, all private to the SDK's user.

Every file these helpers create is mode 0600 and every folder 0700 (a umask can only narrow
them): a device's models, payloads and state are nobody else's business. None of them follows
a symbolic link at the path it writes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700 folders (existing ones are left as they are)."""
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made meanwhile by another process
            continue


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of ``path`` creating it 0600 if asked, never through a symbolic link at ``path``."""
    return os.open(path, flags | _NOFOLLOW | _CLOEXEC, PRIVATE_FILE)


def is_link_or_not_dir(path: Path) -> bool:
    """Whether ``path`` is a symbolic link, or exists and is no folder (``lstat``: links are not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISDIR(mode)


def remove_entry(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a whole folder at ``path``; missing is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)  # removes links inside the tree without following them
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def atomic_output(out: Path) -> Iterator[BinaryIO]:
    """Yield a private temporary file beside ``out``; on success fsync it and rename it to ``out``.

    A reader sees the old or the new bytes, never a mix. On an exception the temporary
    file is removed and ``out`` is untouched.
    """
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")  # mode 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    make_private_dirs(path.parent)
    with atomic_output(path) as f:
        f.write(data)
