"""The device's verification of a signed manifest: every rule in one place, and no I/O.

:class:`UpdateVerifier` takes a ``SignedManifest`` exactly as received and returns the
``Manifest`` the device may install, or raises. It reads no files, opens no sockets and
does not read the clock: the trusted keys, the activated version and the current time
are arguments, so every rule can be tested in memory (``tests/test_trust.py``).

Checks, in this order; the first failure raises:

1. Size: the whole SignedManifest (manifest bytes and signatures) is at most ``max_bytes``,
   before any cryptography or parsing. -> ManifestError
2. Signatures, over the exact ``manifest`` bytes, before those bytes are parsed:

   - signatures by keys outside the trusted set are ignored;
   - every signature by a trusted key must verify -> SignatureError;
   - a trusted key signs at most once (a second signature by it) -> SignatureError;
   - no signatures at all -> SignatureError;
   - signatures, but none by a trusted key -> UnknownKeyError;
   - fewer valid signatures by distinct trusted keys than ``threshold`` -> SignatureError.
3. Parse the signed bytes and check the format's rules (``edgerec.manifest.parse_manifest``). -> ManifestError
4. Model: the manifest names the model the device asked for. -> WrongModelError
5. Version: strictly greater than the activated version, so an older or equal version
   cannot be replayed. -> RollbackError
6. Expiry: an empty ``expires_at`` never expires; otherwise it must be an RFC 3339 time
   (-> ManifestError) later than ``now`` (-> ExpiredError).

Invariants:

- Nothing in the manifest is read before its signatures are verified, and the Manifest
  returned is parsed from exactly the bytes the signatures cover, never a re-serialization.
- A key id is computed from the key itself (:class:`TrustedKeys`), never believed from the
  manifest, so a signature cannot borrow a trusted key's name.
- Work is bounded: one size check, then at most one Ed25519 verification per trusted key.
- Every refusal is a TrustError or a ManifestError; no other exception escapes, whatever the bytes.

Key rotation: the device trusts a set of keys. To rotate, the publisher co-signs with the
old and the new key (``edgerec.signing.add_signature``), devices add the new key to their
set, and once every device trusts it the old key can be dropped from the set and from signing.
A manifest signed only by the new key is accepted by a device whose set contains the new key;
a co-signed one is accepted by devices that trust either key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgerec.errors import (
    ExpiredError,
    ManifestError,
    RollbackError,
    SignatureError,
    SigningKeyError,
    UnknownKeyError,
    WrongModelError,
)
from edgerec.manifest import MAX_MANIFEST_BYTES, Manifest, SignedManifest, parse_manifest
from edgerec.signing import key_id
from edgerec.v1 import manifest_pb2

logger = logging.getLogger(__name__)

# RFC 3339 date-time (section 5.6): full date, 'T', time, optional fraction, 'Z' or an offset.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


@dataclass(frozen=True)
class TrustedKeys:
    """The Ed25519 public keys a device trusts, by key id, and how many must sign a manifest."""

    keys: Mapping[str, Ed25519PublicKey] = field(hash=False)
    threshold: int = 1

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if not isinstance(key, Ed25519PublicKey):
                raise SigningKeyError(f"trusted key {kid!r} is a {type(key).__name__}, not an Ed25519 public key")
            if kid != key_id(key):
                raise SigningKeyError(f"trusted key listed as {kid!r} has the id {key_id(key)}")
        if not 1 <= self.threshold <= len(self.keys):
            raise ValueError(
                f"threshold must be between 1 and the number of keys ({len(self.keys)}), got {self.threshold}"
            )
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @classmethod
    def from_public_keys(cls, keys: Iterable[Ed25519PublicKey], *, threshold: int = 1) -> TrustedKeys:
        """Trust ``keys`` (ids computed from the keys; duplicates count once)."""
        return cls({key_id(key): key for key in keys}, threshold)

    def __repr__(self) -> str:
        return f"TrustedKeys(key_ids={sorted(self.keys)!r}, threshold={self.threshold})"


class UpdateVerifier:
    """Every rule a device applies to a signed manifest of one model before installing it. No I/O."""

    def __init__(self, model: str, trusted: TrustedKeys, *, max_bytes: int = MAX_MANIFEST_BYTES) -> None:
        self.model = model
        self.trusted = trusted
        self.max_bytes = max_bytes

    def verify(self, signed: SignedManifest, *, activated_version: int, now: datetime) -> Manifest:
        """The trusted Manifest in ``signed``, or a TrustError / ManifestError saying why not.

        ``activated_version`` is the version the device runs (0 for none); ``now`` is a
        timezone-aware current time.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self._check_size(signed)
        signers = self._check_signatures(signed.manifest, signed.signatures)
        manifest = parse_manifest(signed, max_bytes=self.max_bytes)
        self._check_model(manifest)
        self._check_version(manifest, activated_version)
        self._check_expiry(manifest, now)
        logger.debug("accepted %s version %d signed by %s", manifest.model, manifest.version, ", ".join(signers))
        return manifest

    def _check_size(self, signed: SignedManifest) -> None:
        size = signed.ByteSize()
        if size > self.max_bytes:
            raise ManifestError(f"signed manifest of {size} bytes exceeds the {self.max_bytes}-byte limit")

    def _check_signatures(self, data: bytes, signatures: Sequence[manifest_pb2.Signature]) -> list[str]:
        """The ids of the trusted keys whose signatures over ``data`` verify (at least ``threshold``)."""
        if not signatures:
            raise SignatureError("manifest is unsigned")
        valid: list[str] = []
        for signature in signatures:
            key = self.trusted.keys.get(signature.key_id)
            if key is None:
                continue
            if signature.key_id in valid:
                raise SignatureError(f"manifest carries more than one signature by key {signature.key_id}")
            try:
                key.verify(signature.signature, data)
            except InvalidSignature as exc:
                raise SignatureError(f"invalid signature by trusted key {signature.key_id}") from exc
            valid.append(signature.key_id)
        if not valid:
            named = sorted({s.key_id for s in signatures})
            raise UnknownKeyError(f"manifest is signed by none of the trusted keys (signed by {_ids(named)})")
        if len(valid) < self.trusted.threshold:
            raise SignatureError(
                f"manifest has {len(valid)} valid signature(s) by trusted keys, {self.trusted.threshold} required"
            )
        return valid

    def _check_model(self, manifest: Manifest) -> None:
        if manifest.model != self.model:
            raise WrongModelError(f"manifest is for model {manifest.model!r}, expected {self.model!r}")

    def _check_version(self, manifest: Manifest, activated_version: int) -> None:
        if manifest.version <= activated_version:
            raise RollbackError(
                f"{manifest.model} version {manifest.version} is not newer than the activated version "
                f"{activated_version}: refusing a rollback or replay"
            )

    def _check_expiry(self, manifest: Manifest, now: datetime) -> None:
        if not manifest.expires_at:
            return
        expires_at = parse_rfc3339(manifest.expires_at)
        if expires_at <= now:
            raise ExpiredError(
                f"{manifest.model} version {manifest.version} expired at {manifest.expires_at} (now {now.isoformat()})"
            )


def verify_manifest(
    signed: SignedManifest,
    *,
    model: str,
    trusted: TrustedKeys,
    activated_version: int,
    now: datetime,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> Manifest:
    """One-call form of :meth:`UpdateVerifier.verify`."""
    verifier = UpdateVerifier(model, trusted, max_bytes=max_bytes)
    return verifier.verify(signed, activated_version=activated_version, now=now)


def parse_rfc3339(text: str) -> datetime:
    """A timezone-aware datetime from an RFC 3339 date-time; ManifestError if it is not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ManifestError(f"not an RFC 3339 time: {text!r}")
    date, time, fraction, offset = match.groups()
    micros = f".{(fraction or '')[:6]:0<6}"
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{time}{micros}{zone}")
    except ValueError as exc:
        raise ManifestError(f"not an RFC 3339 time: {text!r}: {exc}") from exc


def _ids(key_ids: Sequence[str]) -> str:
    shown = ", ".join(repr(k[:16]) for k in key_ids[:4])
    return shown + (f" and {len(key_ids) - 4} more" if len(key_ids) > 4 else "")
