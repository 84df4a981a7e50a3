"""The manifest: what a published model version is, and how to read one safely.

A manifest is an ``edgerec.v1.Manifest`` protobuf. It travels as a ``SignedManifest``
whose ``manifest`` field holds the serialized bytes exactly as published, so a
signature (added by later work) covers bytes, not a re-serialization.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from edgerec.errors import ManifestError
from edgerec.v1 import manifest_pb2, tensor_pb2

FORMAT_VERSION = 1
# Annotations of a partial version (a budgeted update): the full version it approximates
# and the version it was built for.
PARTIAL_OF = "edgerec.partial_of"
PARTIAL_BASE = "edgerec.partial_base"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Matched with fullmatch: a "$" would also match before a final newline ("cli\n").
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Manifest = manifest_pb2.Manifest
Artifact = manifest_pb2.Artifact
AccuracyGate = manifest_pb2.AccuracyGate
ArtifactFile = manifest_pb2.ArtifactFile
FixedBatchFile = manifest_pb2.FixedBatchFile
SignedManifest = manifest_pb2.SignedManifest
TensorSpec = tensor_pb2.TensorSpec
GoldenCase = manifest_pb2.GoldenCase


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a usable model name (it becomes a folder name), else raise."""
    if not _MODEL_NAME.fullmatch(name):
        shown = repr(name[:80]) + (f"… ({len(name)} characters)" if len(name) > 80 else "")
        raise ManifestError(
            f"invalid model name {shown}: use 1-128 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return name


def validate_relative_path(path: str) -> str:
    """Return ``path`` if it is a safe relative '/'-separated path (no '..', not absolute)."""
    parts = path.split("/")
    if not path or "\\" in path or "\0" in path or any(p in ("..", ".", "") for p in parts):
        raise ManifestError(f"unsafe artifact path {path!r}")
    return path


def artifact_digest(files: Iterable[ArtifactFile]) -> str:
    """One sha256 naming an artifact: over ``path\\tsize\\tsha256\\n`` lines sorted by path."""
    lines = sorted(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def make_artifact(recipe: str, runtime: str, entrypoint: str, files: Sequence[ArtifactFile]) -> Artifact:
    """An Artifact with its digest filled in."""
    artifact = Artifact(recipe=recipe, runtime=runtime, entrypoint=entrypoint, files=files)
    artifact.digest = artifact_digest(files)
    return artifact


def rfc3339(moment: datetime) -> str:
    """``moment`` as the UTC timestamp manifests and freshness statements carry (microseconds, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def sign_nothing(manifest: Manifest) -> SignedManifest:
    """Wrap a manifest without signatures (signing is layered on by edgerec.signing)."""
    return SignedManifest(manifest=manifest.SerializeToString(deterministic=True))


def parse_manifest(signed: SignedManifest, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Parse and check a manifest's own rules. Raises ManifestError on anything off."""
    if len(signed.manifest) > max_bytes:
        raise ManifestError(f"manifest of {len(signed.manifest)} bytes exceeds the {max_bytes}-byte limit")
    manifest = Manifest()
    try:
        manifest.ParseFromString(signed.manifest)
    except DecodeError as exc:
        raise ManifestError(f"manifest bytes do not parse: {exc}") from exc
    check_manifest(manifest)
    return manifest


def check_manifest(manifest: Manifest) -> None:
    """Raise ManifestError unless the manifest is well formed."""
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(f"unsupported manifest format_version {manifest.format_version}")
    validate_model_name(manifest.model)
    if manifest.version < 1:
        raise ManifestError("manifest version must be >= 1")
    if not manifest.artifacts:
        raise ManifestError("manifest lists no artifacts")
    recipes: set[str] = set()
    for artifact in manifest.artifacts:
        if artifact.recipe in recipes:
            raise ManifestError(f"recipe {artifact.recipe!r} listed twice")
        recipes.add(artifact.recipe)
        paths = [validate_relative_path(f.path) for f in artifact.files]
        if len(set(paths)) != len(paths):
            raise ManifestError(f"artifact {artifact.recipe!r} lists a file twice")
        if artifact.entrypoint not in paths:
            raise ManifestError(f"artifact {artifact.recipe!r} entrypoint {artifact.entrypoint!r} not in files")
        for f in artifact.files:
            if not _SHA256_HEX.fullmatch(f.sha256):
                raise ManifestError(f"file {f.path!r} has a malformed sha256")
        if artifact.digest != artifact_digest(artifact.files):
            raise ManifestError(f"artifact {artifact.recipe!r} digest does not match its files")
        _check_fixed_batches(artifact, set(paths))


def _check_fixed_batches(artifact: Artifact, paths: set[str]) -> None:
    sizes = [entry.batch_size for entry in artifact.fixed_batches]
    if any(size < 1 for size in sizes) or sizes != sorted(set(sizes)):
        raise ManifestError(f"artifact {artifact.recipe!r} fixed batch sizes {sizes} are not ascending positive sizes")
    for entry in artifact.fixed_batches:
        if entry.path not in paths:
            raise ManifestError(f"artifact {artifact.recipe!r} fixed-batch file {entry.path!r} not in files")


def find_artifact(manifest: Manifest, recipe: str) -> Artifact | None:
    for artifact in manifest.artifacts:
        if artifact.recipe == recipe:
            return artifact
    return None


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """A JSON-ready view of a manifest (for CLIs and humans; never signed).

    Unlike protobuf's JSON mapping, which writes 64-bit integers as strings, sizes and versions stay numbers.
    """
    view = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    return cast(dict[str, Any], _numbers_as_numbers(view, cast(Descriptor, manifest.DESCRIPTOR)))


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _numbers_as_numbers(value: Any, descriptor: Descriptor) -> Any:
    """``value`` (a MessageToDict view of a ``descriptor`` message) with its 64-bit integer strings made ints."""
    if not isinstance(value, dict):
        return value
    fields = descriptor.fields_by_name
    out: dict[str, Any] = {}
    for name, item in value.items():
        field = fields.get(name)
        if field is None:
            out[name] = item
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[name] = {k: _field_value(v, value_field) for k, v in item.items()}
        elif isinstance(item, list):
            out[name] = [_field_value(v, field) for v in item]
        else:
            out[name] = _field_value(item, field)
    return out


def _field_value(item: Any, field: FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _numbers_as_numbers(item, field.message_type)
    if field.type in _INT64_TYPES and isinstance(item, str):
        return int(item)
    return item
