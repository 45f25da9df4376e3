"""The fused contrastive loss: multiview contrastive + multiview triplet + label-aware image-text InfoNCE.

`contrastive_loss` checks and normalises the embeddings with torch (so autograd differentiates the
normalisation) and hands the normalised embeddings to the compiled kernels through the custom op
`torch.ops.affectvlm.contrastive_loss`, whose gradient is the op `affectvlm::contrastive_loss_backward`; both
are registered with torch.library, so `torch.compile` keeps them in its graph (give `num_classes`, or the
graph breaks where it is inferred from the labels).
The kernels never build the N×N or N×M similarity matrix. `AffectLoss` owns the learnable logit scale and
margin. The formulas are in the README, section "Contrastive loss"; `reference.contrastive_loss_reference`
is the plain PyTorch version they are tested against.
"""

from __future__ import annotations

import contextlib
import functools
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
    if num_classes is None:  # reads the labels: torch.compile breaks its graph here unless num_classes is given
        num_classes = int(torch.cat([image_labels, text_labels]).max()) + 1
    scale_and_margin = torch.stack([torch.as_tensor(value, dtype=torch.float64, device=images.device)
                                    for value in (scale, margin)])
    z = F.normalize(images, dim=1, eps=NORMALISE_EPS).contiguous()
    t = F.normalize(texts, dim=1, eps=NORMALISE_EPS).contiguous()
    terms, *_ = _contrastive_op(z, image_labels, t, text_labels, scale_and_margin, num_classes, multiview_terms)
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


# The kernels as torch.library custom ops: torch.compile keeps them in its graph (through their fake
# implementations, which only compute output shapes) and differentiates through the backward op.

