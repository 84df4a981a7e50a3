"""The reference DLRM: sparse embeddings, bottom MLP, dot-product interaction, top MLP."""

from __future__ import annotations

import torch
from torch import nn

from edgerec.reference.data import ReferenceConfig

__all__ = ["DLRM"]

_EMBEDDING_INIT_STD = 0.05


def _mlp(in_features: int, widths: tuple[int, ...], *, final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(in_features, width))
        if final_relu or i < len(widths) - 1:
            layers.append(nn.ReLU())
        in_features = width
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM-style click model; ``forward`` returns the click probability ``score`` of shape [N].

    One ``nn.Embedding(rows, dim, sparse=True)`` per table, so training produces
    sparse gradients that touch only the looked-up rows. The bottom MLP maps the
    dense features to ``embedding_dim``; that vector and the embeddings, followed
    by their pairwise dot products, feed the top MLP. Weights are initialised
    from ``seed`` without touching torch's global RNG.
    """

    def __init__(self, config: ReferenceConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        num_vectors = config.num_tables + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tables = [
                nn.Embedding(config.rows_per_table, config.embedding_dim, sparse=True) for _ in range(config.num_tables)
            ]
            for table in tables:
                nn.init.normal_(table.weight, std=_EMBEDDING_INIT_STD)
            self.embeddings = nn.ModuleList(tables)
            self.bottom = _mlp(config.num_dense, config.bottom_mlp, final_relu=True)
            num_pairs = num_vectors * (num_vectors - 1) // 2
            self.top = _mlp(num_vectors * config.embedding_dim + num_pairs, (*config.top_mlp, 1), final_relu=False)
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("pair_index", rows * num_vectors + cols, persistent=False)

    def logits(self, dense_features: torch.Tensor, sparse_ids: torch.Tensor) -> torch.Tensor:
        """Click logits of shape [N] (what training optimises)."""
        dense = self.bottom(dense_features)
        vectors = [dense]
        for index, table in enumerate(self.embeddings):
            vectors.append(table(sparse_ids[:, index]))
        stacked = torch.stack(vectors, dim=1)
        dots = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)
        pair_index = self.get_buffer("pair_index")
        interactions = torch.index_select(dots, 1, pair_index)
        logit: torch.Tensor = self.top(torch.cat([stacked.flatten(1), interactions], dim=1))
        return logit.squeeze(-1)

    def forward(self, dense_features: torch.Tensor, sparse_ids: torch.Tensor) -> torch.Tensor:
        """Click probabilities ``score`` of shape [N]."""
        return torch.sigmoid(self.logits(dense_features, sparse_ids))

    def embedding_tables(self) -> list[torch.Tensor]:
        """The embedding weights, one [rows, dim] tensor per table (no copy)."""
        return [table.weight for table in self.embeddings if isinstance(table, nn.Embedding)]
