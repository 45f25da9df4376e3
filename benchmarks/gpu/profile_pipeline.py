"""Where a batch of the data pipeline spends its time, stage by stage, on the device given (default cuda):
64 samples of 3 views at 224^2 from the generated faces of benchmarks/test_pipeline.py, each stage synchronised
and timed alone (median of 10 batches after 3 warm-ups), then the whole pipeline stream for comparison.

    python benchmarks/gpu/profile_pipeline.py [cuda|cpu]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from affectvlm.data.augment import AugmentSettings, make_augmenter, plan_augmentation
from affectvlm.data.cache import RenderSettings, render_dataset
from affectvlm.data.mesh_cache import build_mesh_cache
from affectvlm.data.pipeline import OPENAI_MEAN, OPENAI_STD, CachedViews, OnlineViews, ViewPipeline
from affectvlm.data.synthetic import generate_dataset
from affectvlm.data.views import CameraJitter, jittered_cameras, render_model_views

BATCH, SIZE, REPEATS = 64, 224, 10


def median_ms(stage, device) -> float:
    times = []
    for repeat in range(REPEATS + 3):
        started = time.perf_counter()
        stage(repeat)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times[3:])


def main(device: torch.device) -> None:
    def pinned(tensor):
        return tensor.pin_memory() if device.type == "cuda" else tensor

    root = Path(tempfile.mkdtemp())
    generate_dataset(root / "data", subjects=6, seed=0, file_format="ply")
    render_dataset(root / "data", root / "views", RenderSettings(size=SIZE), batch_size=64)
    build_mesh_cache(root / "data", root / "meshes")
    online = OnlineViews(root / "meshes", size=SIZE, device=device)
    cached = CachedViews(root / "views")
    ids = np.arange(BATCH) % len(online.samples)
    cameras, light = jittered_cameras(online.view_names, CameraJitter(), 0, 0, ids)
    vertices = torch.from_numpy(online.meshes.vertices(ids)).to(device)
    faces = torch.from_numpy(online.meshes.faces(online.meshes.topology(0))).to(device)
    views = render_model_views(vertices, faces, cameras.to(device), SIZE, online.recipe, light.to(device))
    augmenter = make_augmenter(OPENAI_MEAN, OPENAI_STD, "torch", device=device)
    columns = {"labels": np.arange(BATCH) % 6, "intensity": np.full(BATCH, 3), "valid": np.ones(BATCH, dtype=bool)}

    def plan(repeat):
        return plan_augmentation(AugmentSettings(), 0, repeat, ids, columns["labels"], columns["intensity"],
                                 columns["valid"], online.view_names)

    stages = {
        "online: load 64 meshes one by one (MeshCache.load)": lambda r: [online.meshes.load(i) for i in ids],
        "online: copy 64 meshes' vertices into one buffer, to the device": lambda r: torch.from_numpy(
            online.meshes.vertices(ids)).to(device),
        "online: jittered cameras and lights": lambda r: jittered_cameras(online.view_names, CameraJitter(), 0, r, ids),
        "online: render 64 x 3 views": lambda r: render_model_views(vertices, faces, cameras.to(device), SIZE,
                                                                    online.recipe, light.to(device)),
        "online: all of the source's views(), no augmentation": lambda r: online.views(ids, r),
        "online: views() drawing the augmentation's geometry": lambda r: online.views(ids, r, plan=plan(r)),
        "cached: read 64 x 3 views (float16) from the cache": lambda r: cached.views(ids, dtype=torch.float16),
        "cached: read, pin, copy to the device": lambda r: pinned(cached.views(ids, dtype=torch.float16)).to(
            device, non_blocking=True),
        "augment: plan": plan,
        "augment: augmenter on the views (cached source)": lambda r: augmenter(views, plan(r)),
        "augment: augmenter, colour only (online source)": lambda r: augmenter(views, plan(r).colour_only()),
    }
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; batch {BATCH} x 3 views "
          f"at {SIZE}^2; median of {REPEATS}")
    for name, stage in stages.items():
        print(f"{median_ms(stage, device):9.2f} ms  {name}")
    for label, source in (("online", online), ("cached", cached)):
        pipeline = ViewPipeline(source, BATCH, backend="torch", device=device)
        stream = (batch for epoch in range(100) for batch in pipeline.epoch(epoch))
        print(f"{median_ms(lambda r: next(stream), device):9.2f} ms  pipeline stream, {label} (per batch)")
    if device.type == "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as profile:
            for r in range(3):
                augmenter(online.views(ids, r, plan=plan(r)), plan(r).colour_only())
            torch.cuda.synchronize()
        print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
