"""Conformance vectors: the bytes a second implementation of the edgerec device must handle exactly.

``python -m edgerec.tools.vectors --out tests/vectors`` writes, deterministically and without
downloads: test-only Ed25519 keys from fixed seeds; two versions of a micro reference DLRM; payload
containers of every codec between them; hand-built ``tensor`` bodies for every op; malformed
containers; signed manifests, freshness statements and CheckUpdate answers, valid and broken; and
unsigned plans. ``index.json`` describes each vector (inputs, parameters, expected output or error
class); ``tests/vectors/README.md`` explains the format to implementers. The modules: :mod:`.index`
(the JSON index), :mod:`.keys`, :mod:`.models`, :mod:`.payloads` with :mod:`.tensor_ops`,
:mod:`.containers` and :mod:`.frames`, :mod:`.trust_vectors`, :mod:`.run` (a vector through the SDK)
and :mod:`.generate`.
"""

from __future__ import annotations

from edgerec.tools.vectors.generate import generate
from edgerec.tools.vectors.index import INDEX_NAME, load_index
from edgerec.tools.vectors.run import run_vector

__all__ = ["INDEX_NAME", "generate", "load_index", "run_vector"]
