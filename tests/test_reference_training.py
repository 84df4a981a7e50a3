"""Training the reference DLRM: quality, sparse incremental updates, export."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from edgerec.evaluation import roc_auc  # noqa: E402
from edgerec.reference.data import ClickBatch, ClickGenerator, ReferenceConfig  # noqa: E402
from edgerec.reference.model import DLRM  # noqa: E402
from edgerec.reference.train import build_and_train, export_program, predict, train  # noqa: E402

log = logging.getLogger(__name__)

CONFIG = ReferenceConfig.tiny()


@dataclass(frozen=True)
class Versions:
    generator: ClickGenerator
    v1: DLRM
    v2: DLRM
    day2: ClickBatch
    holdout: ClickBatch


@pytest.fixture(scope="module")
def versions() -> Versions:
    """v1 trained on day 1; v2 = v1 trained on a small day 2 (the incremental update)."""
    generator = ClickGenerator(CONFIG, seed=11)
    v1 = build_and_train(CONFIG, generator, day=1, num_samples=40_000)
    v2 = build_and_train(CONFIG, generator, day=2, num_samples=2_000, base_state=v1.state_dict())
    return Versions(generator, v1, v2, generator.day(2, 2_000), generator.day(100, 20_000))


def test_forward_gives_probabilities_of_shape_n() -> None:
    model = DLRM(CONFIG).eval()
    batch = ClickGenerator(CONFIG, seed=0).day(0, 5)
    with torch.no_grad():
        score = model(torch.from_numpy(batch.dense), torch.from_numpy(batch.sparse_ids))
    assert score.shape == (5,) and score.dtype == torch.float32
    assert ((score > 0) & (score < 1)).all()


def test_construction_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = DLRM(CONFIG, seed=1), DLRM(CONFIG, seed=1), DLRM(CONFIG, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name])
    assert not torch.equal(a.embedding_tables()[0], c.embedding_tables()[0])


def test_training_is_deterministic() -> None:
    batch = ClickGenerator(CONFIG, seed=0).day(0, 3_000)
    a, b = DLRM(CONFIG), DLRM(CONFIG)
    train(a, batch, seed=5)
    train(b, batch, seed=5)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


def test_trained_model_is_close_to_the_oracle(versions: Versions) -> None:
    holdout = versions.holdout
    oracle = roc_auc(holdout.labels, holdout.true_prob)
    v1 = roc_auc(holdout.labels, predict(versions.v1, holdout))
    v2 = roc_auc(holdout.labels, predict(versions.v2, holdout))
    log.info("tiny preset AUC: oracle %.4f, v1 %.4f, v2 %.4f", oracle, v1, v2)
    assert v1 > oracle - 0.05
    assert v2 > oracle - 0.05


def test_incremental_training_changes_exactly_the_touched_rows(versions: Versions) -> None:
    changed_total = rows_total = 0
    for table, (old, new) in enumerate(
        zip(versions.v1.embedding_tables(), versions.v2.embedding_tables(), strict=True)
    ):
        old_bits = old.detach().numpy().view(np.int32)
        new_bits = new.detach().numpy().view(np.int32)
        changed = (old_bits != new_bits).any(axis=1)
        touched = np.zeros(CONFIG.rows_per_table, dtype=bool)
        touched[np.unique(versions.day2.sparse_ids[:, table])] = True
        # Untouched rows keep their exact bytes; every row the day looked up moved.
        assert not changed[~touched].any()
        assert changed[touched].all()
        changed_total += int(changed.sum())
        rows_total += changed.size
    fraction = changed_total / rows_total
    log.info("v1 -> v2: %.1f%% of embedding rows changed", 100 * fraction)
    assert 0.0 < fraction < 0.5
    # The MLPs are dense: Adam moves every weight.
    assert not torch.equal(versions.v1.top[0].weight, versions.v2.top[0].weight)


def test_export_program_has_a_dynamic_batch(versions: Versions, tmp_path: Path) -> None:
    sample = versions.generator.day(50, 4)
    path = export_program(versions.v1, tmp_path / "nested" / "v1.pt2", sample)
    assert path.is_file()
    module = torch.export.load(path).module()
    for n in (1, 3, 257):
        batch = versions.generator.day(60 + n, n)
        dense, ids = torch.from_numpy(batch.dense), torch.from_numpy(batch.sparse_ids)
        with torch.no_grad():
            got = module(dense, ids)
        assert got.shape == (n,)
        np.testing.assert_allclose(got.numpy(), predict(versions.v1, batch), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_program(versions.v1, tmp_path / "one.pt2", versions.generator.day(50, 1))
