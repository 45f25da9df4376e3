"""Why DALI's CPU augmentation of the render cache trails the DataLoader peer of benchmarks/test_pipeline.py: the
geometric warp, operator by operator, against torch's and torchvision's for the same batch.

One batch of 64 samples x 3 views of 224^2 from the render cache of the generated faces, the default augmentation
plan; each line is the median over 10 runs after 2 warm-ups of wall time and of the process's CPU time (all its
threads). DALI runs on the CPU with 2 threads, torch with its default threads; the torchvision lines are the
peer's per-view transforms over the 192 views in one thread, the work its DataLoader workers share.

    python benchmarks/profile_warp.py
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nvidia.dali import fn, pipeline_def, types
from torchvision.transforms import v2

from affectvlm.data.augment import (AugmentSettings, DaliAugmenter, TorchAugmenter, _pixel_matrices, affine_grid,
                                    plan_augmentation)
from affectvlm.data.cache import RenderSettings, render_dataset
from affectvlm.data.pipeline import OPENAI_MEAN, OPENAI_STD, CachedViews
from affectvlm.data.synthetic import generate_dataset

BATCH, SIZE, REPEATS, DALI_THREADS = 64, 224, 10, 2


def median_ms(stage) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(REPEATS + 2):
        started, started_cpu = time.perf_counter(), time.process_time()
        stage()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return 1e3 * statistics.median(wall[2:]), 1e3 * statistics.median(cpu[2:])


def dali_stage(graph, inputs: dict):
    """A CPU pipeline of one graph over the batch's views, run on `inputs`."""

    @pipeline_def(batch_size=BATCH * 3, num_threads=DALI_THREADS, device_id=None, exec_dynamic=True,
                  prefetch_queue_depth=1)
    def pipeline():
        return graph(**{name: fn.external_source(name=name, layout=layout, dtype=types.FLOAT, no_copy=True)
                        for name, (layout, _) in inputs.items()})

    built = pipeline()
    built.build()
    return lambda: built.run(**{name: data for name, (_, data) in inputs.items()})


def warp(interp):
    return lambda views, matrix: fn.warp_affine(views, matrix=matrix, fill_value=0.0, interp_type=interp)


def main() -> None:
    root = Path(tempfile.mkdtemp())
    generate_dataset(root / "data", subjects=6, seed=0, file_format="ply")
    render_dataset(root / "data", root / "views", RenderSettings(size=SIZE), batch_size=64)
    cached = CachedViews(root / "views")
    ids = np.arange(BATCH) % len(cached.samples)
    plan = plan_augmentation(AugmentSettings(), 0, 0, ids, np.arange(BATCH) % 6, np.full(BATCH, 3),
                             np.ones(BATCH, dtype=bool), cached.view_names)
    views = cached.views(ids)
    flat = views.reshape(-1, 3, SIZE, SIZE)
    frames = list(flat.numpy()[..., None])                                      # (3, H, W, 1): what DALI is fed
    hwc = [np.ascontiguousarray(view.transpose(1, 2, 0)) for view in flat.numpy()]
    matrix = ("", _pixel_matrices(plan.affine.reshape(-1, 2, 3), SIZE, SIZE))
    theta = torch.from_numpy(plan.affine).reshape(-1, 2, 3)
    grid = affine_grid(theta, SIZE, SIZE)
    peers = {name: v2.Compose([v2.RandomResizedCrop(SIZE, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=False),
                               v2.RandomRotation(10.0, interpolation=mode),
                               v2.ColorJitter(brightness=0.2, contrast=0.2), v2.Normalize(OPENAI_MEAN, OPENAI_STD)])
             for name, mode in (("nearest", v2.InterpolationMode.NEAREST),
                                ("bilinear", v2.InterpolationMode.BILINEAR))}

    dali, torch_augmenter = DaliAugmenter(OPENAI_MEAN, OPENAI_STD), TorchAugmenter(OPENAI_MEAN, OPENAI_STD)

    def one_thread(stage):
        def run():
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                stage()
            finally:
                torch.set_num_threads(threads)
        return run

    stages = {
        "DaliAugmenter, the whole augmentation (as the pipeline runs it)":
            lambda: dali(views, plan),
        "DALI: the two transposes around the warp (frames -> HWC -> frames)": dali_stage(
            lambda views: fn.transpose(fn.transpose(fn.squeeze(views, axis_names="C"), perm=[1, 2, 0]),
                                       perm=[2, 0, 1]), {"views": ("FHWC", frames)}),
        "DALI: warp_affine, bilinear, HWC float (the augmenter's)": dali_stage(
            warp(types.INTERP_LINEAR), {"views": ("HWC", hwc), "matrix": matrix}),
        "DALI: warp_affine, bilinear, three one-channel frames": dali_stage(
            warp(types.INTERP_LINEAR), {"views": ("FHWC", frames), "matrix": matrix}),
        "DALI: warp_affine, nearest, HWC float": dali_stage(
            warp(types.INTERP_NN), {"views": ("HWC", hwc), "matrix": matrix}),
        "DALI: reductions.mean + brightness_contrast (colour, normalisation)": dali_stage(
            lambda views: fn.brightness_contrast(views, brightness=1.1, brightness_shift=fn.reductions.mean(views),
                                                 contrast_center=0.0), {"views": ("FHWC", frames)}),
        "torch: TorchAugmenter, the whole augmentation": lambda: torch_augmenter(views, plan),
        "torch: grid_sample alone, bilinear, the same warps": lambda: F.grid_sample(flat, grid, align_corners=False),
        **{f"torchvision v2 per view, rotation {name}, 192 views in one thread": one_thread(
            lambda peer=peer: [peer(view) for view in flat]) for name, peer in peers.items()},
    }
    print(f"batch {BATCH} x 3 views at {SIZE}^2 (192 views); median of {REPEATS}: wall ms, CPU ms (all threads)")
    for name, stage in stages.items():
        wall, cpu = median_ms(stage)
        print(f"{wall:8.1f} {cpu:8.1f}  {name}")


if __name__ == "__main__":
    main()
