"""Device tokens, ``<device_id>.<secret>``: issued by the server's operator, sent by a device as a bearer token.

The id in front names the device, so the server looks up the one stored hash to compare
(``edgerec.server.auth``) and a device that is given only a token knows its own id. Ids may
contain dots; the secret (URL-safe base64) never does, so a token splits at its last dot.

The rules, in one place:

- :func:`new_token` issues one (its id must match :data:`DEVICE_ID_PATTERN`);
- :func:`check_token_text` is what a device may send at all: printable ASCII without spaces,
  at most :data:`MAX_TOKEN_LENGTH` characters (gRPC puts it in a header);
- :func:`parse_token` splits a well-formed token, None for anything else (the server then
  treats it as unknown); :func:`device_id_of` is the id a token names, "" when none.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Final

from edgerec.errors import ConfigError

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAX_TOKEN_LENGTH",
    "DeviceToken",
    "check_device_id",
    "check_token_text",
    "device_id_of",
    "new_token",
    "parse_token",
]

DEVICE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
"""A device id: up to 128 letters, digits and ``_.:@-``, starting with a letter or digit."""
MAX_TOKEN_LENGTH: Final = 512
_SECRET_BYTES: Final = 32  # 43 characters of URL-safe base64
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_PRINTABLE = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class DeviceToken:
    """A token split into the device it names and its secret."""

    device_id: str
    secret: str


def check_device_id(device_id: str) -> str:
    """``device_id`` if it matches :data:`DEVICE_ID_PATTERN`; ConfigError otherwise."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ConfigError(f"device id must match {DEVICE_ID_PATTERN.pattern}, got {device_id[:80]!r}")
    return device_id


def new_token(device_id: str) -> str:
    """A fresh token for ``device_id`` (ConfigError for an id that breaks the pattern)."""
    return f"{check_device_id(device_id)}.{secrets.token_urlsafe(_SECRET_BYTES)}"


def check_token_text(token: str) -> str:
    """``token`` if a device may send it as a bearer token; ConfigError otherwise."""
    if len(token) > MAX_TOKEN_LENGTH or not _PRINTABLE.fullmatch(token):
        raise ConfigError(
            f"a device token is 1 to {MAX_TOKEN_LENGTH} characters of printable ASCII without spaces "
            f"(got {len(token)} characters)"
        )
    return token


def parse_token(token: str) -> DeviceToken | None:
    """The device id and secret of a well-formed token, or None."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    device_id, _, secret = token.rpartition(".")
    if not DEVICE_ID_PATTERN.fullmatch(device_id) or not _SECRET.fullmatch(secret):
        return None
    return DeviceToken(device_id, secret)


def device_id_of(token: str | None) -> str:
    """The device id ``token`` names; "" for no token or a malformed one."""
    parsed = parse_token(token) if token else None
    return parsed.device_id if parsed else ""
