"""The fused contrastive loss: multiview contrastive + multiview triplet + label-aware image-text InfoNCE.

`contrastive_loss` checks and normalises the embeddings with torch (so autograd differentiates the
normalisation) and hands the normalised embeddings to the compiled kernels through `_ContrastiveFunction`.
The kernels never build the N×N or N×M similarity matrix. `AffectLoss` owns the learnable logit scale and
margin. The formulas are in the README, section "Contrastive loss"; `reference.contrastive_loss_reference`
is the plain PyTorch version they are tested against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from affectvlm._ext import extension
from affectvlm.ops.checks import require_tensor, value_range
from affectvlm.ops.reference import NORMALISE_EPS

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on the learnable scale
# The CUDA forward sums exp(logit - |s|) per text in float64; below this bound every such sum stays above float64's
# smallest normal number (csrc/contrastive/contrastive_cuda.cu, logit_bound).
MAX_CUDA_LOGIT_SCALE = 350.0


class ContrastiveTerms(NamedTuple):
    contrastive: torch.Tensor  # L_mc
    triplet: torch.Tensor  # L_mt
    image_text: torch.Tensor  # L_it


class AffectLossOutput(NamedTuple):
    total: torch.Tensor
    contrastive: torch.Tensor
    triplet: torch.Tensor
    image_text: torch.Tensor


def contrastive_loss(
    images: torch.Tensor,
    image_labels: torch.Tensor,
    texts: torch.Tensor | None = None,
    text_labels: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | float,
    margin: torch.Tensor | float,
    num_classes: int | None = None,
    multiview_terms: bool = True,
) -> ContrastiveTerms:
    """The three loss terms for raw `images` (N, D) and optional `texts` (M, D) embeddings.

    Labels are int64 in [0, num_classes) (inferred from the labels when not given). `scale` and `margin`
    may be tensors that require gradients. Float32 and float64 run on the CPU; float32, float16 and
    bfloat16 on the GPU, where |scale| may be at most 350. `multiview_terms=False` computes the image-text
    term alone (CLIP-style training) and reports L_mc and L_mt as 0.
    """
    images, image_labels, texts, text_labels = _checked(images, image_labels, texts, text_labels)
    if num_classes is None:
        num_classes = int(torch.cat([image_labels, text_labels]).max()) + 1
    _check_label_range(image_labels, "image_labels", num_classes)
    _check_label_range(text_labels, "text_labels", num_classes)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=images.device)
    if images.is_cuda and scale.abs() > MAX_CUDA_LOGIT_SCALE:
        raise ValueError(f"scale must lie in [-{MAX_CUDA_LOGIT_SCALE:g}, {MAX_CUDA_LOGIT_SCALE:g}] on the GPU, "
                         f"got {scale.item():g}")
    margin = torch.as_tensor(margin, dtype=torch.float64, device=images.device)
    z = F.normalize(images, dim=1, eps=NORMALISE_EPS).contiguous()
    t = F.normalize(texts, dim=1, eps=NORMALISE_EPS).contiguous()
    terms = _ContrastiveFunction.apply(z, image_labels, t, text_labels, scale, margin, num_classes,
                                       multiview_terms)
    return ContrastiveTerms(*terms.unbind())


class AffectLoss(nn.Module):
    """w_mc·L_mc + w_mt·L_mt + w_it·L_it with a learnable logit scale and a learnable margin.

    The scale is exp(log_scale), clamped at 100 as in CLIP; the margin is softplus(margin_parameter) >= 0.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        initial_scale: float = 1 / 0.07,
        initial_margin: float = 0.2,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial_scale)))
        # softplus^-1(m) = log(exp(m) - 1)
        self.margin_parameter = nn.Parameter(torch.tensor(math.log(math.expm1(initial_margin))))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @property
    def margin(self) -> torch.Tensor:
        return F.softplus(self.margin_parameter)

    def forward(self, images, image_labels, texts=None, text_labels=None) -> AffectLossOutput:
        terms = contrastive_loss(images, image_labels, texts, text_labels, scale=self.scale, margin=self.margin,
                                 num_classes=self.num_classes)
        total = sum(w * term for w, term in zip(self.weights.to(terms[0].dtype), terms))
        return AffectLossOutput(total, *terms)


