"""Per-device bearer tokens: a file of sha256 hashes, re-read when it changes on disk.

The file is a JSON object mapping device ids to the hex sha256 of their token, for example
``{"kiosk-17": "9f86d0…"}``. Tokens look like ``<device_id>.<secret>`` (:mod:`edgerec.tokens`), so
the server finds the one hash to compare (in constant time) without scanning every device. Only hashes are
stored: a leaked file lets nobody in. Revoke a device by removing its line; the running
server notices the new modification time on its next call, no restart needed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from pathlib import Path

from edgerec.fsutil import atomic_write_bytes
from edgerec.tokens import DEVICE_ID_PATTERN, new_token, parse_token

log = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_MATCH = "0" * 64  # compared against when the device is unknown, so both paths cost the same

FileStamp = tuple[int, int, int, int]


def hash_token(token: str) -> str:
    """The hex sha256 stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_token_file(path: Path) -> dict[str, str]:
    """The device id -> token hash mapping in ``path``; ValueError when it breaks the format."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of device id -> token sha256")
    for device_id, digest in data.items():
        if not DEVICE_ID_PATTERN.fullmatch(device_id):
            raise ValueError(f"{path}: bad device id {device_id[:80]!r}")
        if not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest):
            raise ValueError(f"{path}: device {device_id!r} needs a 64-digit lowercase hex sha256")
    return dict(data)


def _write_token_file(path: Path, table: dict[str, str]) -> None:
    # atomic_write_bytes goes through mkstemp, so the file is created readable by its owner only.
    atomic_write_bytes(path, (json.dumps(dict(sorted(table.items())), indent=2) + "\n").encode())


def add_device_token(path: Path | str, device_id: str) -> str:
    """Issue a new token for ``device_id`` (replacing any old one) and return it; only its hash is kept."""
    path = Path(path)
    token = new_token(device_id)
    table = read_token_file(path) if path.exists() else {}
    table[device_id] = hash_token(token)
    _write_token_file(path, table)
    log.info("issued a token for device %s in %s", device_id, path)
    return token


def revoke_device_token(path: Path | str, device_id: str) -> bool:
    """Remove ``device_id``'s token; False when it had none."""
    path = Path(path)
    table = read_token_file(path)
    if table.pop(device_id, None) is None:
        return False
    _write_token_file(path, table)
    log.info("revoked the token of device %s in %s", device_id, path)
    return True


class TokenTable:
    """Answers "which device holds this token?" from a token file, following its changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._hashes = read_token_file(path)  # a missing or broken file at start-up is an error

    def device_for(self, token: str) -> str | None:
        """The device id that ``token`` belongs to, or None for an unknown or revoked token."""
        hashes = self._current()
        parsed = parse_token(token)
        expected = hashes.get(parsed.device_id) if parsed else None
        matches = hmac.compare_digest(expected or _NO_MATCH, hash_token(token))
        return parsed.device_id if parsed and matches and expected is not None else None

    def __len__(self) -> int:
        return len(self._current())

    def _current(self) -> dict[str, str]:
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._reload(stamp)
            return self._hashes

    def _reload(self, stamp: FileStamp | None) -> None:
        """Re-read after a change: a missing file admits nobody; a broken one keeps the last good table."""
        self._stamp = stamp
        if stamp is None:
            log.error("token file %s is gone: refusing every device until it is back", self.path)
            self._hashes = {}
            return
        try:
            self._hashes = read_token_file(self.path)
        except (OSError, ValueError) as exc:
            log.error(
                "cannot re-read token file %s (%s); keeping the %d devices read before",
                self.path,
                exc,
                len(self._hashes),
            )
            return
        log.info("token file %s re-read: %d devices", self.path, len(self._hashes))

    def _file_stamp(self) -> FileStamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
