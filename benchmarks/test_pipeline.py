"""The data pipeline end to end: samples per second of 3 views of 224^2 in batches of 64, augmented with the
default settings and CLIP-normalised, each case pulling batches from a running stream of epochs (reading,
rendering where online, augmentation, labels). A round pulls 3 batches after a warm-up round of 3, so that
every case runs in its steady state (prefetch queues drained): samples/s = 192 / time per round.

Group `pipeline-64x3-224`:
- `cached_dali_cpu`: ViewPipeline over the render cache, DALI augmentation on the CPU (`device_id=None`);
- `cached_torch`: the same with the torch augmenter (the fallback where DALI is missing);
- `cached_nearest_dali_cpu` / `cached_nearest_torch`: the same sampling the geometry from the nearest pixel
  (`AugmentSettings(interpolation="nearest")`) rather than bilinearly;
- `online_dali_cpu` / `online_torch`: mesh cache -> views rendered with camera and light jitter -> augmentation;
- `online_scans_torch`: the same over faces that each have their own topology (their triangles listed from
  another start), as scans of different people do: each batch renders 64 meshes of different faces arrays;
- `dataloader_torchvision_v2`: the peer, a plain torch DataLoader (2 worker processes, the machine's cores)
  over the same memory-mapped render cache, one sample per __getitem__, with torchvision v2 transforms per view
  (RandomResizedCrop, RandomRotation, ColorJitter, Normalize; the flip per sample, swapping left and right);
  no view mixing. Two cases: `[nearest]` rotates with torchvision's default interpolation, `[bilinear]` as the
  package's augmenters do (they sample crop and rotation bilinearly, in one warp).
Group `mesh-load`: `MeshCache.load` of one mesh against reading the same mesh from its PLY file (`load_sample`).
On a GPU (`cuda`) the DALI pipeline and the online renderer run there too.

The augmentation step alone is benchmarked in benchmarks/test_augment.py.
"""

import itertools
import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from affectvlm.data import index_dataset, load_sample
from affectvlm.data.augment import AugmentSettings, dali_available
from affectvlm.data.cache import RenderSettings, render_dataset
from affectvlm.data.mesh_cache import MeshCache, build_mesh_cache
from affectvlm.data.pipeline import OPENAI_MEAN, OPENAI_STD, CachedViews, OnlineViews, ViewPipeline
from affectvlm.data.synthetic import generate_dataset
from affectvlm.geometry import Mesh
from affectvlm.geometry.io import load_mesh, save_mesh