@torch.library.custom_op("affectvlm::contrastive_loss", mutates_args=())
def _contrastive_op(z: torch.Tensor, image_labels: torch.Tensor, t: torch.Tensor, text_labels: torch.Tensor,
                    scale_and_margin: torch.Tensor, num_classes: int,
                    multiview_terms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised embeddings in; the terms (L_mc, L_mt, L_it) out, followed by the statistics the backward
    reads (image_stats, text_stats, hardest_positive, hardest_negative, class_counts, totals)."""
    _check_values(z, image_labels, t, text_labels, scale_and_margin, num_classes)
    saved = _empty_saved(z, len(t), num_classes)
    arrays = [x.detach() for x in (z, image_labels, t, text_labels, scale_and_margin)]  # DLPack refuses grads
    with _on_device(z) as stream:
        extension().contrastive_forward(*arrays[:5], num_classes, *saved, multiview_terms=multiview_terms,
                                        stream=stream)
    terms = saved[-1][: _layout()["loss_terms"]].to(_result_dtype(z), copy=True)  # not a view of saved data
    return (terms, *saved)


@_contrastive_op.register_fake
def _(z, image_labels, t, text_labels, scale_and_margin, num_classes, multiview_terms):
    terms = z.new_empty(_layout()["loss_terms"], dtype=_result_dtype(z))
    return (terms, *_empty_saved(z, t.shape[0], num_classes))


@torch.library.custom_op("affectvlm::contrastive_loss_backward", mutates_args=())
def _contrastive_backward_op(z: torch.Tensor, image_labels: torch.Tensor, t: torch.Tensor,
                             text_labels: torch.Tensor, scale_and_margin: torch.Tensor, num_classes: int,
                             multiview_terms: bool, image_stats: torch.Tensor, text_stats: torch.Tensor,
                             hardest_positive: torch.Tensor, hardest_negative: torch.Tensor,
                             class_counts: torch.Tensor, totals: torch.Tensor,
                             term_gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of sum(term_gradients * terms) w.r.t. z, t and (scale, margin)."""
    grad_dtype = _result_dtype(z)  # the kernels accumulate float16/bfloat16 gradients in float32
    image_grad = torch.empty_like(z, dtype=grad_dtype)
    text_grad = torch.empty_like(t, dtype=grad_dtype)
    scale_and_margin_grad = torch.empty(2, dtype=torch.float64, device=z.device)
    # The kernels write each row's share of the scale gradient into a row of image_stats (kScaleGradient in
    # csrc/contrastive/contrastive.h); the copy, O(N), leaves the op's inputs as they were.
    saved = (image_stats.clone(), text_stats, hardest_positive, hardest_negative, class_counts, totals)
    arrays = [x.detach() for x in (z, image_labels, t, text_labels, scale_and_margin, *saved)]
    with _on_device(z) as stream:
        extension().contrastive_backward(
            *arrays[:5], num_classes, *arrays[5:], term_gradients.detach().to(torch.float64).contiguous(),
            image_grad, text_grad, scale_and_margin_grad, multiview_terms=multiview_terms, stream=stream,
        )
    return image_grad.to(z.dtype), text_grad.to(t.dtype), scale_and_margin_grad


@_contrastive_backward_op.register_fake
def _(z, image_labels, t, text_labels, scale_and_margin, num_classes, multiview_terms, *saved_and_gradients):
    return torch.empty_like(z), torch.empty_like(t), scale_and_margin.new_empty(2)


def _save_for_backward(ctx, inputs, output):
    z, image_labels, t, text_labels, scale_and_margin, num_classes, multiview_terms = inputs
    ctx.num_classes, ctx.multiview_terms = num_classes, multiview_terms
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(z, image_labels, t, text_labels, scale_and_margin, *output[1:])


def _backward(ctx, term_gradients, *statistics_gradients):
    z, image_labels, t, text_labels, scale_and_margin, *saved = ctx.saved_tensors
    image_grad, text_grad, scale_and_margin_grad = _contrastive_backward_op(
        z, image_labels, t, text_labels, scale_and_margin, ctx.num_classes, ctx.multiview_terms, *saved,
        term_gradients)
    return image_grad, None, text_grad, None, scale_and_margin_grad, None, None


_contrastive_op.register_autograd(_backward, setup_context=_save_for_backward)


@functools.cache
def _layout() -> dict[str, int]:
    return extension().contrastive_layout()


def _empty_saved(z: torch.Tensor, num_texts, num_classes: int) -> tuple[torch.Tensor, ...]:
    layout, n = _layout(), z.shape[0]
    f64 = dict(dtype=torch.float64, device=z.device)
    i64 = dict(dtype=torch.int64, device=z.device)
    return (
        # zeros: the forward leaves the row the backward works in (kScaleGradient) unwritten
        torch.zeros(layout["image_stats"], n, **f64),
        torch.empty(layout["text_stats"], num_texts, **f64),
        torch.empty(n, **i64),  # hardest positive
        torch.empty(n, **i64),  # hardest negative
        torch.empty(2, num_classes, **i64),  # class counts
        torch.empty(layout["totals"], **f64),
    )


def _result_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _on_device(tensor: torch.Tensor):
    """Enters the tensor's CUDA device and yields the stream the kernel runs on (0 on the CPU)."""
    if not tensor.is_cuda:
        yield 0
        return
    with torch.cuda.device(tensor.device):
        yield torch.cuda.current_stream().cuda_stream


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
    return images, image_labels, texts, text_labels


def _check_values(z, image_labels, t, text_labels, scale_and_margin, num_classes):
    """The checks that read values. They run inside the op, where torch.compile does not trace, so that
    compiled callers are checked too. Embeddings normalised from non-finite ones are non-finite."""
    for tensor, name in ((z, "images"), (t, "texts")):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be finite, got NaN or inf")
    _check_label_range(image_labels, "image_labels", num_classes)
    _check_label_range(text_labels, "text_labels", num_classes)
    if z.is_cuda and abs(scale := scale_and_margin[0].item()) > MAX_CUDA_LOGIT_SCALE:
        raise ValueError(f"scale must lie in [-{MAX_CUDA_LOGIT_SCALE:g}, {MAX_CUDA_LOGIT_SCALE:g}] on the GPU, "
                         f"got {scale:g}")


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
