"""The registry documents a replica shares its fleet records in: one per (model, replica), and one
index per model naming the replicas that wrote.

A replica's document is zstd-compressed JSON (at most ``MAX_DOCUMENT_BYTES`` stored,
``MAX_DECODED_BYTES`` once decompressed). Every document is read as hostile: another replica, an
older release or a damaged store may have written it, so :func:`decode_replica_doc` checks every
field's type and bound and raises ``ValueError`` on the first one that is off.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import zstandard

from edgerec.attributes import MAX_APP_VERSION_CHARS, validate_channel, validate_labels
from edgerec.errors import InvalidInputError
from edgerec.server.release.records import DeviceRecord, VersionRecord
from edgerec.tokens import DEVICE_ID_PATTERN

__all__ = [
    "FORMAT",
    "MAX_DECODED_BYTES",
    "MAX_INSTALL_FAILURES",
    "MAX_NAME_CHARS",
    "MAX_REPLICAS",
    "MAX_ROLLBACKS",
    "MAX_RUNTIMES",
    "MAX_VERSIONS",
    "REPLICA_ID",
    "decode_index",
    "decode_replica_doc",
    "encode_index",
    "encode_replica_doc",
    "index_key",
    "record_from_json",
    "record_to_json",
    "replica_key",
]

FORMAT = 1
MAX_DECODED_BYTES = 16 * 1024 * 1024
"""Largest replica document once decompressed (a bound on what one document may cost to parse)."""
MAX_REPLICAS = 256
"""Replicas an index names at most (the least recently flushed go first)."""
MAX_VERSIONS = 8
MAX_INSTALL_FAILURES = 16
MAX_ROLLBACKS = 64
MAX_RUNTIMES = 8
MAX_NAME_CHARS = 64
MAX_VERSION_NUMBER = 2**63 - 1
MAX_COUNT = 2**63 - 1

REPLICA_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""What a replica id looks like (it is a document key segment)."""

_DOC_LEVEL = 3


def _model_segment(model: str) -> str:
    # Model names may hold capitals and "..", which document keys refuse: name the model by its hash.
    return "m-" + hashlib.sha256(model.encode()).hexdigest()[:32]


def index_key(model: str) -> str:
    """The key of ``model``'s index of replicas."""
    return f"fleet/{_model_segment(model)}/replicas"


def replica_key(model: str, replica_id: str) -> str:
    """The key of the document replica ``replica_id`` keeps ``model``'s records in."""
    if not REPLICA_ID.match(replica_id):
        raise ValueError(f"replica id {replica_id[:80]!r} must match {REPLICA_ID.pattern}")
    return f"fleet/{_model_segment(model)}/replica/{replica_id}"


# --- records ------------------------------------------------------------------------


def record_to_json(record: DeviceRecord) -> dict[str, Any]:
    """``record`` as a JSON object (the document's form)."""
    return {
        "device_id": record.device_id,
        "channel": record.channel,
        "labels": dict(record.labels),
        "runtimes": list(record.runtimes),
        "app_version": record.app_version,
        "attributes_unix_s": record.attributes_unix_s,
        "current_version": record.current_version,
        "offered_version": record.offered_version,
        "offered_since_unix_s": record.offered_since_unix_s,
        "last_check_unix_s": record.last_check_unix_s,
        "first_seen_unix_s": record.first_seen_unix_s,
        "last_report_unix_s": record.last_report_unix_s,
        "active_version": record.active_version,
        "held_back_version": record.held_back_version,
        "install_failures": [[v, e] for v, e in record.install_failures],
        "rollbacks_from": list(record.rollbacks_from),
        "versions": [
            [v.version, v.predictions, v.local_errors, v.fallbacks, v.p99_s, v.impressions, v.clicks, v.score_sum,
             v.active_since_unix_s]
            for v in record.versions
        ],
    }  # fmt: skip


def _int(value: object, what: str, high: int = MAX_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"{what} must be an integer in 0..{high}")
    return value


