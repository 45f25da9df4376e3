"""The compiled ops as torch.library custom ops: opcheck on each (schema, fake implementation, autograd
registration, and the op under AOT autograd with dynamic shapes), and torch.compile(fullgraph=True) through
them agreeing with eager mode."""

import numpy as np
import pytest
import torch
from raster_scenes import random_cameras, random_mesh

from affectvlm.ops import contrastive_loss
from affectvlm.ops.raster import pack_meshes, render_views, vertex_normals

NUM_CLASSES = 4


def loss_inputs(n, m, dim, *, dtype=torch.float64, device="cpu", seed=0):
    """The op's arguments: normalised embeddings, labels, scale and margin, a class count, multiview_terms."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(m, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    text_labels = torch.randint(0, NUM_CLASSES, (m,), generator=g)
    scale_and_margin = torch.tensor([2.5, 0.3], dtype=torch.float64)
    return (z.to(dtype=dtype, device=device), labels.to(device), t.to(dtype=dtype, device=device),
            text_labels.to(device), scale_and_margin.to(device), NUM_CLASSES, True)


def render_inputs(seed=0, device="cpu", size=(12, 16)):
    """The op's arguments for two meshes of different topologies seen by two cameras each, every channel."""
    rng = torch.Generator().manual_seed(seed)
    meshes = [random_mesh(np.random.default_rng(seed + i), 30, 60) for i in range(2)]
    batch = pack_meshes([v for v, _ in meshes], [f for _, f in meshes])
    cameras = random_cameras(np.random.default_rng(seed), 2, sets=2)
    attributes = torch.randn(len(batch.vertices), 2, generator=rng)
    tensors = (batch.vertices, batch.faces, batch.meshes, cameras.world_to_clip.float().contiguous(),
               cameras.world_to_view.float().contiguous(), vertex_normals(batch), attributes)
    options = (["depth", "normal", "shading", "mask", "attributes"], *size, True, False, [0.0, 0.6, 0.8], 0.2)
    return tuple(x.to(device) for x in tensors) + options


def check_loss_op(device, dtype):
    args = loss_inputs(9, 5, 3, dtype=dtype, device=device)
    z, t, scale_and_margin = (args[i].clone().requires_grad_() for i in (0, 2, 4))
    with_grads = (z, args[1], t, args[3], scale_and_margin, *args[5:])
    torch.library.opcheck(torch.ops.affectvlm.contrastive_loss, with_grads)
    torch.library.opcheck(torch.ops.affectvlm.contrastive_loss, args[:-1] + (False,))
    outputs = torch.ops.affectvlm.contrastive_loss(*args)
    term_gradients = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.affectvlm.contrastive_loss_backward,
                          (*args, *outputs[1:], term_gradients))


def check_render_op(device):
    for fragments in (True, False):
        args = render_inputs(device=device) + (fragments, fragments)
        torch.library.opcheck(torch.ops.affectvlm.render_views, args)


def test_loss_ops_pass_opcheck():
    check_loss_op("cpu", torch.float64)
    check_loss_op("cpu", torch.float32)


def test_render_op_passes_opcheck():
    check_render_op("cpu")


def test_compiled_loss_and_its_gradients_match_eager():
    """aot_eager runs everything torch.compile does up to code generation (Dynamo's full graph, the fake
    implementations, AOT autograd's joint graph with the backward op), without Inductor's C++ compile, which
    takes tens of seconds on two cores and has nothing of ours to check."""
    g = torch.Generator().manual_seed(3)
    images, texts = torch.randn(12, 6, generator=g), torch.randn(5, 6, generator=g)
    labels, text_labels = torch.randint(0, NUM_CLASSES, (12,), generator=g), torch.arange(5) % NUM_CLASSES
    log_scale = torch.tensor(2.0)

    def objective(images, texts, log_scale):
        terms = contrastive_loss(images * 2, labels, texts, text_labels, scale=log_scale.exp(), margin=0.2,
                                 num_classes=NUM_CLASSES)
        return terms.contrastive + 0.5 * terms.triplet + terms.image_text

    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    results = []
    for function in (objective, compiled):
        leaves = [x.clone().requires_grad_() for x in (images, texts, log_scale)]
        loss = function(*leaves)
        results.append([loss, *torch.autograd.grad(loss, leaves)])
    for eager, compiled_result in zip(*results):
        torch.testing.assert_close(compiled_result, eager, rtol=1e-6, atol=1e-7)


def test_compiled_render_op_matches_eager():
    args = render_inputs(seed=4) + (True, True)

    def render(*tensors):
        images, ids, barycentrics = torch.ops.affectvlm.render_views(*tensors, *args[7:])
        return images * 2, ids, barycentrics

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    for eager, compiled_result in zip(render(*args[:7]), compiled(*args[:7])):
        assert torch.equal(compiled_result, eager)


def test_render_views_through_the_op_matches_the_reference():
    vertices, faces = random_mesh(np.random.default_rng(7), 40, 80)
    cameras = random_cameras(np.random.default_rng(7), 3)
    kernel = render_views(vertices, faces, cameras, 20, return_fragments=True, backend="kernel")
    reference = render_views(vertices, faces, cameras, 20, return_fragments=True, backend="reference")
    torch.testing.assert_close(kernel[0], reference[0], rtol=0, atol=1e-5)
    assert torch.equal(kernel[1].triangle_ids, reference[1].triangle_ids)
    assert kernel[1].barycentrics is None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_loss_ops_pass_opcheck(dtype):
    check_loss_op("cuda", dtype)


@pytest.mark.cuda
def test_cuda_render_op_passes_opcheck():
    check_render_op("cuda")


@pytest.mark.cuda
def test_cuda_loss_runs_on_the_tensors_device_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    g = torch.Generator().manual_seed(5)
    images, texts = torch.randn(70, 16, generator=g), torch.randn(9, 16, generator=g)
    labels, text_labels = torch.randint(0, NUM_CLASSES, (70,), generator=g), torch.arange(9) % NUM_CLASSES
    results = []
    for device in ("cuda:0", "cuda:1"):
        leaves = [x.to(device).requires_grad_() for x in (images, texts)]
        with torch.cuda.device(0):  # the current device stays 0 while the tensors of the second run are on 1
            terms = contrastive_loss(leaves[0], labels.to(device), leaves[1], text_labels.to(device), scale=10.0,
                                     margin=0.2, num_classes=NUM_CLASSES)
            grads = torch.autograd.grad(sum(terms), leaves)
        torch.cuda.synchronize(device)
        results.append([torch.stack(list(terms)).cpu(), *(x.cpu() for x in grads)])
    for on_0, on_1 in zip(*results):
        assert torch.equal(on_1, on_0)
