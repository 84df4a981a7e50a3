"""Writes every vector and the index into a folder, then runs each vector through the SDK and refuses to
finish if any outcome differs from what the vector says (a generator bug, or an SDK that changed)."""

from __future__ import annotations

import hashlib
import inspect
import logging
import shutil
from pathlib import Path

from edgerec import errors
from edgerec.manifest import rfc3339
from edgerec.tools.vectors import payloads, plan_vectors, trust_vectors
from edgerec.tools.vectors.index import IndexWriter, Json
from edgerec.tools.vectors.keys import write_keys
from edgerec.tools.vectors.models import reference_versions
from edgerec.tools.vectors.run import run_vector

log = logging.getLogger(__name__)

GENERATOR = "python -m edgerec.tools.vectors --out tests/vectors"


def error_parents() -> dict[str, str | None]:
    """Every edgerec error class and the edgerec class it derives from (None for EdgerecError)."""
    out: dict[str, str | None] = {}
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.EdgerecError):
            parent = next((b for b in cls.__mro__[1:] if issubclass(b, errors.EdgerecError)), None)
            out[name] = parent.__name__ if parent is not None else None
    return dict(sorted(out.items()))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate(out: Path) -> Json:
    """Write the vectors into ``out`` (emptied first, except README.md) and return the index document."""
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name != "README.md":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    index = IndexWriter(out)
    index.meta = {
        "generator": GENERATOR,
        "warning": "TEST KEYS ONLY: the private keys below are public; never trust them outside tests.",
        "errors": error_parents(),
        "clock": {
            "statements_issued_at": rfc3339(trust_vectors.ISSUED),
            "default_now": rfc3339(trust_vectors.NOW),
            "note": "verify every vector at its params.now, never at the real time: the vectors never expire",
        },
    }
    write_keys(index)
    v1, v2 = reference_versions()
    payloads.model_files(index, v1, v2)
    made = payloads.codec_vectors(index, v1, v2)
    payloads.crafted_full_vectors(index, v2)
    payloads.crafted_tensor_vectors(index)
    payloads.malformed_vectors(index, v1, v2, made)
    ids = {codec: (_sha(data), len(data)) for codec, data in made.items()}
    graph = index.files["payloads/full/model.onnx.erpatch"]
    ids["full/model.onnx"] = (graph["sha256"], graph["size"])
    scene = trust_vectors.Scene(v1, v2, ids)
    trust_vectors.manifest_vectors(index, scene)
    trust_vectors.freshness_vectors(index)
    trust_vectors.answer_vectors(index, scene)
    plan_vectors.plan_vectors(index, scene)
    for vector in index.vectors:
        got = run_vector(out, vector)
        want = {k: v for k, v in vector["expect"].items() if k != "output"}
        if got != want:
            raise AssertionError(f"vector {vector['id']}: the SDK gives {got}, the vector says {want}")
    index.write()
    log.info("wrote %d vectors and %d files to %s", len(index.vectors), len(index.files), out)
    return index.document()
