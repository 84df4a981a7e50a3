"""Signs manifests as they are served, with a short expiry, so a replayed old answer goes stale.

The registry keeps manifests as published; the server, which holds the signing key,
signs each one with ``expires_at = now + ttl`` and reuses that signature until half of
the ttl has passed (the same idea as TUF's frequently re-signed timestamp metadata).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.manifest import Manifest, SignedManifest
from edgerec.signing import sign_manifest

DEFAULT_TTL = timedelta(days=7)


class ManifestSigner:
    """Signs manifests for serving; thread-safe; caches each (model, version) until half its ttl."""

    def __init__(self, private_key: Ed25519PrivateKey, ttl: timedelta = DEFAULT_TTL) -> None:
        self.private_key = private_key
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[datetime, SignedManifest]] = {}
        self._lock = threading.Lock()

    def sign(self, manifest: Manifest) -> SignedManifest:
        key = (manifest.model, manifest.version)
        now = datetime.now(UTC)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now < cached[0]:
                return cached[1]
        signed = sign_manifest(manifest, self.private_key, expires_in=self.ttl, now=now)
        with self._lock:
            self._cache[key] = (now + self.ttl / 2, signed)
        return signed
