"""Run under `torchrun --nproc_per_node=W` with gloo: each rank holds a slice of a batch, gathers it with
gradients and computes the fused loss on the global batch; its gradients must equal the single-process
gradients of the full batch (after DDP's division by W for the gathered embeddings)."""

import sys

import torch
import torch.distributed as dist

from affectvlm.distributed import gather_with_grad
from affectvlm.ops import contrastive_loss

ROWS_PER_RANK, TEXTS, DIM, CLASSES = 48, 14, 16, 5


def full_batch():
    g = torch.Generator().manual_seed(1234)
    return (torch.randn(ROWS_PER_RANK * dist.get_world_size(), DIM, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (ROWS_PER_RANK * dist.get_world_size(),), generator=g),
            torch.randn(TEXTS, DIM, generator=g, dtype=torch.float64),
            torch.arange(TEXTS) % CLASSES)


def loss_and_grads(images, labels, texts, text_labels, gather):
    z = images.clone().requires_grad_()
    t = texts.clone().requires_grad_()
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    margin = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    terms = contrastive_loss(gather(z), gather(labels), t, text_labels, scale=scale, margin=margin,
                             num_classes=CLASSES)
    total = terms.contrastive + 0.5 * terms.triplet + 2.0 * terms.image_text
    total.backward()
    return total.detach(), z.grad, t.grad, scale.grad, margin.grad


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, labels, texts, text_labels = full_batch()
    rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)

    expected = loss_and_grads(images, labels, texts, text_labels, gather=lambda x: x)
    loss, z_grad, t_grad, s_grad, a_grad = loss_and_grads(images[rows], labels[rows], texts, text_labels,
                                                          gather=gather_with_grad)
    torch.testing.assert_close(loss, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_grad / world, expected[1][rows], rtol=1e-10, atol=1e-12)
    for actual, wanted in zip((t_grad, s_grad, a_grad), expected[2:]):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)
    dist.barrier()  # both ranks are done with the group before either tears it down (a CI run saw an abort at exit)
    dist.destroy_process_group()
    print(f"rank {rank}/{world}: gradients match the single-process full batch")


if __name__ == "__main__":
    sys.exit(main())
