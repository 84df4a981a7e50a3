"""Opens the device's gRPC channel: TLS with a pinned CA and a per-device bearer token, or plain text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from edgerec.tokens import check_token_text

ChannelOptions = Sequence[tuple[str, Any]]


def make_channel(
    target: str, *, tls_ca: Path | None = None, token: str | None = None, options: ChannelOptions = ()
) -> grpc.Channel:
    """A channel to ``target``.

    ``tls_ca`` (PEM) is the CA the server's certificate must chain to. ``token`` is sent on
    every call as ``authorization: Bearer <token>``; gRPC only sends it over TLS, so a token
    without ``tls_ca`` verifies the server against the system's CAs. With neither, plain text.
    """
    if tls_ca is None and token is None:
        return grpc.insecure_channel(target, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes() if tls_ca else None)
    if token is not None:
        check_token_text(token)
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, credentials, options=list(options))