BATCH, SIZE, BATCHES_PER_ROUND = 64, 224, 3
needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
pipeline_group = pytest.mark.benchmark(group=f"pipeline-{BATCH}x3-{SIZE}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A 6-subject synthetic dataset (150 faces of 21k triangles), its render cache and its mesh cache."""
    root = tmp_path_factory.mktemp("pipeline-bench")
    generate_dataset(root / "data", subjects=6, seed=0, file_format="ply")
    render_dataset(root / "data", root / "views", RenderSettings(size=SIZE), batch_size=64)
    build_mesh_cache(root / "data", root / "meshes")
    return root


@pytest.fixture(scope="module")
def scan_meshes(folders):
    """The mesh cache of the same faces, each with a topology of its own (its faces rolled by a different count)."""
    scans = shutil.copytree(folders / "data", folders / "scans")
    for i, sample in enumerate(index_dataset(scans)):
        mesh = load_mesh(sample.path)
        save_mesh(sample.path, Mesh(mesh.vertices, np.roll(mesh.faces, i + 1, axis=0)))
    return build_mesh_cache(scans, folders / "scan-meshes").path


def pull_batches(benchmark, stream):
    """Time pulling BATCHES_PER_ROUND batches from an endless stream, in 5 rounds (the machines this runs on are
    shared VMs: with fewer, one slow round moves the median)."""
    benchmark.extra_info["samples"] = BATCH * BATCHES_PER_ROUND
    benchmark.pedantic(lambda: [next(stream) for _ in range(BATCHES_PER_ROUND)], rounds=5, iterations=1,
                       warmup_rounds=1)


def run_batches(benchmark, pipeline: ViewPipeline):
    def synchronised():
        for epoch in itertools.count():
            for batch in pipeline.epoch(epoch):
                if batch.images.is_cuda:
                    torch.cuda.synchronize()
                yield batch

    pull_batches(benchmark, synchronised())


# Each source with each augmentation backend and device; ids read like the RESULTS rows (cached_torch, ...).
BACKENDS = [
    pytest.param("dali", "cpu", marks=needs_dali, id="dali_cpu"),
    pytest.param("torch", "cpu", id="torch"),
    pytest.param("dali", "cuda", marks=[needs_dali, pytest.mark.cuda], id="dali_cuda"),
    pytest.param("torch", "cuda", marks=[pytest.mark.cuda], id="torch_cuda"),
]


@pipeline_group
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_cached(benchmark, folders, backend, device):
    pipeline = ViewPipeline(CachedViews(folders / "views"), BATCH, backend=backend, device=device)
    run_batches(benchmark, pipeline)


@pipeline_group
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_cached_nearest(benchmark, folders, backend, device):
    pipeline = ViewPipeline(CachedViews(folders / "views"), BATCH, augment=AugmentSettings(interpolation="nearest"),
                            backend=backend, device=device)
    run_batches(benchmark, pipeline)


@pipeline_group
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_online(benchmark, folders, backend, device):
    source = OnlineViews(folders / "meshes", size=SIZE, device=device)
    run_batches(benchmark, ViewPipeline(source, BATCH, backend=backend, device=device))


@pipeline_group
@pytest.mark.parametrize("backend, device", [param for param in BACKENDS if param.values[0] == "torch"])
def test_online_scans(benchmark, scan_meshes, backend, device):
    source = OnlineViews(scan_meshes, size=SIZE, device=device)
    run_batches(benchmark, ViewPipeline(source, BATCH, backend=backend, device=device))


class CachedSampleDataset(torch.utils.data.Dataset):
    """One sample per item from the memory-mapped render cache, transformed view by view with torchvision v2."""

    def __init__(self, folder, rotation: v2.InterpolationMode):
        self.folder = folder
        self.source = None  # opened in each worker, so no memory map crosses a fork
        self.flip = v2.RandomHorizontalFlip(p=1.0)
        self.per_view = v2.Compose([v2.RandomResizedCrop(SIZE, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=False),
                                    v2.RandomRotation(10.0, interpolation=rotation),
                                    v2.ColorJitter(brightness=0.2, contrast=0.2),
                                    v2.Normalize(OPENAI_MEAN, OPENAI_STD)])
        self.labels = [sample.emotion for sample in CachedViews(folder).samples]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if self.source is None:
            self.source = CachedViews(self.folder)
        views = self.source.views([index])[0].float()
        if torch.rand(()) < 0.5:
            views = self.flip(views[[0, 2, 1]])  # frontal, left, right: the mirror swaps left and right
        return torch.stack([self.per_view(view) for view in views]), index


@pipeline_group
@pytest.mark.parametrize("rotation", [v2.InterpolationMode.NEAREST, v2.InterpolationMode.BILINEAR],
                         ids=["nearest", "bilinear"])
def test_dataloader_torchvision_v2(benchmark, folders, rotation):
    loader = torch.utils.data.DataLoader(CachedSampleDataset(folders / "views", rotation), batch_size=BATCH,
                                         shuffle=True, num_workers=2, persistent_workers=True, drop_last=True)
    pull_batches(benchmark, itertools.chain.from_iterable(itertools.repeat(loader)))


@pytest.mark.benchmark(group="mesh-load")
def test_mesh_cache_load(benchmark, folders):
    cache = MeshCache(folders / "meshes")
    indices = itertools.cycle(range(len(cache)))
    benchmark(lambda: cache.load(next(indices)))


@pytest.mark.benchmark(group="mesh-load")
def test_load_sample_from_ply(benchmark, folders):
    samples = itertools.cycle(index_dataset(folders / "data"))
    benchmark.pedantic(lambda: load_sample(next(samples)), rounds=20, iterations=1)
