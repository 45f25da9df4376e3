"""The augmentation step alone: one batch of 64 samples x 3 views of 224 x 224 in [0, 1], augmented with the
default settings (flip, rotation, random resized crop, brightness/contrast, view mixing) and CLIP-normalised.

Group `augment-64x3-224`, per batch (views/s = 192 / time):
- `torch`: TorchAugmenter (one gather, one grid_sample, one multiply-add over all 192 views);
- `dali_cpu`: DaliAugmenter on the CPU (`device_id=None`) with 1 and 2 threads;
- `torchvision_v2_per_view`: the peer, torchvision.transforms.v2 (RandomResizedCrop, RandomRotation,
  ColorJitter, Normalize; the flip per sample) applied to each view in a Python loop, as a Dataset's
  __getitem__ would; no view mixing;
- `plan`: plan_augmentation alone, the numpy part both backends share;
- `evaluation_torch`: AugmentSettings.off(), i.e. normalisation only.
On a GPU the torch and DALI augmenters run on the device too (`*_cuda`), on CUDA tensors.
The end-to-end pipeline (reading, rendering, DataLoader peer) is benchmarked in benchmarks/test_pipeline.py.
"""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from affectvlm.data.augment import AugmentSettings, DaliAugmenter, TorchAugmenter, dali_available, plan_augmentation

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
ROWS, VIEWS, SIZE = 64, ("frontal", "left", "right"), 224
SETTINGS = AugmentSettings()
needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
pytestmark = pytest.mark.benchmark(group=f"augment-{ROWS}x{len(VIEWS)}-{SIZE}")


def columns(epoch=0):
    generator = np.random.default_rng(epoch)
    return dict(sample_ids=generator.permutation(10_000)[:ROWS], labels=generator.integers(0, 7, ROWS),
                intensity=np.full(ROWS, -1), valid=np.ones(ROWS, dtype=bool), view_names=VIEWS)


@pytest.fixture(scope="module")
def views():
    return torch.rand(ROWS, len(VIEWS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def run(benchmark, augment, views, settings=SETTINGS):
    plan = plan_augmentation(settings, 0, 0, **columns())
    benchmark.extra_info["views"] = ROWS * len(VIEWS)
    out = benchmark.pedantic(lambda: augment(views, plan), rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == views.shape


def test_plan(benchmark):
    batch = columns()
    benchmark.pedantic(lambda: plan_augmentation(SETTINGS, 0, 0, **batch), rounds=20, iterations=1)


def test_torch(benchmark, views):
    run(benchmark, TorchAugmenter(MEAN, STD), views)


@needs_dali
@pytest.mark.parametrize("threads", [1, 2])
def test_dali_cpu(benchmark, views, threads):
    run(benchmark, DaliAugmenter(MEAN, STD, "cpu", num_threads=threads), views)


def test_evaluation_torch(benchmark, views):
    run(benchmark, TorchAugmenter(MEAN, STD), views, AugmentSettings.off())


def test_torchvision_v2_per_view(benchmark, views):
    per_view = v2.Compose([
        v2.RandomResizedCrop(SIZE, scale=SETTINGS.crop_scale, ratio=SETTINGS.crop_ratio, antialias=False),
        v2.RandomRotation(SETTINGS.rotation, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=SETTINGS.brightness, contrast=SETTINGS.contrast),
        v2.Normalize(MEAN, STD),
    ])
    flips = torch.rand(ROWS) < SETTINGS.flip

    def augment(batch, plan):
        samples = []
        for row, sample in enumerate(batch):
            sample = sample.flip(-1)[[0, 2, 1]] if flips[row] else sample
            samples.append(torch.stack([per_view(view) for view in sample]))
        return torch.stack(samples)

    run(benchmark, augment, views)


@pytest.mark.cuda
def test_torch_cuda(benchmark, views):
    on_gpu = views.cuda()
    augmenter = TorchAugmenter(MEAN, STD)
    run(benchmark, lambda batch, plan: synchronised(augmenter(batch, plan)), on_gpu)


@pytest.mark.cuda
@needs_dali
def test_dali_cuda(benchmark, views):
    on_gpu = views.cuda()
    augmenter = DaliAugmenter(MEAN, STD, "cuda")
    run(benchmark, lambda batch, plan: synchronised(augmenter(batch, plan)), on_gpu)


def synchronised(result: torch.Tensor) -> torch.Tensor:
    torch.cuda.synchronize()
    return result
