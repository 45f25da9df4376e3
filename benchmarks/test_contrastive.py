"""Forward + backward of the fused contrastive loss against the materialising reference and open_clip's
ClipLoss, in the same run, with the peak memory each one adds.

Two groups per shape:
- `loss-...`: the full loss (L_mc + L_mt + L_it) with M = 56 text prompts (7 emotions × 8 prompts),
  affectvlm against the reference.
- `infonce-...`: M = N image-text pairs with one label per pair (CLIP's setting), the image-text term
  alone (`multiview_terms=False`), against ClipLoss and the reference's L_it.

On a GPU (`test_cuda_*`, skipped without one) the groups run on the device up to N = 65,536 with Inf-CL
as a further InfoNCE peer where it is installed, and memory is the peak of torch's CUDA allocator.

On the CPU, memory is measured in a fresh process per case: `step_MiB`, the rise of the peak resident set over one
step, counts everything the step allocates (the normalised copies, autograd's buffers, the gradients);
`kernel_MiB`, for affectvlm, the same for the compiled forward and backward alone with their outputs
allocated beforehand, i.e. the kernels' own memory beyond inputs and outputs. Big shapes run one round.
"""

import json
import re
import subprocess
import sys

import pytest
import torch

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


def affectvlm_infonce_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    terms = contrastive_loss(z, labels, t, text_labels, scale=SCALE, margin=MARGIN, multiview_terms=False)
    terms.image_text.backward()


def reference_infonce_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    contrastive_loss_reference(z, labels, t, text_labels, scale=SCALE, margin=MARGIN)[2].backward()


def reference_step(images, labels, texts, text_labels):
    z, t = images.requires_grad_(), texts.requires_grad_()
    sum(contrastive_loss_reference(z, labels, t, text_labels, scale=SCALE, margin=MARGIN)).backward()


def clip_loss_step(images, labels, texts, text_labels):
    ClipLoss = pytest.importorskip("open_clip.loss").ClipLoss
    z, t = images.requires_grad_(), texts.requires_grad_()
    # ClipLoss expects normalised features, as open_clip's models return them.
    loss = ClipLoss()(torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(t, dim=1),
                      torch.tensor(SCALE))
    loss.backward()


STEPS = {"affectvlm": affectvlm_step, "affectvlm_infonce": affectvlm_infonce_step, "reference": reference_step,
         "reference_infonce": reference_infonce_step, "clip_loss": clip_loss_step}


def _status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _peak_rise_mib(call):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set (VmHWM) to the current one
    before = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - before) / 1024


def _kernel_only(images, labels, texts, text_labels):
    """The compiled forward and backward with every output allocated up front: the kernels' own memory."""
    from affectvlm._ext import extension

    C = extension()
    layout = C.contrastive_layout()
    n, m, classes = len(images), len(texts), int(torch.cat([labels, text_labels]).max()) + 1
    z = torch.nn.functional.normalize(images, dim=1)
    t = torch.nn.functional.normalize(texts, dim=1)
    f64 = dict(dtype=torch.float64)
    saved = [torch.zeros(layout["image_stats"], n, **f64), torch.zeros(layout["text_stats"], m, **f64),
             torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
             torch.zeros(2, classes, dtype=torch.int64), torch.zeros(layout["totals"], **f64)]
    grads = [torch.zeros(3, **f64).fill_(1), torch.zeros_like(z), torch.zeros_like(t), torch.zeros(2, **f64)]
    scalars = torch.tensor([SCALE, MARGIN], **f64)

    def call():
        C.contrastive_forward(z, labels, t, text_labels, scalars, classes, *saved)
        C.contrastive_backward(z, labels, t, text_labels, scalars, classes, *saved, *grads)

    return _peak_rise_mib(call)


def measure_memory(step_name, n, m, dim, paired):
    """Peak resident memory (MiB) that one step adds, in a fresh process so that no earlier allocation
    that the allocator kept can hide it. For affectvlm also the kernels' own memory."""
    command = [sys.executable, __file__, step_name, str(n), str(m), str(dim), str(int(paired))]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _memory_main(step_name, n, m, dim, paired):
    inputs = make_inputs(int(n), int(m), int(dim), bool(int(paired)))
    out = {}
    if step_name.startswith("affectvlm"):  # first, so that nothing the step leaves behind is reused
        out["kernel_MiB"] = round(_kernel_only(*inputs), 1)
    out["step_MiB"] = round(_peak_rise_mib(lambda: STEPS[step_name](*inputs)), 1)
    print(json.dumps(out))


