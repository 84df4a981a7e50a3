"""Signs the freshness statement of each CheckUpdate answer: what the device should run, right now.

A manifest's signature says what a version is; it cannot say that no newer version exists. The
statement does (the role TUF's timestamp metadata plays): the newest full version, the version
this answer tells the device to run, the device id and nonce of the request, and a short
lifetime. A device that verifies signatures refuses an answer without one, or one that
disagrees with it (``edgerec.trust``), so nobody without the key can make "no update" or
"this is the latest" up. Each answer gets its own statement: the nonce in it is the request's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.errors import InvalidInputError
from edgerec.manifest import rfc3339
from edgerec.signing import MAX_NONCE_BYTES, sign_freshness
from edgerec.v1 import update_pb2

DEFAULT_FRESHNESS_TTL = timedelta(minutes=5)


def check_nonce(request: update_pb2.CheckUpdateRequest) -> None:
    """InvalidInputError for a nonce longer than the protocol allows (it is echoed into a signed statement)."""
    if len(request.nonce) > MAX_NONCE_BYTES:
        raise InvalidInputError(f"nonce of {len(request.nonce)} bytes exceeds the {MAX_NONCE_BYTES}-byte limit")


class FreshnessSigner:
    """Makes and signs one short-lived statement per answer; thread-safe (it keeps no state)."""

    def __init__(self, private_key: Ed25519PrivateKey, ttl: timedelta = DEFAULT_FRESHNESS_TTL) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"freshness ttl must be positive, got {ttl}")
        self.private_key = private_key
        self.ttl = ttl

    def sign(
        self,
        request: update_pb2.CheckUpdateRequest,
        *,
        latest_version: int,
        target_version: int,
        now: datetime | None = None,
    ) -> update_pb2.SignedFreshness:
        """The signed statement answering ``request``: run ``target_version``; ``latest_version`` is the newest."""
        check_nonce(request)
        issued = datetime.now(UTC) if now is None else now
        statement = freshness_statement(
            request, latest_version=latest_version, target_version=target_version, issued=issued, ttl=self.ttl
        )
        return sign_freshness(statement, self.private_key)


def freshness_statement(
    request: update_pb2.CheckUpdateRequest,
    *,
    latest_version: int,
    target_version: int,
    issued: datetime,
    ttl: timedelta,
) -> update_pb2.Freshness:
    """The unsigned statement answering ``request``: it echoes the question and lives ``ttl`` from ``issued``."""
    return update_pb2.Freshness(
        model=request.model,
        latest_version=latest_version,
        target_version=target_version,
        device_id=request.device_id,
        nonce=request.nonce,
        requested_version=request.target_version,
        channel=request.channel,
        labels=request.labels,
        app_version=request.app_version,
        issued_at=rfc3339(issued),
        expires_at=rfc3339(issued + ttl),
    )
