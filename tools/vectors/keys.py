"""The vectors' Ed25519 keys, made from fixed seeds. TEST ONLY: their private halves are public.

``root-a`` and ``root-b`` are the keys a test device trusts; ``stranger`` is a key it does not
know. A key's seed is the 32-byte RFC 8032 private key; its id is the hex sha256 of its raw
public key (``edgerec.signing.key_id``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.signing import key_id
from edgerec.tools.vectors.index import IndexWriter

TRUSTED = ("root-a", "root-b")
STRANGER = "stranger"
NAMES = (*TRUSTED, STRANGER)


@dataclass(frozen=True)
class VectorKey:
    """One named key; ``seed`` is its raw 32-byte private key."""

    name: str
    seed: bytes

    @property
    def private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())


def vector_key(name: str) -> VectorKey:
    """The key called ``name``: its seed is sha256 of ``"edgerec test key " + name`` (never use outside tests)."""
    return VectorKey(name, hashlib.sha256(f"edgerec test key {name}".encode()).digest())


def write_keys(index: IndexWriter) -> dict[str, VectorKey]:
    """Record every key in the index (seed, raw public key, key id, PEM files); return them by name."""
    keys = {name: vector_key(name) for name in NAMES}
    for key in keys.values():
        private_pem = key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        index.keys.append(
            {
                "name": key.name,
                "test_only": True,
                "trusted_by_default": key.name in TRUSTED,
                "seed_hex": key.seed.hex(),
                "public_key_hex": key.public_raw.hex(),
                "key_id": key.key_id,
                "private_pem": index.add_file(f"keys/{key.name}.key.pem", private_pem, role="key"),
                "public_pem": index.add_file(f"keys/{key.name}.pub.pem", public_pem, role="key"),
            }
        )
    return keys
