"""The model registry: published versions, their files, payloads and small documents.

One interface (:class:`ModelRegistry`), two backends: a local folder with SQLite
(:class:`LocalRegistry`, also importable as ``Registry``) and an S3-compatible bucket
(``edgerec.registry.s3.S3Registry``, which needs boto3). :func:`open_registry` picks one.
"""

from __future__ import annotations

from pathlib import Path

from edgerec.errors import RegistryUnavailableError
from edgerec.registry.base import Document, ManifestFactory, ModelRegistry, PayloadRecord, VersionFile
from edgerec.registry.local import LocalRegistry, copy_registry

Registry = LocalRegistry
"""The local folder registry, under the name callers have always used."""

__all__ = [
    "Document",
    "LocalRegistry",
    "ManifestFactory",
    "ModelRegistry",
    "PayloadRecord",
    "Registry",
    "VersionFile",
    "copy_registry",
    "open_registry",
]


def open_registry(spec: str | Path, *, s3_endpoint: str | None = None, cache_dir: Path | None = None) -> ModelRegistry:
    """The registry ``spec`` names: a folder path, or ``s3://BUCKET/PREFIX`` for a shared bucket.

    For S3, the endpoint is ``s3_endpoint`` or else ``AWS_ENDPOINT_URL`` (else AWS itself), the
    credentials come the standard AWS ways, and ``cache_dir`` holds verified local copies of files.
    """
    text = str(spec)
    if text.startswith("s3://"):
        try:
            from edgerec.registry.s3 import S3Registry  # deferred: boto3 is only in the serve and publish extras
        except ImportError as exc:
            raise RegistryUnavailableError(
                f"an S3 registry needs boto3 ({exc}): pip install 'edgerec[serve]' or 'edgerec[publish]'"
            ) from exc
        return S3Registry.from_url(text, endpoint_url=s3_endpoint, cache_dir=cache_dir)
    if "://" in text:
        raise ValueError(f"unsupported registry {text!r}: give a folder or s3://BUCKET/PREFIX")
    return LocalRegistry(Path(spec))
