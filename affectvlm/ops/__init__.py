"""Differentiable operators backed by the compiled kernels, with their pure-PyTorch references."""

from affectvlm.ops.contrastive import AffectLoss, ContrastiveTerms, contrastive_loss

__all__ = ["AffectLoss", "ContrastiveTerms", "contrastive_loss"]
