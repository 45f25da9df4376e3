"""The training data pipeline: batches of augmented, CLIP-normalised multiview images with their labels.

Two sources give the views of a batch, (B, K, 3, H, W) in [0, 1], behind one interface:
- `CachedViews`: the render cache written by `affectvlm render` (the model's three input channels per view,
  memory-mapped .npy shards of many samples each);
- `OnlineViews`: the mesh cache written by `affectvlm render --meshes`, rendered per batch on the training
  device from cameras and lights jittered per sample and per view (`affectvlm.data.views`), so every epoch
  sees new views of every face; on a GPU the views never leave it.
`ViewPipeline` turns either into `Batch`es: the DDP shard and order of each epoch (`EpochOrder`), the mixed view
augmentation (`affectvlm.data.augment`: planned in numpy, applied by NVIDIA DALI or by torch), normalisation,
and the labels. For online views the renderer draws the plan's geometry itself (each output view from its
source sample's mesh, through a camera mirrored for a flipped sample and with the rotation and crop folded into
the projection: `affectvlm.data.views.render_augmented_views`), so a flipped face is the mirrored face, normals
included, nothing is resampled, and the augmenter is left the colour. Every random choice is a pure function of
(seed, epoch, sample, view), so `epoch(e, start_step)` resumes exactly, and every rank agrees on the order
without talking.

Read path (why not a DALI reader). DALI's `fn.readers.numpy` reads one array per file, with its own sharding and
a shuffle buffer (or a reshuffle after each epoch from DALI's internal state). Our shards hold hundreds of
samples each, so reading a sample would need its own file (60,000 x 3 views of 224^2 = 60,000 files) or an ROI
per sample, and DALI's shuffle cannot give the contract the trainer needs: a permutation that is a function of
(seed, epoch), identical on every rank, padded with masked rows so that ranks take equal steps, and that can
start at any (epoch, step). So the samples are chosen by `EpochOrder`, gathered from the memory-mapped shards
(a copy from the page cache) and handed to DALI through `external_source` (`DaliAugmenter`: numpy on the CPU,
a CUDA tensor on the GPU). The gather runs one batch ahead in a thread, overlapped with the augmentation and the
training step; it does not use DALI's parallel `external_source` (Python worker processes) because a worker
would return each sample through shared memory (one more copy of the bytes the gather just copied), the
workers must be started before CUDA is touched (they fork by default) or spawned (a second import of torch per
worker), and on the 2-core machines this runs on they would compete with DALI's own threads for the same cores.
Online views need no reader at all: the mesh cache is read in microseconds and the rasteriser releases the GIL.

Placement: `device="auto"` runs on the first GPU when CUDA and the compiled CUDA kernels are usable, and on the
CPU otherwise (DALI with `device_id=None`). Nothing here forks a process, so no worker can hang or inherit a
CUDA context.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from affectvlm.data.augment import AugmentPlan, AugmentSettings, make_augmenter, plan_augmentation
from affectvlm.data.cache import INDEX_FILE, CacheError
from affectvlm.data.datasets import Sample
from affectvlm.data.draws import uniform
from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.face_template import template_eyes
from affectvlm.data.mesh_cache import FORMAT as MESH_CACHE_FORMAT
from affectvlm.data.mesh_cache import MeshCache
from affectvlm.data.memory import empty
from affectvlm.data.sharding import EpochOrder
from affectvlm.data.views import (DEFAULT_RECIPE, CameraJitter, check_recipe, jittered_cameras,
                                  render_augmented_views, render_model_views)
from affectvlm.geometry.cameras import DEFAULT_VIEWS
from affectvlm.geometry.mesh import faces_away_from
from affectvlm.geometry.normalise import UNRECORDED_POSE

# The CLIP image tower's normalisation (open_clip.constants.OPENAI_DATASET_MEAN / _STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Batch:
    images: torch.Tensor     # (B, K, 3, H, W) float32, CLIP-normalised, on the pipeline's device
    labels: torch.Tensor     # (B,) int64 index into affectvlm.data.emotions.EMOTIONS; -1 unlabelled
    intensity: torch.Tensor  # (B,) int64; -1 unknown
    subjects: torch.Tensor   # (B,) int64 index into pipeline.subjects
    sample_ids: torch.Tensor  # (B,) int64 index into pipeline.samples
    valid: torch.Tensor      # (B,) bool; False on padding rows
    sequences: torch.Tensor  # (B,) int64 index into pipeline.sequence_names; -1 for static scans
    frames: torch.Tensor     # (B,) int64; -1 for static scans
    epoch: int
    step: int


def resolve_device(device) -> torch.device:
    """"auto": the current GPU when CUDA and the package's CUDA kernels are usable, else the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    from affectvlm._ext import cuda_status

    usable = torch.cuda.is_available() and cuda_status().usable
    return torch.device("cuda", torch.cuda.current_device()) if usable else torch.device("cpu")