class _ContrastiveFunction(torch.autograd.Function):
    """Normalised embeddings in, the terms (L_mc, L_mt, L_it) out; gradients to z, t, scale and margin."""

    @staticmethod
    def forward(ctx, z, image_labels, t, text_labels, scale, margin, num_classes, multiview_terms):
        z, t = z.detach(), t.detach()  # DLPack refuses tensors that require gradients
        layout = extension().contrastive_layout()
        n, m = len(z), len(t)
        f64 = dict(dtype=torch.float64, device=z.device)
        i64 = dict(dtype=torch.int64, device=z.device)
        scale_and_margin = torch.stack([scale.detach(), margin.detach()]).to(**f64)
        saved = (
            torch.empty(layout["image_stats"], n, **f64),
            torch.empty(layout["text_stats"], m, **f64),
            torch.empty(n, **i64),  # hardest positive
            torch.empty(n, **i64),  # hardest negative
            torch.empty(2, num_classes, **i64),  # class counts
            torch.empty(layout["totals"], **f64),
        )
        extension().contrastive_forward(z, image_labels, t, text_labels, scale_and_margin, num_classes, *saved,
                                        multiview_terms=multiview_terms, stream=_stream(z))
        ctx.num_classes, ctx.multiview_terms = num_classes, multiview_terms
        ctx.scale_dtype, ctx.margin_dtype = scale.dtype, margin.dtype
        ctx.save_for_backward(z, image_labels, t, text_labels, scale_and_margin, *saved)
        return saved[-1][: layout["loss_terms"]].to(_result_dtype(z), copy=True)  # not a view of saved data

    @staticmethod
    def backward(ctx, term_gradients):
        z, image_labels, t, text_labels, scale_and_margin, *saved = ctx.saved_tensors
        grad_dtype = _result_dtype(z)  # the kernels accumulate float16/bfloat16 gradients in float32
        image_grad = torch.empty_like(z, dtype=grad_dtype)
        text_grad = torch.empty_like(t, dtype=grad_dtype)
        scalar_grads = torch.empty(2, dtype=torch.float64, device=z.device)
        extension().contrastive_backward(
            z, image_labels, t, text_labels, scale_and_margin, ctx.num_classes, *saved,
            term_gradients.to(torch.float64).contiguous(), image_grad, text_grad, scalar_grads,
            multiview_terms=ctx.multiview_terms, stream=_stream(z),
        )
        return (image_grad.to(z.dtype), None, text_grad.to(t.dtype), None, scalar_grads[0].to(ctx.scale_dtype),
                scalar_grads[1].to(ctx.margin_dtype), None, None)


def _result_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _stream(tensor: torch.Tensor) -> int:
    return torch.cuda.current_stream(tensor.device).cuda_stream if tensor.is_cuda else 0


def _checked(images, image_labels, texts, text_labels):
    """Shapes, dtypes and finiteness, each failure a ValueError or TypeError naming the argument."""
    require_tensor(images, "images")
    if images.ndim != 2 or len(images) == 0:
        raise ValueError(f"images must have shape (N, D) with N >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    _require_labels(image_labels, "image_labels", len(images), images.device)
    if (texts is None) != (text_labels is None):
        raise ValueError("texts and text_labels must be given together")
    if texts is None:
        texts = images.new_empty(0, images.shape[1])
        text_labels = image_labels.new_empty(0)
    require_tensor(texts, "texts")
    if texts.ndim != 2 or texts.shape[1] != images.shape[1]:
        raise ValueError(f"texts must have shape (M, {images.shape[1]}) like images, got {tuple(texts.shape)}")
    if texts.dtype != images.dtype or texts.device != images.device:
        raise TypeError(f"texts must have the dtype and device of images ({images.dtype}, {images.device}), "
                        f"got {texts.dtype}, {texts.device}")
    _require_labels(text_labels, "text_labels", len(texts), images.device)
    for tensor, name in ((images, "images"), (texts, "texts")):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be finite, got NaN or inf")
    return images, image_labels, texts, text_labels


def _require_labels(labels, name, length, device):
    require_tensor(labels, name)
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64, got {labels.dtype}")
    if labels.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} must be on {device}, got {labels.device}")


def _check_label_range(labels, name, num_classes):
    if not len(labels):
        return
    low, high = value_range(labels)
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values from {low} to {high}")
