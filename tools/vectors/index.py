"""The index of the conformance vectors: every file with its size and sha256, every vector with its
inputs, parameters and expected result, written as one JSON document (``index.json``).

The format is described for implementers in ``tests/vectors/README.md``; :data:`FORMAT` and
:data:`FORMAT_VERSION` name it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "edgerec-conformance-vectors"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"

Json = dict[str, Any]


@dataclass
class IndexWriter:
    """Collects files and vectors under ``root`` and writes ``index.json`` there."""

    root: Path
    files: dict[str, Json] = field(default_factory=dict)
    vectors: list[Json] = field(default_factory=list)
    keys: list[Json] = field(default_factory=list)
    meta: Json = field(default_factory=dict)

    def add_file(self, name: str, data: bytes, *, role: str) -> str:
        """Write ``data`` at ``root/name`` (a '/'-separated relative path) and record it; return ``name``.

        ``role`` says what the file is: ``"model"`` (a base or target file), ``"payload"`` (a
        container made by an encoder: its bytes may differ between library versions, what it
        decodes to may not), ``"crafted"`` (bytes built by hand, stable), ``"message"`` (a
        serialized protobuf message) or ``"key"``.
        """
        if name in self.files:
            if self.files[name]["sha256"] != hashlib.sha256(data).hexdigest():
                raise ValueError(f"vector file {name} written twice with different bytes")
            return name
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "role": role}
        return name

    def add_vector(self, vector: Json) -> None:
        """Record one vector; its ``id`` must be new and every input a recorded file."""
        if any(v["id"] == vector["id"] for v in self.vectors):
            raise ValueError(f"vector id {vector['id']} used twice")
        for name in vector.get("inputs", {}).values():
            if name is not None and name not in self.files:
                raise ValueError(f"vector {vector['id']} names unrecorded file {name}")
        self.vectors.append(vector)

    def document(self) -> Json:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **self.meta,
            "keys": self.keys,
            "files": dict(sorted(self.files.items())),
            "vectors": self.vectors,
        }

    def write(self) -> Path:
        path = self.root / INDEX_NAME
        path.write_text(json.dumps(self.document(), indent=1, sort_keys=False) + "\n")
        return path


def load_index(root: Path) -> Json:
    """The parsed ``index.json`` under ``root``."""
    document: Json = json.loads((root / INDEX_NAME).read_text())
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / INDEX_NAME} is not a version-{FORMAT_VERSION} {FORMAT} index")
    return document
