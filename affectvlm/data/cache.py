"""The render cache: a dataset folder rendered into multiview images, stored as .npy shards with an index.

Layout of a cache folder:
- `index.json`: the render settings, the shards (file name and row count) and one entry per sample (its
  file relative to the dataset folder, labels, shard and row);
- `shard-00000.npy`, ...: arrays (n, K, C, H, W) of float16 (default) or float32, n <= shard size, K views.
  By default C = 3: the model's input channels made by an image recipe (`affectvlm.data.views`), which is
  what training reads; with raw `channels` instead, C is the rasteriser channels in the order of the
  settings' `channel_layout` (for inspection, or other uses of the views).

Rendering is resumable: the index is written first, and each shard is written to a temporary file then
renamed, so a shard file that exists is complete unless damaged afterwards. A rerun skips shards whose
header and size match, and renders again any that are missing, truncated or unreadable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from affectvlm.data.datasets import Sample, index_dataset, load_sample
from affectvlm.data.views import DEFAULT_RECIPE, IMAGE_RECIPES, check_recipe, render_model_views
from affectvlm.geometry.cameras import DEFAULT_VIEWS, view_cameras
from affectvlm.geometry.normalise import DEFAULT_POSE, POSES
from affectvlm.ops.raster import channel_layout, render_views

INDEX_FILE = "index.json"
DTYPES = ("float16", "float32")


class CacheError(ValueError):
    """A cache folder that cannot be written or resumed; the message says why."""


@dataclass(frozen=True)
class RenderSettings:
    """What a cache holds: the model's three input channels made by `recipe` (the default, DEFAULT_RECIPE when
    neither is given), or the raw rasteriser `channels`; not both."""

    views: tuple[str, ...] = DEFAULT_VIEWS
    size: int = 224
    recipe: str | None = None
    channels: tuple[str, ...] | None = None
    dtype: str = "float16"
    projection: str = "perspective"
    layout: str = "auto"  # of the dataset folder, as index_dataset reads it
    pose: str = DEFAULT_POSE  # pose normalisation, see affectvlm.geometry.normalise.POSES

    def __post_init__(self):
        if self.recipe is not None and self.channels is not None:
            raise CacheError("a cache holds either an image recipe or raw channels, not both")
        if self.pose not in POSES:
            raise CacheError(f"unknown pose normalisation '{self.pose}' (choose from {', '.join(POSES)})")
        if self.channels is None:
            object.__setattr__(self, "recipe", check_recipe(self.recipe or DEFAULT_RECIPE))
        else:
            object.__setattr__(self, "channels", tuple(self.channels))
            channel_layout(self.channels)  # checks the names

    @property
    def num_channels(self) -> int:
        if self.recipe is not None:
            return 3
        return sum(s.stop - s.start for s in channel_layout(self.channels).values())

    def as_dict(self) -> dict:
        settings = {**asdict(self), "views": list(self.views), "num_channels": self.num_channels}
        if self.recipe is not None:
            return {**settings, "image_channels": IMAGE_RECIPES[self.recipe]}
        layout = channel_layout(self.channels)
        return {**settings, "channels": list(self.channels),
                "channel_layout": {name: [s.start, s.stop] for name, s in layout.items()}}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def plan_index(data: Path, samples: list[Sample], settings: RenderSettings, shard_size: int) -> dict:
    entries, shards = [], []
    for first in range(0, len(samples), shard_size):
        shards.append({"file": shard_name(len(shards)), "rows": len(samples[first:first + shard_size])})
    for i, sample in enumerate(samples):
        entries.append({"file": sample.path.relative_to(data).as_posix(), "subject": sample.subject,
                        "emotion": sample.emotion, "intensity": sample.intensity, "sequence": sample.sequence,
                        "frame": sample.frame, "shard": i // shard_size, "row": i % shard_size})
    return {"settings": settings.as_dict(), "shards": shards, "samples": entries}


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _start_index(out: Path, planned: dict) -> None:
    index_path = out / INDEX_FILE
    if index_path.exists():
        try:
            existing = json.loads(index_path.read_text())
        except (OSError, ValueError) as error:
            raise CacheError(f"{index_path}: unreadable ({error}); delete it to start again") from error
        if existing != planned:
            raise CacheError(f"{out} holds a render of other data or settings; choose another --out or empty it")
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(index_path, lambda path: path.write_text(json.dumps(planned, indent=1)))


def shard_is_complete(path: Path, shape: tuple[int, ...], dtype: str) -> bool:
    """Whether `path` holds a whole array of this shape and dtype (header read, size checked)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return array.shape == shape and array.dtype == np.dtype(dtype)


def _render_batch(samples: list[Sample], settings: RenderSettings, device: str) -> torch.Tensor:
    meshes = [load_sample(sample, settings.pose) for sample in samples]
    cameras = view_cameras(settings.views, projection=settings.projection)
    vertices = [torch.from_numpy(m.vertices).to(device) for m in meshes]
    if all(np.array_equal(m.faces, meshes[0].faces) for m in meshes):
        vertices, faces = torch.stack(vertices), torch.from_numpy(meshes[0].faces).to(device)
    else:
        faces = [torch.from_numpy(m.faces).to(device) for m in meshes]
    if settings.recipe is not None:
        return render_model_views(vertices, faces, cameras, settings.size, settings.recipe)
    return render_views(vertices, faces, cameras, settings.size, settings.channels)


@dataclass(frozen=True)
class RenderOutcome:
    index: dict  # what index.json holds
    shards_reused: int  # shards already complete from an earlier run, left as they were


def render_dataset(data: str | Path, out: str | Path, settings: RenderSettings = RenderSettings(), device: str = "cpu",
                   shard_size: int = 256, batch_size: int = 32,
                   on_samples: Callable[[int], None] | None = None) -> RenderOutcome:
    """Render every sample of the dataset folder `data` into the cache folder `out`.
    Shards already complete are skipped. `on_samples(n)` is called as n more samples are done."""
    if settings.dtype not in DTYPES:
        raise CacheError(f"unknown dtype '{settings.dtype}' (choose from {', '.join(DTYPES)})")
    if shard_size < 1 or batch_size < 1:
        raise CacheError("shard size and batch size must be at least 1")
    data, out = Path(data), Path(out)
    samples = index_dataset(data, settings.layout)
    if not samples:
        raise CacheError(f"{data}: no samples to render")
    on_samples = on_samples or (lambda count: None)
    index = plan_index(data, samples, settings, shard_size)
    _start_index(out, index)
    reused = 0
    for number, shard in enumerate(index["shards"]):
        rows = samples[number * shard_size:number * shard_size + shard["rows"]]
        shape = (len(rows), len(settings.views), settings.num_channels, settings.size, settings.size)
        path = out / shard["file"]
        if shard_is_complete(path, shape, settings.dtype):
            on_samples(len(rows))
            reused += 1
            continue
        parts = []
        for first in range(0, len(rows), batch_size):
            parts.append(_render_batch(rows[first:first + batch_size], settings, device).cpu())
            on_samples(len(parts[-1]))
        array = torch.cat(parts).numpy().astype(settings.dtype)
        _write_atomically(path, lambda temporary: _save_npy(temporary, array))
    return RenderOutcome(index, reused)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, array)


def load_index(out: str | Path) -> dict:
    return json.loads((Path(out) / INDEX_FILE).read_text())
