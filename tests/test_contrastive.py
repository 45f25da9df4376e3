"""The fused contrastive loss against its materialising PyTorch reference, its edge cases and bad input."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from affectvlm._ext import extension
from affectvlm.ops import AffectLoss, contrastive_loss
from affectvlm.ops.reference import contrastive_loss_reference

C = extension()
NUM_CLASSES = 4


def make_inputs(n, m, dim, *, dtype=torch.float64, device="cpu", classes=NUM_CLASSES, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    texts = torch.randn(m, dim, generator=g, dtype=torch.float64)
    text_labels = torch.randint(0, classes, (m,), generator=g)
    scale = torch.tensor(2.5, dtype=torch.float64)
    margin = torch.tensor(0.3, dtype=torch.float64)
    to = dict(device=device)
    return (images.to(dtype=dtype, **to), labels.to(**to), texts.to(dtype=dtype, **to), text_labels.to(**to),
            scale.to(**to), margin.to(**to))


def terms_and_gradients(loss_fn, images, labels, texts, text_labels, scale, margin, term_weights, **kwargs):
    """The three terms and the gradients of sum(term_weights * terms) w.r.t. images, texts, scale, margin."""
    leaves = [x.detach().clone().requires_grad_() for x in (images, texts, scale, margin)]
    z, t, s, a = leaves
    with_texts = len(t) > 0
    terms = torch.stack(list(loss_fn(z, labels, t if with_texts else None, text_labels if with_texts else None,
                                     scale=s, margin=a, **kwargs)))
    objective = (terms.double() * term_weights.to(terms.device)).sum()
    grads = torch.autograd.grad(objective, leaves, allow_unused=True) if objective.requires_grad else [None] * 4
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
    return terms.detach(), grads


def kernel(*args, **kwargs):
    return contrastive_loss(*args, **kwargs)  # num_classes inferred from the labels


def assert_matches_reference(inputs, *, rtol=1e-9, atol=1e-11, seed=0):
    weights = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected, expected_grads = terms_and_gradients(contrastive_loss_reference, *inputs, weights)
    actual, actual_grads = terms_and_gradients(kernel, *inputs, weights)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    for name, a, e in zip(("images", "texts", "scale", "margin"), actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"d/d{name}: {m}")


SHAPES = [  # (N, M, D): single rows, tile edges (64), uneven tiles, large D, a few thousand rows
    (1, 0, 1), (1, 3, 5), (2, 1, 1), (3, 2, 7), (17, 9, 1), (64, 64, 16), (65, 63, 33), (130, 7, 129),
    (200, 0, 1024), (257, 300, 2), (3000, 96, 24),
]


@pytest.mark.parametrize("n, m, dim", SHAPES)
def test_float64_matches_reference(n, m, dim):
    assert_matches_reference(make_inputs(n, m, dim, seed=n + m + dim), seed=n)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(0, 20), dim=st.integers(1, 9), classes=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_float64_matches_reference_on_random_small_shapes(n, m, dim, classes, seed):
    assert_matches_reference(make_inputs(n, m, dim, classes=classes, seed=seed), seed=seed)


@pytest.mark.parametrize("classes", [1, 2, 50])
def test_float64_matches_reference_for_few_and_many_classes(classes):
    assert_matches_reference(make_inputs(150, 40, 8, classes=classes, seed=classes))


def test_float32_is_close_to_the_float64_reference():
    inputs = make_inputs(300, 50, 64, seed=3)
    weights = torch.ones(3, dtype=torch.float64)
    expected, expected_grads = terms_and_gradients(contrastive_loss_reference, *inputs, weights)
    f32 = [x.float() if x.is_floating_point() and x.ndim == 2 else x for x in inputs]
    actual, actual_grads = terms_and_gradients(kernel, *f32, weights)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n, m, dim", [(1, 3, 5), (130, 70, 33)])
def test_image_text_term_alone_matches_the_reference(n, m, dim):
    inputs = make_inputs(n, m, dim, seed=n)
    weights = torch.tensor([0.0, 0.0, 1.7], dtype=torch.float64)
    expected, expected_grads = terms_and_gradients(contrastive_loss_reference, *inputs, weights)
    actual, actual_grads = terms_and_gradients(kernel, *inputs, weights, multiview_terms=False)
    assert actual[0] == 0 and actual[1] == 0
    torch.testing.assert_close(actual[2], expected[2], rtol=1e-9, atol=1e-11)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_gradcheck_on_small_double_inputs():
    images, labels, texts, text_labels, scale, margin = make_inputs(9, 5, 3, seed=11)
    leaves = [x.clone().requires_grad_() for x in (images, texts, scale, margin)]

    def loss(z, t, s, a):
        return torch.stack(list(kernel(z, labels, t, text_labels, scale=s, margin=a)))

    assert torch.autograd.gradcheck(loss, leaves)


# Edge cases: each compared with the reference, which defines the convention.

def test_all_labels_equal_has_no_negatives_and_no_triplets():
    inputs = list(make_inputs(40, 10, 6, seed=5))
    inputs[1] = torch.zeros(40, dtype=torch.int64)
    inputs[3] = torch.zeros(10, dtype=torch.int64)
    assert_matches_reference(inputs)
    terms = kernel(*inputs[:4], scale=inputs[4], margin=inputs[5])
    assert terms.triplet == 0


def test_every_label_distinct_has_no_positives():
    inputs = list(make_inputs(30, 30, 6, classes=30, seed=6))
    inputs[1] = torch.randperm(30)
    inputs[3] = torch.randperm(30)
    weights = torch.randn(3, dtype=torch.float64)
    expected, expected_grads = terms_and_gradients(contrastive_loss_reference, *inputs, weights)
    actual, actual_grads = terms_and_gradients(kernel, *inputs, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    assert actual[1] == 0


def test_duplicate_embeddings_tie_break_to_the_lowest_index():
    images, labels, texts, text_labels, scale, margin = make_inputs(24, 8, 5, seed=7)
    images = torch.cat([images[:12], images[:12]])  # every row twice: ties for hardest positive and negative
    labels = torch.cat([labels[:12], labels[:12]])
    assert_matches_reference((images, labels, texts, text_labels, scale, margin))


def test_zero_vectors_follow_normalize_with_eps():
    images, labels, texts, text_labels, scale, margin = make_inputs(20, 6, 4, seed=8)
    images[[0, 5, 6]] = 0
    texts[2] = 0
    assert_matches_reference((images, labels, texts, text_labels, scale, margin))


def test_affect_loss_weights_terms_and_trains_scale_and_margin():
    images, labels, texts, text_labels, *_ = make_inputs(50, 12, 8, dtype=torch.float32, seed=9)
    loss = AffectLoss(NUM_CLASSES, weights=(0.5, 2.0, 1.5))
    out = loss(images.requires_grad_(), labels, texts, text_labels)
    torch.testing.assert_close(out.total, 0.5 * out.contrastive + 2.0 * out.triplet + 1.5 * out.image_text)
    reference = contrastive_loss_reference(images, labels, texts, text_labels, scale=loss.scale, margin=loss.margin)
    torch.testing.assert_close(torch.stack([out.contrastive, out.triplet, out.image_text]), reference,
                               rtol=1e-5, atol=1e-6)
    out.total.backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0
    assert loss.margin_parameter.grad is not None and loss.margin_parameter.grad != 0
    assert loss.margin > 0


def test_cpu_results_are_bit_identical_across_runs_and_thread_counts():
    script = (
        "import torch, sys\n"
        "from test_contrastive import make_inputs, terms_and_gradients, kernel\n"
        "inputs = make_inputs(300, 130, 40, dtype=torch.float32, seed=1)\n"
        "terms, grads = terms_and_gradients(kernel, *inputs, torch.ones(3, dtype=torch.float64))\n"
        "torch.save([terms] + grads, sys.argv[1])\n"
    )
    results = []
    for threads in ("1", "2", "2"):
        path = f"{os.environ.get('TMPDIR', '/tmp')}/contrastive_determinism_{os.getpid()}_{len(results)}.pt"
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-c", script, path], check=True, env=env, cwd=os.path.dirname(__file__))
        results.append(torch.load(path))
        os.remove(path)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_baseline_cpu_code_matches_the_reference_too():
    """The hot loops run in their x86-64-v3 build where the CPU has it; AFFECTVLM_CPU=baseline runs the
    other build: the reference tests must pass on it as well."""
    env = {**os.environ, "AFFECTVLM_CPU": "baseline"}
    check = subprocess.run([sys.executable, "-c", "import affectvlm_kernels as c; print(c.cpu_code())"],
                           capture_output=True, text=True, env=env, cwd=os.path.dirname(__file__))
    assert check.stdout.strip() == "baseline", check.stderr
    selection = "float64_matches_reference and not random or float32_is_close or image_text_term_alone"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                             selection], capture_output=True, text=True, env=env, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "17 passed," in result.stdout


# Bad input: one clear exception naming the argument.

@pytest.mark.parametrize("position, value, error, message", [
    (0, float("nan"), ValueError, "images must be finite"),
    (0, float("inf"), ValueError, "images must be finite"),
    (2, float("-inf"), ValueError, "texts must be finite"),
])
def test_non_finite_embeddings_are_rejected(position, value, error, message):
    inputs = list(make_inputs(10, 4, 3))
    inputs[position][1, 2] = value
    with pytest.raises(error, match=message):
        kernel(*inputs[:4], scale=inputs[4], margin=inputs[5])


@pytest.mark.parametrize("change, error, message", [
    (lambda x: x.update(labels=x["labels"].int()), TypeError, "image_labels must have dtype torch.int64"),
    (lambda x: x.update(text_labels=x["text_labels"].float()), TypeError, "text_labels must have dtype"),
    (lambda x: x.update(labels=x["labels"][:-1]), ValueError, r"image_labels must have shape \(10,\)"),
    (lambda x: x.update(texts=x["texts"][:, :2]), ValueError, r"texts must have shape \(M, 3\)"),
    (lambda x: x.update(images=x["images"][0]), ValueError, r"images must have shape \(N, D\)"),
    (lambda x: x.update(images=x["images"][:0], labels=x["labels"][:0]), ValueError, "N >= 1"),
    (lambda x: x.update(texts=x["texts"].float()), TypeError, "texts must have the dtype and device of images"),
    (lambda x: x.update(images=x["images"].long()), TypeError, "images must be a floating-point tensor"),
    (lambda x: x.update(labels=x["labels"] + NUM_CLASSES), ValueError, r"image_labels must lie in \[0, 4\)"),
    (lambda x: x.update(text_labels=x["text_labels"] - 5), ValueError, r"text_labels must lie in \[0, 4\)"),
    (lambda x: x.update(text_labels=None), ValueError, "texts and text_labels must be given together"),
    (lambda x: x.update(images=x["images"].numpy()), TypeError, "images must be a torch.Tensor"),
])
def test_bad_arguments_raise_a_clear_error(change, error, message):
    images, labels, texts, text_labels, scale, margin = make_inputs(10, 4, 3)
    args = dict(images=images, labels=labels, texts=texts, text_labels=text_labels)
    change(args)
    with pytest.raises(error, match=message):
        kernel(args["images"], args["labels"], args["texts"], args["text_labels"], scale=scale, margin=margin,
               num_classes=NUM_CLASSES)


def test_float16_on_the_cpu_is_rejected_by_the_kernel():
    inputs = make_inputs(10, 4, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="CPU contrastive kernel takes float32 or float64"):
        kernel(*inputs[:4], scale=inputs[4], margin=inputs[5])


# The compiled module on its own: checks at the boundary, and every output element written.

def saved_arrays(n, m, classes, device="cpu", fill=float("nan")):
    layout = C.contrastive_layout()
    f64 = dict(dtype=torch.float64, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return [torch.full((layout["image_stats"], n), fill, **f64), torch.full((layout["text_stats"], m), fill, **f64),
            torch.full((n,), -7, **i64), torch.full((n,), -7, **i64), torch.full((2, classes), -7, **i64),
            torch.full((layout["totals"],), fill, **f64)]


def run_module(images, labels, texts, text_labels, scale_and_margin, classes=NUM_CLASSES):
    n, m = len(images), len(texts)
    device = images.device
    stream = torch.cuda.current_stream(device).cuda_stream if images.is_cuda else 0
    saved = saved_arrays(n, m, classes, device)
    C.contrastive_forward(images, labels, texts, text_labels, scale_and_margin, classes, *saved, stream=stream)
    image_grad = torch.full_like(images, float("nan"))
    text_grad = torch.full_like(texts, float("nan"))
    scalar_grads = torch.full((2,), float("nan"), dtype=torch.float64, device=device)
    term_gradients = torch.ones(3, dtype=torch.float64, device=device)
    C.contrastive_backward(images, labels, texts, text_labels, scale_and_margin, classes, *saved, term_gradients,
                           image_grad, text_grad, scalar_grads, stream=stream)
    return saved, image_grad, text_grad, scalar_grads


def normalised_inputs(n, m, dim, dtype=torch.float32, device="cpu", seed=0):
    images, labels, texts, text_labels, scale, margin = make_inputs(n, m, dim, seed=seed)
    z = torch.nn.functional.normalize(images, dim=1).to(dtype=dtype, device=device)
    t = torch.nn.functional.normalize(texts, dim=1).to(dtype=dtype, device=device)
    return z, labels.to(device), t, text_labels.to(device), torch.stack([scale, margin]).to(device)


@pytest.mark.parametrize("n, m, dim", [(1, 0, 3), (70, 65, 17), (5, 130, 1)])
def test_module_writes_every_output_element(n, m, dim):
    saved, image_grad, text_grad, scalar_grads = run_module(*normalised_inputs(n, m, dim))
    for array in saved[:2] + [saved[-1]]:
        assert not array.isnan().any()
    assert (saved[2] >= -1).all() and (saved[3] >= -1).all() and (saved[4] >= 0).all()
    assert saved[4].sum() == n + m
    for array in (image_grad, text_grad, scalar_grads):
        assert array.isfinite().all()


def test_module_range_checks_labels_itself():
    z, labels, t, text_labels, scalars = normalised_inputs(6, 2, 3)
    labels[3] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"image_labels must hold values in \[0, 4\), got 4 at index 3"):
        run_module(z, labels, t, text_labels, scalars)


@pytest.mark.parametrize("argument, change, error, message", [
    ("texts", lambda t: t.double(), TypeError, "texts must have dtype float32, got float64"),
    ("labels", lambda y: y.int(), TypeError, "image_labels must have dtype int64, got int32"),
    ("texts", lambda t: t[:, :1].contiguous(), ValueError, "texts must have size 3 in dimension 1"),
    ("images", lambda z: z.T, ValueError, "images must be contiguous"),
    ("scalars", lambda s: s[:1], ValueError, "scale_and_margin must have size 2"),
])
def test_module_checks_its_arguments(argument, change, error, message):
    args = dict(zip(("images", "labels", "texts", "text_labels", "scalars"), normalised_inputs(6, 2, 3)))
    args[argument] = change(args[argument])
    with pytest.raises(error, match=message):
        run_module(*args.values())


def test_module_checks_output_shapes():
    z, labels, t, text_labels, scalars = normalised_inputs(6, 2, 3)
    saved = saved_arrays(6, 2, NUM_CLASSES)
    saved[2] = saved[2][:5]
    with pytest.raises(ValueError, match="hardest_positive must have size 6"):
        C.contrastive_forward(z, labels, t, text_labels, scalars, NUM_CLASSES, *saved)


# CUDA: the same comparisons on the GPU (skipped where no GPU is usable).

def assert_cuda_float32_matches_reference(inputs):
    weights = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(len(inputs[0])))
    expected, expected_grads = terms_and_gradients(contrastive_loss_reference, *inputs, weights)
    f32 = [x.float().cuda() if x.is_floating_point() and x.ndim == 2 else x.cuda() for x in inputs]
    actual, actual_grads = terms_and_gradients(kernel, *f32, weights)
    torch.testing.assert_close(actual.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    for name, a, e in zip(("images", "texts", "scale", "margin"), actual_grads, expected_grads):
        torch.testing.assert_close(a.double().cpu(), e, rtol=1e-4, atol=1e-5, msg=lambda m: f"d/d{name}: {m}")


# Several row blocks adding to the same texts' gradients and column statistics, partial tiles and slices.
@pytest.mark.cuda
@pytest.mark.parametrize("n, m, dim", [(1, 0, 3), (65, 63, 33), (200, 130, 70), (300, 7, 512), (1500, 200, 64)])
def test_cuda_float32_matches_reference(n, m, dim):
    assert_cuda_float32_matches_reference(make_inputs(n, m, dim, seed=n))


@pytest.mark.cuda
def test_cuda_texts_softmax_at_affect_loss_largest_scale():
    """At s = 100 (AffectLoss's clamp) the texts' sums of exp(logit - s) lie between exp(-72) and exp(-54)."""
    images, labels, texts, text_labels, _, margin = make_inputs(300, 90, 64, seed=4)
    scale = torch.tensor(100.0, dtype=torch.float64)
    assert_cuda_float32_matches_reference((images, labels, texts, text_labels, scale, margin))


@pytest.mark.cuda
def test_cuda_rejects_scales_beyond_its_bound():
    images, labels, texts, text_labels, _, margin = make_inputs(10, 4, 3, dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match=r"scale must lie in \[-350, 350\] on the GPU, got -351"):
        kernel(images, labels, texts, text_labels, scale=-351.0, margin=margin)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
# The last two shapes are off every tile size: 64 rows and columns, 16-wide fragments, 64- and 32-wide chunks of D.
@pytest.mark.parametrize("n, m, dim", [(512, 64, 128), (300, 77, 33), (130, 200, 250)])
def test_cuda_low_precision_error_at_most_twice_the_reference_error(dtype, n, m, dim):
    """flash-attention's rule: against fp64, the kernel errs at most twice as much as the framework does.

    The framework returns its loss terms in the input's precision, the kernel in float32: rounding to that
    precision is an error the framework always makes but can miss by chance (a term that happens to lie near a
    representable value), so the terms' bound is twice the larger of the framework's error and half a unit in
    the last place of the input's precision. Gradients come out in the input's precision from both."""
    images, labels, texts, text_labels, scale, margin = make_inputs(n, m, dim, seed=21)
    images, texts = images.to(dtype).double(), texts.to(dtype).double()  # both see the same rounded inputs
    weights = torch.ones(3, dtype=torch.float64)
    exact, exact_grads = terms_and_gradients(contrastive_loss_reference, images, labels, texts, text_labels,
                                             scale, margin, weights)
    low = [images.to(dtype).cuda(), labels.cuda(), texts.to(dtype).cuda(), text_labels.cuda(), scale.cuda(),
           margin.cuda()]
    framework, framework_grads = terms_and_gradients(contrastive_loss_reference, *low, weights)
    ours, our_grads = terms_and_gradients(kernel, *low, weights)
    slack = 1e-6
    half_ulp = 2.0 ** torch.floor(torch.log2(exact.abs())) * torch.finfo(dtype).eps / 2
    framework_error = torch.maximum((framework.double().cpu() - exact).abs(), half_ulp)
    assert ((ours.double().cpu() - exact).abs() <= 2 * framework_error + slack).all()
    for o, f, e in zip(our_grads[:2], framework_grads[:2], exact_grads[:2]):
        assert (o.double().cpu() - e).abs().max() <= 2 * (f.double().cpu() - e).abs().max() + slack


@pytest.mark.cuda
@pytest.mark.parametrize("n, m, dim", [(1, 0, 3), (70, 65, 17), (130, 5, 1)])
def test_cuda_module_writes_every_output_element(n, m, dim):
    saved, image_grad, text_grad, scalar_grads = run_module(*normalised_inputs(n, m, dim, device="cuda"))
    for array in saved[:2] + [saved[-1]]:
        assert not array.isnan().any()
    assert saved[4].sum() == n + m
    for array in (image_grad, text_grad, scalar_grads):
        assert array.isfinite().all()


# Distributed: a real torchrun with two gloo processes on the CPU.

def test_gathered_loss_on_two_ranks_has_the_single_process_gradients():
    worker = os.path.join(os.path.dirname(__file__), "distributed_contrastive_worker.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("gradients match the single-process full batch") == 2
