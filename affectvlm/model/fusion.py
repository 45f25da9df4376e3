"""Pooling of several embeddings into one: the views of a sample, or the frames of a 4D sequence.

Both modes pool L2-normalised embeddings, so each view (or frame) counts by its direction, not its norm, and
entries marked invalid in the mask have no influence on the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSION_MODES = ("mean", "attention")


class MaskedPooling(nn.Module):
    """(N, K, D) embeddings and an optional (N, K) bool mask of valid entries -> (N, D).

    "mean": the mean of the valid normalised embeddings. "attention": a learned score per entry,
    softmax over the valid entries, and the weighted sum; the scorer starts at zero, so an untrained
    attention pooling equals the mean.
    """

    def __init__(self, mode: str, dim: int):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion '{mode}' (choose from {', '.join(FUSION_MODES)})")
        self.mode = mode
        self.scorer = nn.Linear(dim, 1) if mode == "attention" else None
        if self.scorer is not None:
            nn.init.zeros_(self.scorer.weight)
            nn.init.zeros_(self.scorer.bias)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.ndim != 3:
            raise ValueError(f"expected embeddings (N, K, D), got shape {tuple(embeddings.shape)}")
        mask = _checked_mask(mask, embeddings)
        embeddings = F.normalize(embeddings, dim=-1)
        if self.scorer is None:
            weights = mask.to(embeddings.dtype) / mask.sum(dim=1, keepdim=True)
        else:
            scores = self.scorer(embeddings).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=1)
        # where() rather than multiplying by a zero weight: a masked entry holding inf or nan stays out too
        return torch.where(mask.unsqueeze(-1), weights.unsqueeze(-1) * embeddings, 0).sum(dim=1)


def _checked_mask(mask: torch.Tensor | None, embeddings: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
    if mask.shape != embeddings.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match embeddings {tuple(embeddings.shape[:2])}")
    mask = mask.to(device=embeddings.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every row needs at least one valid entry in the mask")
    return mask
