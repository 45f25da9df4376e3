"""Gathering embeddings from every rank, with gradients, so that the contrastive loss sees the global batch.

Each rank gathers the embeddings and labels of all ranks and computes the same global loss. In the
backward, `gather_with_grad` sums the gradient of the gathered tensor over ranks and hands each rank its
own slice: rank r receives world_size × dLoss/dz_r. DDP then averages parameter gradients over ranks,
which divides by world_size again, so the model receives exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The concatenation, in rank order, of `tensor` from every rank (all ranks pass the same shape).

    Without an initialised process group, or with one rank, returns `tensor` itself. Integer tensors
    (labels) gather the same way and carry no gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]