def _float(value: object, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0")
    return float(value)


def _str(value: object, what: str, high: int) -> str:
    if not isinstance(value, str) or len(value) > high:
        raise ValueError(f"{what} must be a string of at most {high} characters")
    return value


def _list(value: object, what: str, high: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > high:
        raise ValueError(f"{what} must be a list of at most {high} entries")
    return value


def _version_from_json(value: object) -> VersionRecord:
    fields = _list(value, "a version record", 9)
    if len(fields) != 9:
        raise ValueError("a version record has 9 fields")
    return VersionRecord(
        version=_int(fields[0], "version", MAX_VERSION_NUMBER),
        predictions=_int(fields[1], "predictions"),
        local_errors=_int(fields[2], "local_errors"),
        fallbacks=_int(fields[3], "fallbacks"),
        p99_s=_float(fields[4], "p99_s"),
        impressions=_int(fields[5], "impressions"),
        clicks=_int(fields[6], "clicks"),
        score_sum=_float(fields[7], "score_sum"),
        active_since_unix_s=_float(fields[8], "active_since_unix_s"),
    )


def record_from_json(obj: object, model: str) -> DeviceRecord:
    """The record ``obj`` describes, every field checked; ValueError when one is off."""
    if not isinstance(obj, dict):
        raise ValueError("a device record must be an object")
    device_id = _str(obj.get("device_id"), "device_id", 128)
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ValueError("device_id is not a device id")
    labels = obj.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("labels must be an object of strings")
    try:
        channel = validate_channel(_str(obj.get("channel"), "channel", MAX_NAME_CHARS)) or "stable"
        checked_labels = validate_labels(labels)
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None
    runtimes = tuple(_str(r, "runtime", MAX_NAME_CHARS) for r in _list(obj.get("runtimes"), "runtimes", MAX_RUNTIMES))
    failures = []
    for entry in _list(obj.get("install_failures"), "install_failures", MAX_INSTALL_FAILURES):
        pair = _list(entry, "an install failure", 2)
        if len(pair) != 2:
            raise ValueError("an install failure is [version, error]")
        failures.append((_int(pair[0], "version", MAX_VERSION_NUMBER), _str(pair[1], "error", MAX_NAME_CHARS)))
    versions = tuple(_version_from_json(v) for v in _list(obj.get("versions"), "versions", MAX_VERSIONS))
    return DeviceRecord(
        device_id=device_id,
        model=model,
        channel=channel,
        labels=checked_labels,
        runtimes=runtimes,
        app_version=_str(obj.get("app_version"), "app_version", MAX_APP_VERSION_CHARS),
        attributes_unix_s=_float(obj.get("attributes_unix_s"), "attributes_unix_s"),
        current_version=_int(obj.get("current_version"), "current_version", MAX_VERSION_NUMBER),
        offered_version=_int(obj.get("offered_version"), "offered_version", MAX_VERSION_NUMBER),
        offered_since_unix_s=_float(obj.get("offered_since_unix_s"), "offered_since_unix_s"),
        last_check_unix_s=_float(obj.get("last_check_unix_s"), "last_check_unix_s"),
        first_seen_unix_s=_float(obj.get("first_seen_unix_s"), "first_seen_unix_s"),
        last_report_unix_s=_float(obj.get("last_report_unix_s"), "last_report_unix_s"),
        active_version=_int(obj.get("active_version"), "active_version", MAX_VERSION_NUMBER),
        held_back_version=_int(obj.get("held_back_version"), "held_back_version", MAX_VERSION_NUMBER),
        install_failures=tuple(failures),
        rollbacks_from=tuple(
            _int(v, "rollback", MAX_VERSION_NUMBER)
            for v in _list(obj.get("rollbacks_from"), "rollbacks_from", MAX_ROLLBACKS)
        ),
        versions=versions,
    )


# --- documents ----------------------------------------------------------------------


def encode_replica_doc(model: str, replica_id: str, written_unix_s: float, records: Iterable[DeviceRecord]) -> bytes:
    """The stored bytes of a replica's document holding ``records``."""
    doc = {
        "format": FORMAT,
        "model": model,
        "replica": replica_id,
        "written_unix_s": written_unix_s,
        "devices": [record_to_json(r) for r in records],
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return zstandard.ZstdCompressor(level=_DOC_LEVEL).compress(text)


def decode_replica_doc(data: bytes, model: str, max_devices: int) -> tuple[float, list[DeviceRecord]]:
    """(when it was written, its records) of a stored replica document of ``model``; ValueError when
    it is malformed, too big once decompressed, of another model, or holds more than ``max_devices``."""
    try:
        text = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECODED_BYTES)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame within {MAX_DECODED_BYTES} bytes: {exc}") from None
    if len(text) > MAX_DECODED_BYTES:
        raise ValueError(f"more than {MAX_DECODED_BYTES} bytes once decompressed")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a format-{FORMAT} fleet document")
    if doc.get("model") != model:
        raise ValueError("a document of another model")
    written = _float(doc.get("written_unix_s"), "written_unix_s")
    devices = _list(doc.get("devices"), "devices", max_devices)
    return written, [record_from_json(d, model) for d in devices]


def encode_index(replicas: Mapping[str, float]) -> bytes:
    """The stored bytes of an index naming ``replicas`` (id -> when it last announced itself)."""
    return json.dumps({"format": FORMAT, "replicas": dict(replicas)}, sort_keys=True).encode()


def decode_index(data: bytes) -> dict[str, float]:
    """The replicas an index names (id -> time); ValueError when malformed or naming too many."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("replicas"), dict):
        raise ValueError(f"not a format-{FORMAT} fleet index")
    replicas: dict[str, Any] = doc["replicas"]
    if len(replicas) > MAX_REPLICAS:
        raise ValueError(f"an index of {len(replicas)} replicas; at most {MAX_REPLICAS}")
    out = {}
    for replica, when in replicas.items():
        if not REPLICA_ID.match(replica):
            raise ValueError(f"replica id {replica[:80]!r} is not one")
        out[replica] = _float(when, "replica time")
    return out
