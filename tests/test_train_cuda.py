"""Training on a GPU: one training step there (the CUDA loss kernels; float32, then bf16 autocast) against the same
step on the CPU from the same weights and batch, and a real torchrun run on the GPU: NCCL process group, views
rendered on the GPU for every batch with camera jitter, augmented there, bf16. Skipped without a usable GPU."""

import copy
import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.synthetic import generate_dataset
from test_train import ENV, TINY_MODEL, WORKER, run, torchrun

pytestmark = pytest.mark.cuda


@pytest.fixture
def no_tf32():
    """float32 matrix products in float32 on the GPU too, so that CPU and GPU steps can be compared closely."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture
def tiny_model(tmp_path):
    """The tiny model's config file, in the test's folder."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    return path


def step_inputs(seed: int, batch: int = 12):
    """A batch of random views with every emotion twice, and one drawn prompt per sample."""
    from affectvlm.model.prompts import PromptBank

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 3, 32, 32, generator=generator)
    labels = torch.arange(batch) % len(EMOTIONS)
    bank = PromptBank.default()
    prompts = [bank.draw(EMOTIONS[label], None, None, seed, 0, i) for i, label in enumerate(labels.tolist())]
    return images, labels, torch.ones(batch, dtype=torch.bool), prompts


def one_step(module, images, labels, valid, prompts):
    """The step's loss terms and the gradient of every parameter, flattened into one vector, on the CPU."""
    device = next(module.parameters()).device
    terms = module(images.to(device), labels.to(device), valid.to(device), prompts)
    terms.total.backward()
    gradient = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    values = torch.stack([terms.total, terms.contrastive, terms.triplet, terms.image_text]).detach()
    return values.float().cpu(), gradient.float().cpu()


def cpu_and_cuda_steps(tiny_model, seed: int, autocast_dtype):
    from affectvlm.model.affect_model import build_model
    from affectvlm.ops.contrastive import AffectLoss
    from affectvlm.train.loop import TrainModule

    torch.manual_seed(seed)
    cpu = TrainModule(build_model(tiny_model), AffectLoss(len(EMOTIONS)))
    cuda = copy.deepcopy(cpu).cuda()
    cuda.autocast_dtype = autocast_dtype
    inputs = step_inputs(seed)
    return one_step(cpu, *inputs), one_step(cuda, *inputs)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.mark.parametrize("seed", range(2))
def test_a_float32_training_step_on_the_gpu_equals_the_cpu_step(tiny_model, no_tf32, seed):
    (cpu_terms, cpu_gradient), (cuda_terms, cuda_gradient) = cpu_and_cuda_steps(tiny_model, seed, None)
    torch.testing.assert_close(cuda_terms, cpu_terms, rtol=1e-4, atol=1e-5)
    assert cosine(cuda_gradient, cpu_gradient) > 0.9999
    assert (cuda_gradient - cpu_gradient).norm() <= 1e-3 * cpu_gradient.norm()


@pytest.mark.parametrize("seed", range(2))
def test_a_bf16_autocast_step_stays_close_to_the_float32_cpu_step(tiny_model, seed):
    (cpu_terms, cpu_gradient), (cuda_terms, cuda_gradient) = cpu_and_cuda_steps(tiny_model, seed, torch.bfloat16)
    torch.testing.assert_close(cuda_terms, cpu_terms, rtol=3e-2, atol=1e-2)
    similarity = cosine(cuda_gradient, cpu_gradient)
    print(f"\nbf16 step: loss {cuda_terms[0]:.4f} against {cpu_terms[0]:.4f} in float32 on the CPU; "
          f"gradient cosine {similarity:.5f}")
    assert similarity > 0.99


def test_torchrun_trains_on_the_gpu_with_nccl_online_views_and_bf16(tmp_path, tiny_model):
    generate_dataset(tmp_path / "faces", 6, seed=3, file_format="ply")
    out = tmp_path / "out"
    result = run(torchrun("--standalone", "--nproc_per_node=1", str(WORKER), str(tmp_path / "faces"),
                          "--model", str(tiny_model), "--out", str(out), "--cache-dir", str(tmp_path),
                          "--source", "online", "--jitter", "yaw=10,pitch=5,roll=3", "--augment", "--device", "cuda",
                          "--batch-size", "8", "--epochs", "2", "--folds", "3", "--lr", "2e-3", "--warmup", "2",
                          "--no-progress"), env={**ENV, "OMP_NUM_THREADS": "4"})
    print("\n" + next(line for line in result.stdout.splitlines() if line.startswith("held-out accuracy:")))
    assert json.loads((out / "rank0.json").read_text()) == {"backend": "nccl", "device": "cuda:0"}

    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in steps if record["kind"] == "step"]
    assert losses and all(math.isfinite(loss) for loss in losses)
    checkpoint = load_file(out / "last.safetensors")
    assert "rng.0.cuda" in checkpoint  # the GPU's generator state, saved for resuming
    trained = load_file(out / "rank0.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in trained.values() if tensor.is_floating_point())

    face = next((tmp_path / "faces").rglob("*.ply"))
    predict = [sys.executable, "-m", "affectvlm", "predict", str(out / "best.safetensors"), str(face), "--json"]
    on_gpu, on_cpu = (json.loads(run([*predict, "--device", device]).stdout)[0] for device in ("cuda", "cpu"))
    assert on_gpu["probabilities"].keys() == on_cpu["probabilities"].keys()
    for emotion, probability in on_cpu["probabilities"].items():
        assert on_gpu["probabilities"][emotion] == pytest.approx(probability, abs=1e-2), emotion
