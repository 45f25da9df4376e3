"""Forward + backward of the fused contrastive loss against the materialising reference and open_clip's
ClipLoss, in the same run, with the peak memory each one adds.

Two groups per shape:
- `loss-...`: the full loss (L_mc + L_mt + L_it) with M = 56 text prompts (7 emotions × 8 prompts),
  affectvlm against the reference.
- `infonce-...`: M = N image-text pairs with one label per pair (CLIP's setting), against ClipLoss, which
  computes the InfoNCE term only; affectvlm still computes all three terms here.

Peak extra memory is the rise of the process's peak resident set over one warm-up step (the kernel of
Linux's /proc/self/clear_refs resets the peak first); it counts everything the step allocates: the
normalised copies, autograd's buffers and the gradients. Big shapes run one round.
"""

import re

import pytest
import torch
from open_clip.loss import ClipLoss

from affectvlm.ops import contrastive_loss
from affectvlm.ops.reference import contrastive_loss_reference

CLASSES = 7
PROMPTS = 8 * CLASSES
SCALE, MARGIN = 1 / 0.07, 0.2
SIZES = [1024, 4096, 16384]
DIMS = [256, 512]


def rounds_for(n):
    return {1024: 5, 4096: 2}.get(n, 1)


def make_inputs(n, m, dim, paired):
    g = torch.Generator().manual_seed(n + dim)
    images = torch.randn(n, dim, generator=g)
    texts = torch.randn(m, dim, generator=g)
    if paired:  # CLIP: image i goes with text i and nothing else
        labels = torch.arange(n)
        text_labels = torch.arange(m)
    else:
        labels = torch.randint(0, CLASSES, (n,), generator=g)
        text_labels = torch.arange(m) % CLASSES
    return images, labels, texts, text_labels


def affectvlm_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    terms = contrastive_loss(z, labels, t, text_labels, scale=SCALE, margin=MARGIN)
    sum(terms).backward()


def reference_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    sum(contrastive_loss_reference(z, labels, t, text_labels, scale=SCALE, margin=MARGIN)).backward()


def clip_loss_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    # ClipLoss expects normalised features, as open_clip's models return them.
    loss = ClipLoss()(torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(t, dim=1),
                      torch.tensor(SCALE))
    loss.backward()


def _status_kib(field):
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_extra_mib(step, inputs):
    """The rise of the peak resident set during one call of step (also a warm-up)."""
    fresh = [x.clone() for x in inputs]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    step(*fresh)
    return (_status_kib("VmHWM") - before) / 1024


def run(benchmark, step, n, m, dim, paired):
    inputs = make_inputs(n, m, dim, paired)
    benchmark.extra_info["peak_extra_MiB"] = round(peak_extra_mib(step, inputs), 1)
    benchmark.pedantic(step, setup=lambda: ([x.clone() for x in inputs], {}), rounds=rounds_for(n),
                       iterations=1)


LOSS_CASES = [pytest.param(n, d, id=f"N{n}-D{d}") for n in SIZES for d in DIMS]
INFONCE_CASES = [pytest.param(n, 512, id=f"N{n}-D512") for n in SIZES]


@pytest.mark.parametrize("n, dim", LOSS_CASES)
def test_loss_affectvlm(benchmark, n, dim):
    benchmark.group = f"loss-N{n}-D{dim}"
    run(benchmark, affectvlm_step, n, PROMPTS, dim, paired=False)


@pytest.mark.parametrize("n, dim", LOSS_CASES)
def test_loss_reference(benchmark, n, dim):
    benchmark.group = f"loss-N{n}-D{dim}"
    run(benchmark, reference_step, n, PROMPTS, dim, paired=False)


@pytest.mark.parametrize("n, dim", INFONCE_CASES)
def test_infonce_affectvlm(benchmark, n, dim):
    benchmark.group = f"infonce-N{n}-D{dim}"
    run(benchmark, affectvlm_step, n, n, dim, paired=True)


@pytest.mark.parametrize("n, dim", INFONCE_CASES)
def test_infonce_peer_open_clip_clip_loss(benchmark, n, dim):
    benchmark.group = f"infonce-N{n}-D{dim}"
    run(benchmark, clip_loss_step, n, n, dim, paired=True)


@pytest.mark.parametrize("n, dim", INFONCE_CASES[:2])  # the reference at 16k pairs needs ~20 GiB
def test_infonce_reference(benchmark, n, dim):
    benchmark.group = f"infonce-N{n}-D{dim}"
    run(benchmark, reference_step, n, n, dim, paired=True)
