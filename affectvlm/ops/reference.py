"""Pure-PyTorch ground truth for the compiled kernels: plain, materialising, and easy to check by eye.

Tests compare every kernel with these functions, and benchmarks time them as the baseline. Each function
holds whole matrices in memory on purpose; that is what the kernels avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALISE_EPS = 1e-12  # z / max(|z|, eps), as torch.nn.functional.normalize


def contrastive_loss_reference(
    images: torch.Tensor,
    image_labels: torch.Tensor,
    texts: torch.Tensor | None = None,
    text_labels: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | float,
    margin: torch.Tensor | float,
) -> torch.Tensor:
    """The three terms (multiview contrastive, multiview triplet, image-text) as a tensor of shape (3,).

    `images` (N, D) and `texts` (M, D) are raw embeddings, normalised here; `scale` multiplies the cosine
    similarities in the image-text softmax; `margin` is the hinge margin alpha (already >= 0). The formulas,
    tie-breaks and conventions for empty sets are the ones in the README section "Contrastive loss".
    """
    z = F.normalize(images, dim=1, eps=NORMALISE_EPS)
    similarity = z @ z.T
    same_label = image_labels[:, None] == image_labels[None, :]
    positive = same_label & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    negative = ~same_label

    terms = [
        _multiview_contrastive(similarity, positive, negative, margin),
        _multiview_triplet(z, similarity, positive, negative, margin),
    ]
    if texts is None or len(texts) == 0:
        terms.append(similarity.new_zeros(()))
    else:
        t = F.normalize(texts, dim=1, eps=NORMALISE_EPS)
        logits = scale * (z @ t.T)
        matches = image_labels[:, None] == text_labels[None, :]
        row_loss = _label_aware_infonce(logits, matches)
        column_loss = _label_aware_infonce(logits.T, matches.T)
        terms.append(0.5 * (row_loss + column_loss))
    return torch.stack(terms)


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.new_zeros(()).sum()


def _multiview_contrastive(similarity, positive, negative, margin):
    pull = _mean_or_zero(1 - similarity[positive])
    push = _mean_or_zero(torch.relu(similarity[negative] - margin))
    return pull + push


def _multiview_triplet(z, similarity, positive, negative, margin):
    squared_norm = (z * z).sum(dim=1)
    distance = squared_norm[:, None] + squared_norm[None, :] - 2 * similarity
    # Hardest positive: largest distance; hardest negative: smallest. argmax/argmin return the first
    # (lowest) index among ties, the tie-break the kernels follow.
    hardest_positive = distance.masked_fill(~positive, float("-inf")).argmax(dim=1)
    hardest_negative = distance.masked_fill(~negative, float("inf")).argmin(dim=1)
    anchors = positive.any(dim=1) & negative.any(dim=1)
    rows = torch.arange(len(z), device=z.device)
    hinge = torch.relu(
        distance[rows, hardest_positive] - distance[rows, hardest_negative] + margin
    )
    return _mean_or_zero(hinge[anchors])


def _label_aware_infonce(logits, matches):
    """Mean over rows with at least one match of -mean_{matching p} log softmax(row)[p]."""
    log_probability = torch.log_softmax(logits, dim=1)
    match_count = matches.sum(dim=1)
    has_match = match_count > 0
    row_loss = -(log_probability * matches).sum(dim=1)[has_match] / match_count[has_match]
    return _mean_or_zero(row_loss)
