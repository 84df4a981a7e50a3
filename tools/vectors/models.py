"""Two versions of a micro reference DLRM (``edgerec.reference``), exported as canonical ONNX artifacts.

Version 1 is the model as initialised from a fixed seed; version 2 is version 1 after a simulated
sparse training step: a few rows of the first embedding table and every weight of the top MLP's
first layer move a little, the second table does not change. Both are exported through the
publisher's own path (``torch.export``, then ``edgerec.server.publish.export.to_onnx``), which is
byte-stable, so the files (and every tensor's offset in ``model.onnx.data``) are a pure function of
this module. Each version is two files: ``model.onnx`` (the graph, small tensors inline) and
``model.onnx.data`` (tensors of at least 1 KiB back to back).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgerec.reference.data import ClickGenerator, ReferenceConfig

if TYPE_CHECKING:
    from edgerec.reference.model import DLRM

CONFIG = ReferenceConfig(2, 200, 8, 4, bottom_mlp=(8,), top_mlp=(32,))
"""Two tables of 200 rows of 8 floats, 4 dense features: about 20 KB of files per version."""
SEED = 1
CHANGED_ROWS = 12
FILES = ("model.onnx", "model.onnx.data")

Version = dict[str, bytes]


def reference_versions() -> tuple[Version, Version]:
    """The files of versions 1 and 2, by name."""
    from edgerec.reference.model import DLRM
    from edgerec.reference.train import export_program
    from edgerec.server.publish.export import to_onnx

    sample = ClickGenerator(CONFIG, seed=SEED).day(0, 4)
    model = DLRM(CONFIG, seed=SEED)
    versions: list[Version] = []
    with tempfile.TemporaryDirectory(prefix="edgerec-vectors-") as tmp:
        for number in (1, 2):
            if number == 2:
                _train_step(model)
            folder = Path(tmp) / f"v{number}"
            export_program(model, folder / "model.pt2", sample)
            to_onnx(folder / "model.pt2", folder / "model.onnx")
            versions.append({name: (folder / name).read_bytes() for name in FILES})
    return versions[0], versions[1]


def _train_step(model: DLRM) -> None:
    """Move ``CHANGED_ROWS`` rows of table 0 and the whole first top layer by small, seeded amounts."""
    import torch as t

    rng = np.random.default_rng(SEED)
    with t.no_grad():
        table = model.embedding_tables()[0]
        rows = np.sort(rng.choice(CONFIG.rows_per_table, CHANGED_ROWS, replace=False))
        step = rng.normal(0.0, 0.01, (CHANGED_ROWS, CONFIG.embedding_dim)).astype(np.float32)
        table[t.from_numpy(rows)] += t.from_numpy(step)
        layer = model.top[0]
        assert isinstance(layer, t.nn.Linear)
        layer.weight += t.from_numpy(rng.normal(0.0, 1e-4, tuple(layer.weight.shape)).astype(np.float32))
