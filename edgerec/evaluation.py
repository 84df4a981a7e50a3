"""Offline model evaluation: ranking and calibration scores for binary click labels (numpy only).

Not to be confused with the server's Prometheus metrics (``edgerec.server.metrics_http``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["log_loss", "roc_auc"]


def _binary_labels(labels: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(bool)


def _scores_like(values: npt.ArrayLike, n: int, what: str) -> npt.NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} must be finite")
    return x


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); tied scores count one half.

    Raises ``ValueError`` unless both classes are present.
    """
    y = _binary_labels(labels)
    s = _scores_like(scores, y.shape[0], "scores")
    n_pos = int(y.sum())
    n_neg = int(y.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    # Tie groups: every member gets the mean of the 1-based ranks the group spans.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.shape[0]]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    pos_rank_sum = float(ranks[y[order]].sum())
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: npt.ArrayLike, probs: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; ``probs`` are clipped to ``[eps, 1 - eps]``."""
    y = _binary_labels(labels)
    if y.shape[0] == 0:
        raise ValueError("log_loss needs at least one label")
    p = np.clip(_scores_like(probs, y.shape[0], "probs"), eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
