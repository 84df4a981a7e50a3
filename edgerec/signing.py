"""Ed25519 keys, manifest and freshness signatures: the publisher's (and server's) side of trust.

A key pair lives in two PEM files (PKCS#8 private key, mode 0600, unencrypted; SubjectPublicKeyInfo
public key). A key is named by its id, the hex sha256 of its raw 32-byte public key. A manifest
signature covers the exact serialized manifest bytes carried in ``SignedManifest.manifest``; a
freshness signature covers :data:`FRESHNESS_DOMAIN` followed by the exact serialized Freshness
bytes in ``SignedFreshness.freshness``, so neither kind can pass as the other. The device checks
both with :mod:`edgerec.trust`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgerec.errors import SigningKeyError
from edgerec.fsutil import fsync_dir
from edgerec.manifest import Manifest, SignedManifest, check_manifest, parse_manifest, rfc3339
from edgerec.v1 import manifest_pb2, update_pb2

logger = logging.getLogger(__name__)

# A PEM Ed25519 key is about 120 bytes; anything far larger is not a key file.
MAX_KEY_FILE_BYTES = 64 * 1024
# Prefix of every freshness signature's message: a signature over a freshness statement can never
# verify as one over a manifest (whose signed bytes are the bare manifest), nor the other way round.
FRESHNESS_DOMAIN = b"edgerec-freshness-v1\0"
# Most bytes a CheckUpdateRequest.nonce may have (a device sends 16); the server refuses longer ones.
MAX_NONCE_BYTES = 64
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: lowercase hex sha256 of its raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair as PEM files and return its key id. Never overwrites a file."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise SigningKeyError(f"the private and public key files must differ, both are {private_path}")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise SigningKeyError(f"refusing to overwrite {path}")
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, _PRIVATE_MODE)
    try:
        _write_new(public_path, public_pem, _PUBLIC_MODE)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    kid = key_id(private_key.public_key())
    logger.info("generated signing key %s (private %s, public %s)", kid, private_path, public_path)
    return kid


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key; SigningKeyError if unreadable or of another kind."""
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path} holds no readable unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; SigningKeyError if unreadable or of another kind."""
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path} holds no readable PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign_manifest(
    manifest: Manifest,
    private_key: Ed25519PrivateKey,
    *,
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> SignedManifest:
    """Serialize a copy of ``manifest`` deterministically and sign those bytes.

    With ``expires_in``, the copy's ``expires_at`` is set to ``now`` (default: the current
    UTC time) plus ``expires_in``. The caller's manifest is not modified. Raises
    ManifestError for a manifest a device would reject as malformed.
    """
    to_sign = Manifest()
    to_sign.CopyFrom(manifest)
    if expires_in is not None:
        if expires_in <= timedelta(0):
            raise ValueError(f"expires_in must be positive, got {expires_in}")
        start = datetime.now(UTC) if now is None else now
        if start.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        to_sign.expires_at = rfc3339(start + expires_in)
    check_manifest(to_sign)
    data = to_sign.SerializeToString(deterministic=True)
    signature = _sign(data, private_key)
    logger.info("signed %s version %d with key %s", to_sign.model, to_sign.version, signature.key_id)
    return SignedManifest(manifest=data, signatures=[signature])


def add_signature(signed: SignedManifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """A copy of ``signed`` co-signed by ``private_key`` (e.g. the new key during a rotation).

    The manifest bytes are unchanged; an earlier signature by the same key is replaced.
    Raises ManifestError if the bytes are not a well-formed manifest.
    """
    manifest = parse_manifest(signed)
    signature = _sign(signed.manifest, private_key)
    kept = [s for s in signed.signatures if s.key_id != signature.key_id]
    logger.info("co-signed %s version %d with key %s", manifest.model, manifest.version, signature.key_id)
    return SignedManifest(manifest=signed.manifest, signatures=[*kept, signature])


def freshness_message(freshness_bytes: bytes) -> bytes:
    """The exact bytes a freshness signature covers: the domain prefix, then the serialized Freshness."""
    return FRESHNESS_DOMAIN + freshness_bytes


def sign_freshness(freshness: update_pb2.Freshness, private_key: Ed25519PrivateKey) -> update_pb2.SignedFreshness:
    """Serialize ``freshness`` deterministically and sign those bytes (domain-separated from manifests)."""
    data = freshness.SerializeToString(deterministic=True)
    signature = _sign(freshness_message(data), private_key)
    return update_pb2.SignedFreshness(freshness=data, signatures=[signature])


def _sign(data: bytes, private_key: Ed25519PrivateKey) -> manifest_pb2.Signature:
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing needs an Ed25519 private key, got {type(private_key).__name__}")
    return manifest_pb2.Signature(key_id=key_id(private_key.public_key()), signature=private_key.sign(data))


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"cannot read key file {path}: {exc}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    return data


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` and write ``data`` durably; refuse if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningKeyError(f"refusing to overwrite {path}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; the result must not depend on it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
