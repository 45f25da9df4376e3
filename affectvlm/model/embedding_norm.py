"""Standardising embeddings over the batch, as the towers leave them and before any cosine similarity.

A tower trained from scratch maps every rendered face to nearly one direction (a cosine of about 0.995
between renders of different faces and expressions), and every term of the loss is lower when all
embeddings collapse onto one point than at that start: the multiview terms reach 1 - margin and margin,
the image-text term log(batch). Training then slides into the collapse, where no gradient is left.
Subtracting the batch mean and dividing by the batch standard deviation, per dimension, removes what all
embeddings share, so their similarities start spread and a collapse is no longer a minimum (the idea
behind the batch-normalised projection heads of self-supervised learning).

In training the statistics are those of the global batch (the rows of every rank, gathered with their
gradients), so every rank standardises alike and keeps identical running statistics; evaluation and
prediction use the running statistics, which start at mean 0 and variance 1 and so leave pretrained
embeddings (zero-shot use) as they are until training moves them.
"""

from __future__ import annotations

import torch
from torch import nn

from affectvlm.distributed import gather_with_grad


class EmbeddingNorm(nn.Module):
    """(..., D) embeddings -> the same shape, standardised per dimension (no learned scale or shift)."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        values = embeddings.float()
        if self.training:
            rows = gather_with_grad(values.reshape(-1, values.shape[-1]))
            if rows.shape[0] < 2:
                raise ValueError("standardising embeddings in training needs at least 2 per batch, got 1")
            mean, var = rows.mean(dim=0), rows.var(dim=0, unbiased=False)
            with torch.no_grad():
                unbiased = var * rows.shape[0] / (rows.shape[0] - 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((values - mean) * torch.rsqrt(var + self.eps)).to(embeddings.dtype)