def run(benchmark, step_name, n, m, dim, paired):
    benchmark.extra_info.update(measure_memory(step_name, n, m, dim, paired))
    inputs = make_inputs(n, m, dim, paired)
    step = STEPS[step_name]
    benchmark.pedantic(step, setup=lambda: ([x.clone() for x in inputs], {}), rounds=rounds_for(n),
                       iterations=1, warmup_rounds=1 if n < 16384 else 0)


# The materialising reference at 16k InfoNCE pairs needs ~20 GiB, so it runs at the smaller sizes only.
LOSS_CASES = [pytest.param(step, n, d, id=f"{step}-N{n}-D{d}")
              for step in ("affectvlm", "reference") for n in SIZES for d in DIMS]
INFONCE_CASES = [pytest.param(step, n, 512, id=f"{step}-N{n}-D512")
                 for step in ("affectvlm_infonce", "clip_loss", "reference_infonce") for n in SIZES
                 if not (step == "reference_infonce" and n == SIZES[-1])]


@pytest.mark.parametrize("step_name, n, dim", LOSS_CASES)
def test_loss(benchmark, step_name, n, dim):
    benchmark.group = f"loss-N{n}-D{dim}"
    run(benchmark, step_name, n, PROMPTS, dim, paired=False)


@pytest.mark.parametrize("step_name, n, dim", INFONCE_CASES)
def test_infonce(benchmark, step_name, n, dim):
    benchmark.group = f"infonce-N{n}-D{dim}"
    run(benchmark, step_name, n, n, dim, paired=True)


# GPU: the same comparisons up to N = 65,536, timed with a synchronisation at the end of each step and with
# the peak of torch's CUDA allocator over one step. Skipped where no GPU is usable.

GPU_SIZES = [8192, 32768, 65536]


def inf_cl_step(images, labels, texts, text_labels):
    """Inf-CL's fused InfoNCE (pip install inf_cl), both directions, on normalised features."""
    cal_inf_loss = pytest.importorskip("inf_cl").cal_inf_loss
    import torch.distributed as dist

    if not dist.is_initialized():  # Inf-CL expects a process group, even of one
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    z = torch.nn.functional.normalize(images.requires_grad_(), dim=1)
    t = torch.nn.functional.normalize(texts.requires_grad_(), dim=1)
    loss = 0.5 * (cal_inf_loss(z, t, scale=torch.tensor(SCALE, device=z.device)) +
                  cal_inf_loss(t, z, scale=torch.tensor(SCALE, device=z.device)))
    loss.backward()


GPU_STEPS = {**STEPS, "inf_cl": inf_cl_step}


def run_gpu(benchmark, step_name, n, m, dim, paired):
    inputs = [x.cuda() for x in make_inputs(n, m, dim, paired)]
    step = GPU_STEPS[step_name]

    def synchronised(*args):
        step(*args)
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    try:
        synchronised(*[x.clone() for x in inputs])  # warm-up, and the memory measurement
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{step_name} runs out of GPU memory at N = {n}")
    benchmark.extra_info["peak_extra_MiB"] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)
    benchmark.extra_info["device"] = torch.cuda.get_device_name()
    benchmark.pedantic(synchronised, setup=lambda: ([x.clone() for x in inputs], {}), rounds=5, iterations=1)


@pytest.mark.cuda
@pytest.mark.parametrize("n", GPU_SIZES)
@pytest.mark.parametrize("step_name", ["affectvlm", "reference"])
def test_cuda_loss(benchmark, step_name, n):
    benchmark.group = f"cuda-loss-N{n}-D512"
    run_gpu(benchmark, step_name, n, PROMPTS, 512, paired=False)


@pytest.mark.cuda
@pytest.mark.parametrize("n", GPU_SIZES)
@pytest.mark.parametrize("step_name", ["affectvlm_infonce", "reference_infonce", "clip_loss", "inf_cl"])
def test_cuda_infonce(benchmark, step_name, n):
    benchmark.group = f"cuda-infonce-N{n}-D512"
    run_gpu(benchmark, step_name, n, n, 512, paired=True)


if __name__ == "__main__":
    _memory_main(*sys.argv[1:])
