"""Synthetic click data with a known generating process (numpy only).

The hidden ground truth is fixed by a seed: per-table per-id biases and latent
vectors, dense-feature weights and one pairwise interaction between two tables.
Every day draws a fresh sample (Zipf-distributed ids, Gaussian dense features,
Bernoulli labels) from the same truth, so the oracle AUC computed from
``true_prob`` is a ceiling a trained model can be measured against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

DENSE_INPUT: Final = "dense_features"
"""Name of the reference model's float32 ``[N, num_dense]`` input."""
SPARSE_INPUT: Final = "sparse_ids"
"""Name of the reference model's int64 ``[N, num_tables]`` input."""
SCORE_OUTPUT: Final = "score"
"""Name of the reference model's float32 ``[N]`` click-probability output."""

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ReferenceConfig:
    """Shape of the reference DLRM: embedding tables, dense features and MLP widths.

    ``bottom_mlp`` must end with ``embedding_dim`` (the dense vector joins the
    embeddings in the dot-product interaction); ``top_mlp`` lists the hidden
    widths before the final 1-unit logit layer.
    """

    num_tables: int
    rows_per_table: int
    embedding_dim: int
    num_dense: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        for field in ("num_tables", "rows_per_table", "embedding_dim", "num_dense"):
            if getattr(self, field) < 1:
                raise ValueError(f"ReferenceConfig.{field} must be >= 1, got {getattr(self, field)}")
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(f"bottom_mlp must end with embedding_dim={self.embedding_dim}, got {self.bottom_mlp}")
        if any(width < 1 for width in (*self.bottom_mlp, *self.top_mlp)):
            raise ValueError("MLP widths must be >= 1")

    @property
    def embedding_bytes(self) -> int:
        """Size of all embedding tables in fp32 bytes."""
        return self.num_tables * self.rows_per_table * self.embedding_dim * 4

    @classmethod
    def tiny(cls) -> ReferenceConfig:
        """Test size: 3 tables x 2_000 rows x 8 dim, 4 dense (about 190 KB)."""
        return cls(3, 2_000, 8, 4, bottom_mlp=(16, 8), top_mlp=(16,))

    @classmethod
    def small(cls) -> ReferenceConfig:
        """Demo size: 4 tables x 20_000 rows x 16 dim, 8 dense (about 5 MB)."""
        return cls(4, 20_000, 16, 8, bottom_mlp=(32, 16), top_mlp=(64, 32))

    @classmethod
    def large(cls) -> ReferenceConfig:
        """Benchmark size: 8 tables x 100_000 rows x 32 dim, 13 dense (102 MB of fp32 embeddings)."""
        return cls(8, 100_000, 32, 13, bottom_mlp=(64, 32), top_mlp=(128, 64))

    @classmethod
    def from_name(cls, name: str) -> ReferenceConfig:
        """The preset called ``name``: ``tiny``, ``small`` or ``large``."""
        presets = {"tiny": cls.tiny, "small": cls.small, "large": cls.large}
        try:
            return presets[name]()
        except KeyError:
            raise ValueError(f"unknown reference config {name!r}; expected one of {sorted(presets)}") from None


@dataclass(frozen=True)
class ClickBatch:
    """One sample of impressions: model inputs, labels and the true click probability."""

    dense: FloatArray
    sparse_ids: IntArray
    labels: FloatArray
    true_prob: FloatArray

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.dense.ndim != 2 or self.sparse_ids.ndim != 2 or self.labels.ndim != 1:
            raise ValueError("expected dense [N, D], sparse_ids [N, T], labels [N]")
        if self.dense.shape[0] != n or self.sparse_ids.shape[0] != n or self.true_prob.shape != (n,):
            raise ValueError("dense, sparse_ids, labels and true_prob disagree on N")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """The model inputs by their ONNX names."""
        return {DENSE_INPUT: self.dense, SPARSE_INPUT: self.sparse_ids}


# Ground-truth scales, tuned so the oracle AUC is 0.78-0.80 on every preset and a
# DLRM trained for one epoch (train.py defaults) gets within 2-3 points of it: on
# the small preset, seed 0, 200k samples give 0.769 against an oracle of 0.796.
# Logit = intercept + sum of per-table id biases (total std _BIAS_STD_TOTAL
# whatever the number of tables) + dense . w (|w| = _DENSE_STD) + <latent of
# table 0 id, latent of table 1 id>.
_INTERCEPT = -1.4
_BIAS_STD_TOTAL = 0.6
_DENSE_STD = 1.0
_LATENT_DIM = 4
_LATENT_STD = 0.5


