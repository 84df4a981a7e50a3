"""Train, score and export the reference DLRM.

Embeddings are trained with ``SparseAdam`` and the MLPs with ``Adam``: a row no
sample looks up keeps its exact bytes, so a day of incremental training changes
only the rows that day touched.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edgerec.reference.data import (
    DENSE_INPUT,
    SCORE_OUTPUT,
    SPARSE_INPUT,
    ClickBatch,
    ClickGenerator,
    ReferenceConfig,
)
from edgerec.reference.model import DLRM

__all__ = ["build_and_train", "export_program", "predict", "train"]

logger = logging.getLogger(__name__)

# Same key as edgerec.server.publish.export.OUTPUT_NAMES_EXTRA_FILE: to_onnx names
# the ONNX outputs after it (tests/test_export_quantize.py checks the round trip).
_OUTPUT_NAMES_EXTRA_FILE = "edgerec/output_names.json"

DEFAULT_LR = 3e-3
DEFAULT_EMBEDDING_LR = 1e-2


def _split_parameters(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(sparse embedding weights, every other trainable parameter)."""
    sparse_ids: set[int] = set()
    sparse: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.sparse:
            sparse.append(module.weight)
            sparse_ids.add(id(module.weight))
    dense: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    return sparse, dense


def train(
    model: DLRM,
    batch: ClickBatch,
    epochs: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    *,
    lr: float = DEFAULT_LR,
    embedding_lr: float = DEFAULT_EMBEDDING_LR,
    num_threads: int | None = 1,
) -> None:
    """Fit ``model`` in place on ``batch`` with binary cross-entropy on the logits.

    ``SparseAdam`` updates only the embedding rows each mini-batch looks up;
    ``Adam`` (no weight decay) updates the MLPs. ``seed`` fixes the shuffling.
    The model is left in eval mode.
    ``num_threads`` sets torch's intra-op threads while training (process-wide,
    restored afterwards; ``None`` keeps the current setting): these small models
    train as fast on one thread, and two threads slow down sharply when another
    process holds a core of a 2-core machine (``docs/performance.md``).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    sparse_params, dense_params = _split_parameters(model)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense_params, lr=lr)]
    if sparse_params:
        optimizers.append(torch.optim.SparseAdam(sparse_params, lr=embedding_lr))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        _run_epochs(model, batch, optimizers, epochs, batch_size, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _run_epochs(
    model: DLRM,
    batch: ClickBatch,
    optimizers: list[torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    seed: int,
) -> None:
    dense = torch.from_numpy(batch.dense)
    ids = torch.from_numpy(batch.sparse_ids)
    labels = torch.from_numpy(batch.labels)
    loss_fn = nn.BCEWithLogitsLoss()
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(batch), generator=shuffle)
        total, steps = 0.0, 0
        for begin in range(0, len(batch), batch_size):
            rows = order[begin : begin + batch_size]
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(dense[rows], ids[rows]), labels[rows])
            loss.backward()  # type: ignore[no-untyped-call]
            for optimizer in optimizers:
                optimizer.step()
            total += float(loss.detach())
            steps += 1
        logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, total / max(steps, 1))
    model.eval()
    logger.info("trained on %d samples in %.1f s", len(batch), time.perf_counter() - start)


def predict(model: DLRM, batch: ClickBatch) -> npt.NDArray[np.float32]:
    """Click probabilities of ``batch`` under ``model`` (eval mode, no grad)."""
    model.eval()
    with torch.inference_mode():
        score = model(torch.from_numpy(batch.dense), torch.from_numpy(batch.sparse_ids))
    return np.asarray(score.numpy(), dtype=np.float32)


def build_and_train(
    config: ReferenceConfig,
    generator: ClickGenerator,
    day: int,
    num_samples: int,
    base_state: Mapping[str, torch.Tensor] | None = None,
    *,
    epochs: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> DLRM:
    """A DLRM trained on ``generator.day(day, num_samples)``.

    With ``base_state`` (a previous version's ``state_dict()``) training continues
    from those weights, which is how version N+1 is made from version N.
    """
    model = DLRM(config, seed=seed)
    if base_state is not None:
        model.load_state_dict(base_state)
    train(model, generator.day(day, num_samples), epochs=epochs, batch_size=batch_size, seed=seed + day)
    return model


def export_program(model: DLRM, path: Path, sample: ClickBatch) -> Path:
    """Save ``model`` as a ``torch.export`` program (``.pt2``) with a dynamic batch dimension.

    ``sample`` provides example inputs (at least 2 rows, so the batch size is not
    specialised to 1). Inputs are named ``dense_features`` and ``sparse_ids``; the
    archive records the output name ``score`` for ``edgerec.server.publish.export.to_onnx``.
    """
    if len(sample) < 2:
        raise ValueError("export_program needs a sample of at least 2 rows")
    was_training = model.training
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {DENSE_INPUT: {0: batch}, SPARSE_INPUT: {0: batch}}
    args = (torch.from_numpy(sample.dense), torch.from_numpy(sample.sparse_ids))
    try:
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    finally:
        model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={_OUTPUT_NAMES_EXTRA_FILE: json.dumps([SCORE_OUTPUT])})
    logger.info("saved torch.export program to %s", path)
    return path
