"""What a device says about itself for the release policy: its channel, labels and app version.

One rule for both ends: the device checks its configuration with it, the server checks every
request and report with it (an out-of-bounds value is ``InvalidInputError``). The values are
unsigned and chosen by the device: they decide what it is offered, never what it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from edgerec.errors import InvalidInputError

__all__ = [
    "DEFAULT_CHANNEL",
    "MAX_APP_VERSION_CHARS",
    "MAX_LABELS",
    "MAX_LABEL_VALUE_CHARS",
    "MAX_NAME_CHARS",
    "channel_or_default",
    "validate_app_version",
    "validate_channel",
    "validate_labels",
]

DEFAULT_CHANNEL = "stable"
"""The channel of a device that names none."""

MAX_NAME_CHARS = 64
"""Longest channel name or label key."""
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 128
MAX_APP_VERSION_CHARS = 64

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def validate_channel(channel: str) -> str:
    """``channel`` if it is empty (the default channel) or a name: ``[a-z0-9][a-z0-9._-]*``, at most 64 characters."""
    if channel and (len(channel) > MAX_NAME_CHARS or not _NAME.match(channel)):
        raise InvalidInputError(
            f"channel {channel[:80]!r} is not a name: use up to {MAX_NAME_CHARS} lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return channel


def channel_or_default(channel: str) -> str:
    """The channel a request or report names, ``DEFAULT_CHANNEL`` when it names none (checked)."""
    return validate_channel(channel) or DEFAULT_CHANNEL


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``labels`` if it has at most 32 entries, keys named as channels, values of at most 128 characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidInputError(f"{len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not key or len(key) > MAX_NAME_CHARS or not _NAME.match(key):
            raise InvalidInputError(
                f"label key {key[:80]!r} is not a name: use up to {MAX_NAME_CHARS} lowercase letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise InvalidInputError(
                f"label {key!r} has a {len(value)}-character value; at most {MAX_LABEL_VALUE_CHARS} are allowed"
            )
    return dict(labels)


def validate_app_version(app_version: str) -> str:
    """``app_version`` if it has at most 64 printable characters."""
    if len(app_version) > MAX_APP_VERSION_CHARS or not app_version.isprintable():
        raise InvalidInputError(
            f"app version {app_version[:80]!r} must be at most {MAX_APP_VERSION_CHARS} printable characters"
        )
    return app_version