class ClickGenerator:
    """Click sampler over a hidden ground truth fixed by ``seed``.

    ``zipf_exponent`` shapes id popularity (rank r is drawn with probability
    proportional to ``1 / (r + 1) ** zipf_exponent``; which id has which rank is
    a random permutation per table). ``drift`` adds ``drift * day_index * delta``
    to every id bias, ``delta`` a fixed per-id draw of the bias's spread (0, the
    default, keeps the truth identical on every day).

    The truth is public for analysis: ``bias`` [tables, rows], ``latent``
    [tables, rows, 4], ``dense_weights`` [num_dense] and ``interaction_tables``
    (the two tables whose latent vectors interact, ``None`` with one table).
    """

    def __init__(
        self,
        config: ReferenceConfig,
        seed: int = 0,
        *,
        zipf_exponent: float = 1.2,
        drift: float = 0.0,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
        self.config = config
        self.seed = seed
        self.zipf_exponent = zipf_exponent
        self.drift = drift
        self.interaction_tables: tuple[int, int] | None = (0, 1) if config.num_tables >= 2 else None

        truth = np.random.default_rng([seed, 0])
        t, rows = config.num_tables, config.rows_per_table
        bias_std = _BIAS_STD_TOTAL / np.sqrt(t)
        self.bias = truth.normal(0.0, bias_std, size=(t, rows)).astype(np.float32)
        self.latent = truth.normal(0.0, _LATENT_STD, size=(t, rows, _LATENT_DIM)).astype(np.float32)
        direction = truth.normal(size=config.num_dense)
        # A fixed norm: the dense part of the logit has variance _DENSE_STD**2 whatever the seed.
        self.dense_weights = (_DENSE_STD * direction / np.linalg.norm(direction)).astype(np.float32)
        self._bias_drift = truth.normal(0.0, bias_std, size=(t, rows)).astype(np.float32)
        self._rank_to_id = np.stack([truth.permutation(rows) for _ in range(t)]).astype(np.int64)
        weights = 1.0 / np.arange(1, rows + 1, dtype=np.float64) ** zipf_exponent
        self._rank_cdf = np.cumsum(weights / weights.sum())
        self._rank_cdf[-1] = 1.0

    def popularity(self, table: int) -> npt.NDArray[np.float64]:
        """Probability of drawing each id of ``table`` (indexed by id, sums to 1)."""
        prob = np.diff(self._rank_cdf, prepend=0.0)
        out = np.empty_like(prob)
        out[self._rank_to_id[table]] = prob
        return out

    def logit(self, dense: FloatArray, sparse_ids: IntArray, day_index: int = 0) -> FloatArray:
        """Ground-truth click logit of each row under day ``day_index``'s truth."""
        bias = self.bias + np.float32(self.drift * day_index) * self._bias_drift if self.drift else self.bias
        tables = np.arange(self.config.num_tables)
        logit: npt.NDArray[np.float64] = _INTERCEPT + bias[tables, sparse_ids].sum(axis=1, dtype=np.float64)
        logit += dense.astype(np.float64) @ self.dense_weights.astype(np.float64)
        if self.interaction_tables is not None:
            a, b = self.interaction_tables
            latent_a = self.latent[a, sparse_ids[:, a]].astype(np.float64)
            latent_b = self.latent[b, sparse_ids[:, b]].astype(np.float64)
            logit += np.einsum("nk,nk->n", latent_a, latent_b)
        return logit.astype(np.float32)

    def day(self, day_index: int, num_samples: int) -> ClickBatch:
        """Draw ``num_samples`` impressions of day ``day_index`` (deterministic per seed and day)."""
        if day_index < 0 or num_samples < 0:
            raise ValueError(f"day_index and num_samples must be >= 0, got {day_index}, {num_samples}")
        rng = np.random.default_rng([self.seed, 1, day_index])
        cfg = self.config
        ranks = np.searchsorted(self._rank_cdf, rng.random((num_samples, cfg.num_tables)), side="right")
        sparse_ids = self._rank_to_id[np.arange(cfg.num_tables), ranks]
        dense = rng.standard_normal((num_samples, cfg.num_dense), dtype=np.float32)
        logit = self.logit(dense, sparse_ids, day_index)
        true_prob = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
        labels = (rng.random(num_samples) < true_prob).astype(np.float32)
        logger.debug("day %d: %d samples, CTR %.3f", day_index, num_samples, labels.mean() if num_samples else 0)
        return ClickBatch(dense=dense, sparse_ids=sparse_ids, labels=labels, true_prob=true_prob)