class CachedViews:
    """Views read from a render cache folder. `views`, `size`, `recipe` and `pose`, when given, are what the
    caller expects; a cache rendered otherwise is refused. Sample paths are relative to the rendered dataset folder."""

    def __init__(self, cache_dir: str | Path, *, views=None, size: int | None = None, recipe: str | None = None,
                 pose: str | None = None):
        self.path = Path(cache_dir)
        index_path = self.path / INDEX_FILE
        try:
            index = json.loads(index_path.read_text())
            settings, entries = index["settings"], index["samples"]
            self.recipe, self.image_size = settings["recipe"], settings["size"]
            self.view_names = tuple(settings["views"])
            self.pose = settings.get("pose", UNRECORDED_POSE)
            self.samples = [Sample(Path(e["file"]), e["subject"], e["emotion"], e["intensity"], e["sequence"],
                                   e["frame"]) for e in entries]
            locations = np.array([[e["shard"], e["row"]] for e in entries], dtype=np.int64).reshape(-1, 2)
        except FileNotFoundError:
            raise CacheError(f"{index_path}: missing (not a render cache folder)") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CacheError(f"{index_path}: unreadable or not a render cache index ({error!r})") from None
        if self.recipe is None:
            raise CacheError(f"{index_path}: holds raw channels {settings.get('channels')}, not model views; "
                             "render it again without --channels")
        expected = {"views": tuple(views.split(",") if isinstance(views, str) else views) if views else None,
                    "size": size, "recipe": recipe, "pose": pose}
        actual = {"views": self.view_names, "size": self.image_size, "recipe": self.recipe, "pose": self.pose}
        for name, value in expected.items():
            if value is not None and value != actual[name]:
                raise CacheError(f"{index_path}: rendered with {name} {actual[name]}, not the {value} asked for")
        self.dtype = np.dtype(settings["dtype"])
        self._shards = [self._open(shard) for shard in index["shards"]]
        self._shard_of, self._row_of = locations[:, 0], locations[:, 1]

    def _open(self, shard: dict) -> np.ndarray:
        path = self.path / shard["file"]
        shape = (shard["rows"], len(self.view_names), 3, self.image_size, self.image_size)
        try:
            # Copy-on-write, so that torch can read its rows (`views`) without warning of a read-only array;
            # nothing writes to them.
            array = np.load(path, mmap_mode="c")
        except FileNotFoundError:
            raise CacheError(f"{path}: missing render cache shard; run affectvlm render again to finish it") from None
        except (OSError, ValueError, EOFError) as error:
            raise CacheError(f"{path}: truncated or unreadable render cache shard ({error}); run affectvlm render "
                             "again to redo it") from None
        if array.shape != shape or array.dtype != self.dtype:
            raise CacheError(f"{path}: holds {array.dtype} {array.shape}, the index says {self.dtype} {shape}")
        return array

    def views(self, sample_ids, epoch: int = 0, seed: int = 0, augment: bool = True,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, K, 3, H, W) in [0, 1] on the CPU, converted to `dtype` as they are gathered (float16 keeps the
        cache's bytes, e.g. for the copy to a GPU). torch converts: numpy's float16 conversion takes 5x as long."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        out = empty((len(sample_ids), len(self.view_names), 3, self.image_size, self.image_size), dtype=dtype)
        for position, sample in enumerate(sample_ids):
            out[position].copy_(torch.from_numpy(self._shards[self._shard_of[sample]][self._row_of[sample]]))
        return out


class OnlineViews:
    """Views rendered per batch from a mesh cache folder, with cameras and lights jittered by `jitter` in
    training (`augment=True`) and at the presets otherwise. `pose`, when given, is the pose normalisation the
    caller expects the cache's meshes to have had. `eye_holes`: the probability that a training face is drawn
    with holes at both eyes, as scanners lose them (the template's eye positions, so only for meshes registered
    to it; the radius 0.75-1.25 times 12 mm, the centres moved up to 0.15 of it)."""

    def __init__(self, mesh_cache_dir: str | Path, views=DEFAULT_VIEWS, size: int = 224, recipe: str = DEFAULT_RECIPE,
                 jitter: CameraJitter = CameraJitter(), device="auto", *, projection: str = "perspective",
                 pose: str | None = None, eye_holes: float = 0.0):
        self.meshes = MeshCache(mesh_cache_dir)
        self.samples, self.pose = self.meshes.samples, self.meshes.pose
        if pose is not None and pose != self.pose:
            raise CacheError(f"{self.meshes.path}: meshes normalised with pose {self.pose}, not the {pose} asked for")
        self.view_names = tuple(views.split(",")) if isinstance(views, str) else tuple(views)
        self.image_size, self.recipe, self.jitter = size, check_recipe(recipe), jitter
        self.projection = projection
        self.device = resolve_device(device)
        jittered_cameras(self.view_names, jitter, 0, 0, [0], projection=projection)  # checks names and ranges
        if not 0.0 <= eye_holes <= 1.0:
            raise ValueError(f"eye holes: a probability in [0, 1], got {eye_holes}")
        if eye_holes > 0 and self.pose != "template":
            raise ValueError(f"eye holes need faces registered to the template (pose template); {self.meshes.path} "
                             f"holds pose {self.pose}")
        self.eye_holes = eye_holes
        self._faces_on_device: tuple[int | None, torch.Tensor | None] = (None, None)

    def views(self, sample_ids, epoch: int = 0, seed: int = 0, augment: bool = True,
              plan: AugmentPlan | None = None) -> torch.Tensor:
        """(B, K, 3, H, W) float32 in [0, 1] on the source's device. With a `plan`, its view sources, flips,
        rotations and crops are drawn by the renderer (`render_augmented_views`); its colour is left to an
        augmenter (`plan.colour_only()`)."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        holes = self._eye_holes(sample_ids, epoch, seed) if augment else {}
        topologies = {self.meshes.topology(i) for i in sample_ids}
        if not holes and len(topologies) == 1:
            vertices, faces = self._stacked_meshes(sample_ids, topologies.pop())
        else:
            meshes = [self.meshes.load(i) for i in sample_ids]
            meshes = [_without_holes(*mesh, *holes[i]) if i in holes else mesh
                      for i, mesh in zip(sample_ids.tolist(), meshes)]
            vertices = [torch.from_numpy(v).to(self.device) for v, _ in meshes]
            faces = [torch.from_numpy(f).to(self.device) for _, f in meshes]
        jitter = self.jitter if augment else CameraJitter.none()
        cameras, light = jittered_cameras(self.view_names, jitter, seed, epoch, sample_ids, projection=self.projection)
        if plan is not None and not (plan.keeps_sources() and plan.keeps_geometry()):
            return render_augmented_views(vertices, faces, cameras, light, plan, self.image_size, self.recipe)
        return render_model_views(vertices, faces, cameras.to(self.device), self.image_size, self.recipe,
                                  light.to(self.device))

    def _stacked_meshes(self, sample_ids: np.ndarray, topology: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices (B, V, 3) of samples of one topology, copied from the mesh cache into one batch buffer, and
        their faces; on the source's device. The faces of the last topology stay there for the next batch."""
        if self._faces_on_device[0] != topology:
            self._faces_on_device = (topology, torch.from_numpy(self.meshes.faces(topology)).to(self.device))
        num_vertices = self.meshes.vertex_count(sample_ids[0])
        vertices = empty((len(sample_ids), num_vertices, 3))
        self.meshes.vertices(sample_ids, out=vertices.numpy())
        return vertices.to(self.device), self._faces_on_device[1]

    def _eye_holes(self, sample_ids: np.ndarray, epoch: int, seed: int) -> dict:
        """Sample id -> (hole centres (2, 3), radius) for the samples drawn to lose their eyes; the draws are a
        pure function of (seed, epoch, sample)."""
        if self.eye_holes == 0:
            return {}
        eyes = template_eyes()
        draws = uniform("eye-holes", seed, epoch, sample_ids, 1, 4)[:, 0]
        return {int(i): (eyes.centres + np.r_[x - 0.5, y - 0.5, 0.0] * 0.3 * eyes.hole_radius,
                         eyes.hole_radius * (0.75 + 0.5 * size))
                for i, (chosen, size, x, y) in zip(sample_ids, draws) if chosen < self.eye_holes}


def _without_holes(vertices: np.ndarray, faces: np.ndarray, centres: np.ndarray, radius: float):
    return vertices, np.ascontiguousarray(faces[faces_away_from(vertices, faces, centres, radius)])


def open_views(path: str | Path, **options) -> CachedViews | OnlineViews:
    """The source for a folder: a mesh cache gives `OnlineViews(path, **options)`, a render cache
    `CachedViews(path, **options)` (where options are what the cache is expected to hold)."""
    index_path = Path(path) / INDEX_FILE
    try:
        kind = json.loads(index_path.read_text()).get("format")
    except FileNotFoundError:
        raise CacheError(f"{index_path}: missing (neither a render cache nor a mesh cache folder)") from None
    except (OSError, ValueError, AttributeError) as error:
        raise CacheError(f"{index_path}: unreadable ({error})") from None
    if kind == MESH_CACHE_FORMAT:
        return OnlineViews(path, **options)
    return CachedViews(path, **options)


class ViewPipeline:
    """Batches of one rank's shard of each epoch, augmented in training (`training=False`: the samples in
    order, no augmentation, no camera jitter). `subset`: the sample indices to draw from (a training split);
    batches still name samples by their index in `samples`. `backend`: the augmenter ("auto": DALI where
    installed, torch otherwise); `device`: where images end up ("auto", see `resolve_device`)."""

    def __init__(self, source: CachedViews | OnlineViews, batch_size: int, *, seed: int = 0, num_shards: int = 1,
                 shard_id: int = 0, augment: AugmentSettings = AugmentSettings(), training: bool = True,
                 backend: str = "auto", device="auto", mean=OPENAI_MEAN, std=OPENAI_STD, subset=None):
        self.source, self.seed, self.training = source, seed, training
        self.samples: list[Sample] = source.samples
        self.subset = self._check_subset(subset)
        self.order = EpochOrder(len(self.subset), batch_size, num_shards, shard_id, seed, shuffle=training)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.augment = augment if training else AugmentSettings.off()
        self.device = resolve_device(device)
        self.backend, self.mean, self.std = backend, tuple(mean), tuple(std)
        self.augmenter = make_augmenter(mean, std, backend, device=self.device)
        self.subjects = sorted({s.subject for s in self.samples})
        self.sequence_names = sorted({s.sequence for s in self.samples if s.sequence is not None})
        self._columns = self._label_columns()

    def _check_subset(self, subset) -> np.ndarray:
        if subset is None:
            return np.arange(len(self.samples))
        subset = np.asarray(subset, dtype=np.int64).reshape(-1)
        if len(subset) == 0:
            raise ValueError("ViewPipeline: subset is empty")
        if subset.min() < 0 or subset.max() >= len(self.samples):
            raise ValueError(f"ViewPipeline: subset holds indices outside the source's {len(self.samples)} samples")
        if len(np.unique(subset)) != len(subset):
            raise ValueError("ViewPipeline: subset lists a sample twice")
        return subset

    def _label_columns(self) -> dict[str, np.ndarray]:
        subject_index = {name: i for i, name in enumerate(self.subjects)}
        sequence_index = {name: i for i, name in enumerate(self.sequence_names)}

        def column(values) -> np.ndarray:
            return np.array(list(values), dtype=np.int64)

        return {"labels": column(EMOTIONS.index(s.emotion) if s.emotion else -1 for s in self.samples),
                "intensity": column(-1 if s.intensity is None else s.intensity for s in self.samples),
                "subjects": column(subject_index[s.subject] for s in self.samples),
                "sequences": column(-1 if s.sequence is None else sequence_index[s.sequence] for s in self.samples),
                "frames": column(-1 if s.frame is None else s.frame for s in self.samples)}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from `start_step` on; the source's views of the next batch are read in a
        thread while this one is augmented and used."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside the epoch's {self.steps_per_epoch} steps")
        steps = range(start_step, self.steps_per_epoch)
        if not steps:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="affectvlm-views") as reader:
            pending = reader.submit(self._read, epoch, steps[0])
            for step in steps:
                ids, valid, plan, views = pending.result()
                if step + 1 < self.steps_per_epoch:
                    pending = reader.submit(self._read, epoch, step + 1)
                yield self._assemble(epoch, step, ids, valid, plan, views)

    def _read(self, epoch: int, step: int):
        positions, valid = self.order.batch(epoch, step)
        ids = self.subset[positions]
        plan = plan_augmentation(self.augment, self.seed, epoch, ids, self._columns["labels"][ids],
                                 self._columns["intensity"][ids], valid, self.source.view_names)
        if isinstance(self.source, OnlineViews):  # the renderer draws the plan's geometry, without resampling
            views = self.source.views(ids, epoch, self.seed, augment=self.training, plan=plan)
            plan = plan.colour_only()
        elif self.device.type == "cuda":
            views = self.source.views(ids, dtype=torch.float16).pin_memory()  # half the bytes to copy
        else:
            views = self.source.views(ids)
        return ids, valid, plan, views.to(self.device, non_blocking=True)

    def _assemble(self, epoch: int, step: int, ids: np.ndarray, valid: np.ndarray, plan: AugmentPlan,
                  views: torch.Tensor) -> Batch:
        columns = {name: values[ids] for name, values in self._columns.items()}
        images = self.augmenter(views, plan, overwrite=True)  # the views were read for this batch alone

        def on_device(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values).to(self.device)

        return Batch(images=images, sample_ids=on_device(ids), valid=on_device(valid), epoch=epoch, step=step,
                     **{name: on_device(values) for name, values in columns.items()})

    def settings(self) -> dict:
        """What this pipeline reads and does, as JSON-able data (stored with checkpoints)."""
        source = {"kind": type(self.source).__name__, "views": list(self.source.view_names),
                  "size": self.source.image_size, "recipe": self.source.recipe, "pose": self.source.pose}
        if isinstance(self.source, OnlineViews):
            source.update(path=str(self.source.meshes.path), jitter=self.source.jitter.as_dict(),
                          projection=self.source.projection, eye_holes=self.source.eye_holes)
        else:
            source.update(path=str(self.source.path))
        return {"source": source, "batch_size": self.order.batch_size, "seed": self.seed,
                "num_shards": self.order.num_shards, "shard_id": self.order.shard_id, "training": self.training,
                "augment": self.augment.as_dict(), "backend": type(self.augmenter).__name__,
                "device": str(self.device), "mean": list(self.mean), "std": list(self.std),
                "num_samples": int(len(self.subset))}
