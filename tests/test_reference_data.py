"""The synthetic click generator and the offline metrics (numpy only, fast)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.evaluation import log_loss, roc_auc
from edgerec.reference.data import (
    DENSE_INPUT,
    SPARSE_INPUT,
    ClickBatch,
    ClickGenerator,
    ReferenceConfig,
)

# --- configs ---------------------------------------------------------------------------


def test_presets_have_the_documented_sizes() -> None:
    small, large = ReferenceConfig.small(), ReferenceConfig.large()
    assert 1e6 < small.embedding_bytes < 10e6
    assert large.embedding_bytes >= 100e6
    assert ReferenceConfig.tiny().embedding_bytes < small.embedding_bytes
    for name in ("tiny", "small", "large"):
        assert ReferenceConfig.from_name(name) == getattr(ReferenceConfig, name)()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown reference config"):
        ReferenceConfig.from_name("huge")
    with pytest.raises(ValueError, match="bottom_mlp must end with embedding_dim"):
        ReferenceConfig(2, 10, 8, 3, bottom_mlp=(16, 4), top_mlp=(8,))
    with pytest.raises(ValueError, match="rows_per_table"):
        ReferenceConfig(2, 0, 8, 3, bottom_mlp=(8,), top_mlp=(8,))


# --- the generator ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_generator() -> ClickGenerator:
    return ClickGenerator(ReferenceConfig.small(), seed=7)


def test_batch_shapes_dtypes_and_input_names(small_generator: ClickGenerator) -> None:
    config = small_generator.config
    batch = small_generator.day(0, 1000)
    assert len(batch) == 1000
    assert batch.dense.dtype == np.float32 and batch.dense.shape == (1000, config.num_dense)
    assert batch.sparse_ids.dtype == np.int64 and batch.sparse_ids.shape == (1000, config.num_tables)
    assert batch.labels.dtype == np.float32 and set(np.unique(batch.labels)) <= {0.0, 1.0}
    assert batch.true_prob.dtype == np.float32 and ((batch.true_prob > 0) & (batch.true_prob < 1)).all()
    assert 0 <= batch.sparse_ids.min() and batch.sparse_ids.max() < config.rows_per_table
    inputs = batch.inputs()
    assert list(inputs) == [DENSE_INPUT, SPARSE_INPUT] == ["dense_features", "sparse_ids"]
    assert inputs[DENSE_INPUT] is batch.dense and inputs[SPARSE_INPUT] is batch.sparse_ids


def test_click_batch_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="disagree"):
        ClickBatch(
            dense=np.zeros((3, 2), np.float32),
            sparse_ids=np.zeros((2, 2), np.int64),
            labels=np.zeros(3, np.float32),
            true_prob=np.zeros(3, np.float32),
        )


def test_days_are_deterministic_and_distinct(small_generator: ClickGenerator) -> None:
    again = ClickGenerator(small_generator.config, seed=7)
    a, b = small_generator.day(3, 500), again.day(3, 500)
    for field in ("dense", "sparse_ids", "labels", "true_prob"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other_day = small_generator.day(4, 500)
    assert not np.array_equal(a.sparse_ids, other_day.sparse_ids)
    assert not np.array_equal(a.dense, other_day.dense)


def test_ground_truth_is_fixed_by_seed_and_shared_by_days(small_generator: ClickGenerator) -> None:
    same = ClickGenerator(small_generator.config, seed=7)
    other = ClickGenerator(small_generator.config, seed=8)
    np.testing.assert_array_equal(same.bias, small_generator.bias)
    np.testing.assert_array_equal(same.latent, small_generator.latent)
    assert not np.array_equal(other.bias, small_generator.bias)
    # Without drift, the same impression has the same true probability on any day.
    batch = small_generator.day(0, 200)
    np.testing.assert_array_equal(
        small_generator.logit(batch.dense, batch.sparse_ids, day_index=0),
        small_generator.logit(batch.dense, batch.sparse_ids, day_index=30),
    )


def test_drift_moves_the_truth_slowly() -> None:
    config = ReferenceConfig.tiny()
    drifting = ClickGenerator(config, seed=1, drift=0.05)
    batch = drifting.day(0, 2000)
    day0 = drifting.logit(batch.dense, batch.sparse_ids, 0)
    day1 = drifting.logit(batch.dense, batch.sparse_ids, 1)
    np.testing.assert_array_equal(day0, ClickGenerator(config, seed=1).logit(batch.dense, batch.sparse_ids))
    assert 0 < np.abs(day1 - day0).mean() < 0.1


def test_ids_follow_a_zipf_popularity(small_generator: ClickGenerator) -> None:
    config = small_generator.config
    ids = small_generator.day(1, 200_000).sparse_ids[:, 0]
    counts = np.bincount(ids, minlength=config.rows_per_table)
    popularity = small_generator.popularity(0)
    assert popularity.sum() == pytest.approx(1.0)
    head = np.argsort(popularity)[::-1][: config.rows_per_table // 100]
    # Heavy head: the top 1% of ids get most draws; long tail: thousands of distinct ids.
    assert counts[head].sum() / counts.sum() == pytest.approx(popularity[head].sum(), abs=0.01)
    assert popularity[head].sum() > 0.5
    assert (counts > 0).sum() > config.rows_per_table // 10
    # The popular ids are scattered over the table, not the first rows.
    assert head.max() > config.rows_per_table // 2


def test_labels_are_bernoulli_of_true_prob(small_generator: ClickGenerator) -> None:
    batch = small_generator.day(2, 100_000)
    assert batch.labels.mean() == pytest.approx(batch.true_prob.mean(), abs=0.005)
    assert 0.1 < batch.labels.mean() < 0.4


@pytest.mark.parametrize("name", ["small", "large"])
def test_oracle_auc_is_in_the_target_band(name: str) -> None:
    batch = ClickGenerator(ReferenceConfig.from_name(name), seed=0).day(0, 100_000)
    assert 0.74 <= roc_auc(batch.labels, batch.true_prob) <= 0.81


# --- metrics ---------------------------------------------------------------------------


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(-3, 3)),  # few distinct scores: many ties
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({label for label, _ in rows}) == 2)
)
def test_roc_auc_matches_pairwise_definition(rows: list[tuple[int, int]]) -> None:
    labels = np.array([label for label, _ in rows])
    scores = np.array([score for _, score in rows], dtype=np.float64) / 2
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


def test_roc_auc_edge_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5
    assert roc_auc([False, True], [0.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(np.ones(3), np.arange(3.0))
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc(np.array([0, 2]), np.arange(2.0))
    with pytest.raises(ValueError, match="shape"):
        roc_auc(labels, np.arange(3.0))
    with pytest.raises(ValueError, match="finite"):
        roc_auc(labels, np.array([0.1, np.nan, 0.2, 0.3]))


def test_log_loss_values() -> None:
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert log_loss([1, 0], [0.9, 0.2]) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-np.log(1e-7))  # clipped, not infinite
    with pytest.raises(ValueError):
        log_loss([], [])
