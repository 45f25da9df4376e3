"""Mixed view augmentation: one random transform per view, sample flips that swap left and right, view mixing.

Augmenting a batch is two steps. `plan_augmentation` decides everything (pure numpy, no pixels): whether each
sample is mirrored, each view's affine (rotation and random resized crop), brightness and contrast, and which
batch row and view each output view is taken from. An augmenter then applies the plan to the pixels and
normalises for the CLIP image tower: `TorchAugmenter` (grid_sample, CPU or CUDA) or `DaliAugmenter` (an NVIDIA
DALI pipeline, CPU or GPU). Where the views are rendered per batch, the renderer draws the plan's sources,
flips and geometry instead (`affectvlm.data.views.render_augmented_views`) and the augmenter applies
`plan.colour_only()`. Both read the same plan, so the labels and sample ids that go with a batch do not
depend on the backend, and the pixels agree to interpolation rounding.

Semantics:
- The flip is drawn per sample, not per view: mirroring one view of a face while its neighbours stay unmirrored
  would show a face that is not the subject's. A flipped sample mirrors every view and swaps the views named
  "left" and "right", so the left view still shows the subject's left side (of the mirrored face). Views with
  other names ("frontal", "up", "down") keep their place.
- Rotation, crop, brightness and contrast are drawn per view.
- With probability `mix` a view is replaced by the same view of another valid sample in the batch with the same
  emotion (and the same intensity when the sample's intensity is known): a new multiview combination of one
  expression, so the sample's label stays right. Unlabelled samples and padding rows never mix, in either role.
- Every random number is a counter-based hash of (seed, epoch, sample id, view, draw), so a sample gets the
  same augmentation in an epoch whatever its batch position or batch mates (only the donor of a mixed view
  depends on who else is in the batch), and a resumed run draws what an uninterrupted one would have drawn.

Brightness b and contrast c act on each view x (after the geometry) as b * (m + c * (x - m)), with m the view's
mean over pixels and channels; no clipping, so colour and normalisation fold into one multiply-add per channel.
Geometry samples with zeros outside the image (the renderer's background is zero), bilinearly by default or from
the nearest pixel (`interpolation="nearest"`, as torchvision's RandomRotation does by default: on a CPU, DALI's
bilinear warp costs five times its nearest one). Views must be square (the renderer draws size x size), so a
rotation in normalised coordinates is a true rotation.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from affectvlm.data.draws import uniform
from affectvlm.data.memory import empty, take_rows

SWAPPED_BY_FLIP = {"left": "right", "right": "left"}

# Per-view draw counters.
_ROTATION, _CROP_SCALE, _CROP_RATIO, _CROP_X, _CROP_Y, _BRIGHTNESS, _CONTRAST, _MIX, _DONOR = range(9)
_VIEW_DRAWS = 9
INTERPOLATIONS = ("bilinear", "nearest")


@dataclass(frozen=True)
class AugmentSettings:
    """Strengths of the mixed view augmentation. `off()` is evaluation: identity geometry, no colour, no mixing."""

    flip: float = 0.5                           # probability of mirroring a sample (all its views, left <-> right)
    rotation: float = 10.0                      # degrees; each view turns by a uniform angle in [-rotation, rotation]
    crop_scale: tuple[float, float] = (0.8, 1.0)  # range of the crop's area as a fraction of the view
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # range of the crop's width / height (drawn log-uniformly)
    brightness: float = 0.2                     # multiplier drawn in [1 - brightness, 1 + brightness]
    contrast: float = 0.2                       # multiplier drawn in [1 - contrast, 1 + contrast]
    mix: float = 0.2                            # probability that a view comes from another sample of its class
    interpolation: str = "bilinear"             # how the geometry samples the view: bilinear or nearest

    def __post_init__(self):
        for name in ("flip", "mix"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"{name} must be a probability in [0, 1]", name, self)
        _require(0.0 <= self.rotation <= 180.0, "rotation must be in [0, 180] degrees", "rotation", self)
        for name in ("brightness", "contrast"):
            _require(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)", name, self)
        low, high = _pair(self.crop_scale, "crop_scale")
        _require(0.0 < low <= high <= 1.0, "crop_scale must satisfy 0 < low <= high <= 1", "crop_scale", self)
        low, high = _pair(self.crop_ratio, "crop_ratio")
        _require(0.0 < low <= high, "crop_ratio must satisfy 0 < low <= high", "crop_ratio", self)
        _require(self.interpolation in INTERPOLATIONS, f"interpolation must be one of {', '.join(INTERPOLATIONS)}",
                 "interpolation", self)
        object.__setattr__(self, "crop_scale", tuple(map(float, self.crop_scale)))
        object.__setattr__(self, "crop_ratio", tuple(map(float, self.crop_ratio)))

    @classmethod
    def off(cls) -> AugmentSettings:
        return cls(flip=0.0, rotation=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                   brightness=0.0, contrast=0.0, mix=0.0)

    def as_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def _require(condition: bool, message: str, name: str, settings: AugmentSettings) -> None:
    if not condition:
        raise ValueError(f"AugmentSettings: {message} (got {name}={getattr(settings, name)!r})")


def _pair(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"AugmentSettings: {name} must be a pair of numbers (got {value!r})") from None
    return low, high


@dataclass(frozen=True)
class AugmentPlan:
    """What to do to each output view of a batch of B samples with K views."""

    source: np.ndarray      # (B, K, 2) int64: the batch row and the view each output view is taken from
    affine: np.ndarray      # (B, K, 2, 3) float32: output -> input, normalised coordinates (align_corners=False)
    brightness: np.ndarray  # (B, K) float32 multiplier
    contrast: np.ndarray    # (B, K) float32 multiplier
    flipped: np.ndarray     # (B,) bool: the sample is mirrored (folded into `affine` and `source`)
    mixed: np.ndarray       # (B, K) bool: the output view comes from another sample
    interpolation: str      # how `affine` samples the view (INTERPOLATIONS)

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape[:2]

    def keeps_sources(self) -> bool:
        rows, views = np.indices(self.shape)
        return bool((self.source[..., 0] == rows).all() and (self.source[..., 1] == views).all())

    def keeps_geometry(self) -> bool:
        return bool((self.affine == _IDENTITY).all())

    def keeps_colour(self) -> bool:
        return bool((self.brightness == 1).all() and (self.contrast == 1).all())

    def is_identity(self) -> bool:
        return self.keeps_sources() and self.keeps_geometry() and self.keeps_colour()

    def colour_only(self) -> AugmentPlan:
        """This plan with its view sources, flips and geometry taken as done (by a renderer that drew each
        output view directly): what is left for an augmenter is the colour and the normalisation."""
        rows, views = np.indices(self.shape)
        return replace(self, source=np.stack([rows, views], axis=-1).astype(np.int64),
                       affine=np.broadcast_to(_IDENTITY, self.affine.shape).copy(),
                       flipped=np.zeros_like(self.flipped))


_IDENTITY = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)


def plan_augmentation(settings: AugmentSettings, seed: int, epoch: int, sample_ids, labels, intensity, valid,
                      view_names) -> AugmentPlan:
    """The augmentation of one batch: sample_ids, labels (-1 unlabelled), intensity (-1 unknown) and valid are
    per row (B,); view_names the K views in order. Random draws depend on (seed, epoch, sample id, view)."""
    sample_ids, labels, intensity, valid = _batch_columns(sample_ids, labels, intensity, valid)
    view_names = tuple(view_names)
    rows, views = len(sample_ids), len(view_names)
    if views == 0:
        raise ValueError("plan_augmentation: view_names is empty")
    if seed < 0 or epoch < 0:
        raise ValueError(f"plan_augmentation: seed and epoch must be >= 0 (got seed={seed}, epoch={epoch})")
    draws = uniform("augment", seed, epoch, sample_ids, views, _VIEW_DRAWS)          # (B, K, draws)
    flipped = uniform("flip", seed, epoch, sample_ids, 1, 1)[:, 0, 0] < settings.flip

    donor_rows, mixed_in_place = _donors(settings.mix, draws, sample_ids, labels, intensity, valid)
    swapped = np.array([view_names.index(SWAPPED_BY_FLIP[name]) if name in SWAPPED_BY_FLIP
                        and SWAPPED_BY_FLIP[name] in view_names else k for k, name in enumerate(view_names)])
    view_read = np.where(flipped[:, None], swapped[None, :], np.arange(views)[None, :])   # (B, K)
    row_read = np.take_along_axis(donor_rows, view_read, axis=1)
    source = np.stack([row_read, view_read], axis=-1).astype(np.int64)
    mixed = np.take_along_axis(mixed_in_place, view_read, axis=1)

    affine = _affines(settings, draws, flipped)
    brightness = 1.0 + (2.0 * draws[..., _BRIGHTNESS] - 1.0) * settings.brightness
    contrast = 1.0 + (2.0 * draws[..., _CONTRAST] - 1.0) * settings.contrast
    return AugmentPlan(source=source, affine=affine.astype(np.float32), brightness=brightness.astype(np.float32),
                       contrast=contrast.astype(np.float32), flipped=flipped, mixed=mixed,
                       interpolation=settings.interpolation)


def _batch_columns(sample_ids, labels, intensity, valid):
    columns = [np.asarray(sample_ids, dtype=np.int64).reshape(-1), np.asarray(labels, dtype=np.int64).reshape(-1),
               np.asarray(intensity, dtype=np.int64).reshape(-1), np.asarray(valid, dtype=bool).reshape(-1)]
    lengths = {len(column) for column in columns}
    if len(lengths) != 1:
        raise ValueError("plan_augmentation: sample_ids, labels, intensity and valid must have the same length "
                         f"(got {', '.join(str(len(c)) for c in columns)})")
    if (columns[0] < 0).any():
        raise ValueError("plan_augmentation: sample_ids must be >= 0")
    return columns


def _donors(mix: float, draws, sample_ids, labels, intensity, valid):
    """(B, K) batch row each view is read from before the flip, and whether that row is another sample."""
    rows, views = draws.shape[:2]
    donor_rows = np.repeat(np.arange(rows)[:, None], views, axis=1)
    wants = (draws[..., _MIX] < mix) & (valid & (labels >= 0))[:, None]
    # Candidates in sample-id order (first row of each id), so the choice does not depend on batch positions.
    order = np.lexsort((np.arange(rows), sample_ids))
    first = order[np.r_[True, sample_ids[order][1:] != sample_ids[order][:-1]]]
    for row in np.flatnonzero(wants.any(axis=1)):
        same = valid[first] & (labels[first] == labels[row]) & (sample_ids[first] != sample_ids[row])
        if intensity[row] >= 0:
            same &= intensity[first] == intensity[row]
        candidates = first[same]
        if len(candidates) == 0:
            wants[row] = False
            continue
        picks = (draws[row, :, _DONOR] * len(candidates)).astype(np.int64)
        donor_rows[row] = np.where(wants[row], candidates[picks], row)
    return donor_rows, wants


def _affines(settings: AugmentSettings, draws: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """(B, K, 2, 3) output -> input maps: mirror (if flipped), then rotate, then place inside the crop."""
    angle = np.deg2rad((2.0 * draws[..., _ROTATION] - 1.0) * settings.rotation)
    (scale_low, scale_high), (ratio_low, ratio_high) = settings.crop_scale, settings.crop_ratio
    area = scale_low + draws[..., _CROP_SCALE] * (scale_high - scale_low)
    ratio = np.exp(math.log(ratio_low) + draws[..., _CROP_RATIO] * (math.log(ratio_high) - math.log(ratio_low)))
    # Half-extents in normalised coordinates equal the crop's fraction of the view; a crop never leaves the view.
    width, height = np.minimum(np.sqrt(area * ratio), 1.0), np.minimum(np.sqrt(area / ratio), 1.0)
    centre_x = (2.0 * draws[..., _CROP_X] - 1.0) * (1.0 - width)
    centre_y = (2.0 * draws[..., _CROP_Y] - 1.0) * (1.0 - height)
    mirror = np.where(flipped, -1.0, 1.0)[:, None]
    cos, sin = np.cos(angle), np.sin(angle)
    affine = np.zeros(draws.shape[:2] + (2, 3))
    affine[..., 0, 0], affine[..., 0, 1], affine[..., 0, 2] = width * cos * mirror, -width * sin, centre_x
    affine[..., 1, 0], affine[..., 1, 1], affine[..., 1, 2] = height * sin * mirror, height * cos, centre_y
    return affine


class TorchAugmenter:
    """Applies a plan with torch: one gather, one grid_sample and one multiply-add over all B x K views."""

    def __init__(self, mean, std):
        self.mean, self.std = _channel_constants(mean, std)

    def __call__(self, views: torch.Tensor, plan: AugmentPlan, overwrite: bool = False) -> torch.Tensor:
        """The augmented, normalised views (B, K, 3, H, W) float32. overwrite: the caller lets go of `views`, so
        the result may be written over them."""
        _check_views(views, plan)
        batch, count, channels, height, width = views.shape
        flat = _gather(views, plan).to(torch.float32)
        if not plan.keeps_geometry():
            theta = torch.from_numpy(plan.affine).to(views.device).reshape(-1, 2, 3)
            flat = F.grid_sample(flat, affine_grid(theta, height, width), mode=plan.interpolation,
                                 padding_mode="zeros", align_corners=False)
        if plan.is_identity():
            mean, std = (values.to(flat.device).view(1, 3, 1, 1) for values in (self.mean, self.std))
            out = torch.sub(flat, mean, out=self._output(views, flat, overwrite)).div_(std)
        else:
            scale, shift = self._colour_and_normalise(plan, flat)
            out = torch.addcmul(shift, flat, scale, out=self._output(views, flat, overwrite))
        return out.view(batch, count, channels, height, width)

    @staticmethod
    def _output(views: torch.Tensor, flat: torch.Tensor, overwrite: bool) -> torch.Tensor | None:
        """Where the result goes: over `flat` where it is this call's own (gathered, converted or warped) or the
        caller's to lose; else into a buffer that is cheap to fill for the first time (affectvlm.data.memory: on a
        CPU, faulting in a fresh batch-sized tensor costs more than the arithmetic). None (a new tensor) where
        gradients flow through the views, as for explanations: autograd refuses out= arguments."""
        if _differentiated(flat):
            return None
        if overwrite or flat.data_ptr() != views.data_ptr():
            return flat
        return empty(flat.shape, device=flat.device)

    def _colour_and_normalise(self, plan: AugmentPlan, flat: torch.Tensor):
        """Per view and channel, scale and shift with (b * (m + c * (x - m)) - mean) / std = scale * x + shift."""
        device = flat.device
        b = torch.from_numpy(plan.brightness).to(device).view(-1, 1)
        c = torch.from_numpy(plan.contrast).to(device).view(-1, 1)
        m = flat.mean(dim=(1, 2, 3)).view(-1, 1) if not plan.keeps_colour() else torch.zeros_like(b)
        mean, std = self.mean.to(device).view(1, 3), self.std.to(device).view(1, 3)
        scale, shift = b * c / std, (b * (1 - c) * m - mean) / std
        return scale.view(-1, 3, 1, 1), shift.view(-1, 3, 1, 1)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """F.affine_grid(theta, (N, C, height, width), align_corners=False), computed as the sum of a per-column and a
    per-row term, which on a CPU takes a quarter of the time of affine_grid's batched matrix product."""
    columns = (2 * torch.arange(width, dtype=theta.dtype, device=theta.device) + 1) / width - 1
    rows = (2 * torch.arange(height, dtype=theta.dtype, device=theta.device) + 1) / height - 1
    along_columns = columns.view(1, -1, 1) * theta[:, None, :, 0]                          # (N, W, 2)
    along_rows = rows.view(1, -1, 1) * theta[:, None, :, 1] + theta[:, None, :, 2]          # (N, H, 2)
    grid = empty((len(theta), height, width, 2), dtype=theta.dtype, device=theta.device)
    return torch.add(along_rows[:, :, None, :], along_columns[:, None, :, :], out=grid)


def _channel_constants(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean.numel() != 3 or std.numel() != 3:
        raise ValueError(f"augmenter: mean and std need 3 values each (got {mean.numel()} and {std.numel()})")
    if not (std > 0).all():
        raise ValueError(f"augmenter: std must be positive (got {std.tolist()})")
    return mean, std


def _check_views(views: torch.Tensor, plan: AugmentPlan) -> None:
    if views.ndim != 5 or views.shape[2] != 3 or tuple(views.shape[:2]) != tuple(plan.shape):
        raise ValueError(f"augmenter: views must be (B, K, 3, H, W) with (B, K) = {tuple(plan.shape)} "
                         f"(got {tuple(views.shape)})")
    if views.shape[3] != views.shape[4]:
        raise ValueError(f"augmenter: views must be square (got {views.shape[3]} x {views.shape[4]})")
    if not views.is_floating_point():
        raise ValueError(f"augmenter: views must be floating point in [0, 1] (got {views.dtype})")


class DaliAugmenter:
    """Applies a plan with an NVIDIA DALI pipeline, on the CPU (`device="cpu"`, DALI's `device_id=None`) or on the
    GPU of `device` ("cuda", "cuda:1").

    One pipeline sample is one view, laid out FHWC with the three channels as frames and C = 1, so a torch view
    (3, H, W) enters without a copy. The graph: external_source (views and per-view parameters) -> warp_affine
    (the plan's interpolation, zeros outside; on the view transposed to HWC and back, see _build) ->
    reductions.mean (the view's mean for the contrast) -> brightness_contrast with per-channel (per-frame)
    multiplier and shift, which also does the normalisation. The inputs are fed with `run(**inputs)`: numpy on
    the CPU (the source views by reference, so mixing and flipping copy nothing), a dense CUDA tensor on the GPU.
    No external_source runs in parallel Python workers, so nothing is forked, before or after CUDA exists.
    """

    def __init__(self, mean, std, device="cpu", num_threads: int | None = None):
        self.mean, self.std = _channel_constants(mean, std)
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DaliAugmenter: device must be cpu or cuda (got {device})")
        self.num_threads = num_threads or max(1, torch.get_num_threads())
        self._pipelines = {}  # the warp's interpolation (None: no warp) -> (pipeline, capacity in views)

    def __call__(self, views: torch.Tensor, plan: AugmentPlan, overwrite: bool = False) -> torch.Tensor:
        """The augmented, normalised views (B, K, 3, H, W) float32, in DALI's own output buffer (`overwrite` is
        accepted for the torch augmenter's interface and changes nothing)."""
        _check_views(views, plan)
        if views.device.type != self.device.type:
            raise ValueError(f"DaliAugmenter: views are on {views.device} but the pipeline runs on {self.device}")
        batch, count, channels, height, width = views.shape
        # A renderer may have drawn the geometry already (plan.colour_only()): then nothing is warped.
        warp = None if plan.keeps_geometry() else plan.interpolation
        pipeline = self._pipeline_for(batch * count, warp)
        inputs = self._colour_inputs(plan)
        if warp:
            inputs["matrix"] = _pixel_matrices(plan.affine.reshape(-1, 2, 3), height, width)
        if self.device.type == "cpu":
            (out,) = pipeline.run(views=_source_views_numpy(views, plan), **inputs)
        else:
            stream = torch.cuda.current_stream(views.device)
            gathered = _gather(views, plan).to(torch.float32).unsqueeze(-1).contiguous()
            stream.synchronize()
            (out,) = pipeline.run(stream.cuda_stream, views=gathered, **inputs)
        # The dynamic executor hands its output buffers over (zero-copy), so the next run cannot overwrite them.
        return torch.from_dlpack(out.as_tensor()).view(batch, count, channels, height, width)

    def _colour_inputs(self, plan: AugmentPlan) -> dict:
        """With m the warped view's mean: out = scale * x + m * shift_per_mean + shift, per channel."""
        b, c = plan.brightness.reshape(-1, 1), plan.contrast.reshape(-1, 1)
        mean, std = self.mean.numpy()[None, :], self.std.numpy()[None, :]
        return dict(scale=(b * c / std).astype(np.float32), shift_per_mean=(b * (1 - c) / std).astype(np.float32),
                    shift=np.repeat((-mean / std).astype(np.float32), len(b), axis=0))

    def _pipeline_for(self, views: int, warp: str | None):
        pipeline, capacity = self._pipelines.get(warp, (None, 0))
        if pipeline is None or views > capacity:
            pipeline, capacity = self._build(views, warp), views
            self._pipelines[warp] = (pipeline, capacity)
        return pipeline

    def _build(self, capacity: int, warp: str | None):
        from nvidia.dali import fn, pipeline_def, types

        on_gpu = self.device.type == "cuda"
        where = "gpu" if on_gpu else "cpu"
        device_id = (self.device.index or 0) if on_gpu else None

        @pipeline_def(batch_size=capacity, num_threads=self.num_threads, device_id=device_id, exec_dynamic=True,
                      prefetch_queue_depth=1)
        def augmentation():
            views = fn.external_source(name="views", device=where, layout="FHWC", dtype=types.FLOAT,
                                       no_copy=not on_gpu)
            scale, shift_per_mean, shift = (fn.external_source(name=name, dtype=types.FLOAT)
                                            for name in ("scale", "shift_per_mean", "shift"))
            warped = views
            if warp:
                # Warped as one HWC image rather than three one-channel frames: DALI's CPU warp then finds each
                # source position once for all three channels, which more than pays for the two transposes
                # (benchmarks/RESULTS.md, "Fewer passes over memory").
                matrix = fn.external_source(name="matrix", dtype=types.FLOAT)
                pixels = fn.transpose(fn.squeeze(views, axis_names="C"), perm=[1, 2, 0], output_layout="HWC")
                interpolation = {"bilinear": types.INTERP_LINEAR, "nearest": types.INTERP_NN}[warp]
                pixels = fn.warp_affine(pixels, matrix=matrix, fill_value=0.0, interp_type=interpolation,
                                        device=where)
                warped = fn.expand_dims(fn.transpose(pixels, perm=[2, 0, 1], output_layout="FHW"), axes=[3],
                                        new_axis_names="C")
            view_mean = fn.reductions.mean(warped)
            # Argument inputs live on the CPU; the dynamic executor moves the GPU mean there.
            channel_shift = (view_mean.cpu() if on_gpu else view_mean) * shift_per_mean + shift
            return fn.brightness_contrast(warped, brightness=fn.per_frame(scale),
                                          brightness_shift=fn.per_frame(channel_shift), contrast_center=0.0,
                                          device=where)

        pipeline = augmentation()
        pipeline.build()
        return pipeline


def _pixel_matrices(affine: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (align_corners=False) output -> input maps as DALI's pixel maps (pixel centres at i + 0.5)."""
    to_normalised = np.array([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]])
    to_pixels = np.linalg.inv(to_normalised)
    square = np.concatenate([affine.astype(np.float64), np.broadcast_to([[[0, 0, 1]]], (len(affine), 1, 3))], 1)
    return np.ascontiguousarray((to_pixels @ square @ to_normalised)[:, :2], dtype=np.float32)


def _source_views_numpy(views: torch.Tensor, plan: AugmentPlan) -> list[np.ndarray]:
    """The view each output view starts from, as (3, H, W, 1) numpy arrays that share the source's memory."""
    pixels = views.to(torch.float32).contiguous().numpy()[..., None]
    return [pixels[row, view] for row, view in plan.source.reshape(-1, 2)]


def _gather(views: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    """(B * K, 3, H, W): the view each output view starts from."""
    batch, count = plan.shape
    flat = views.reshape(batch * count, *views.shape[2:])
    if plan.keeps_sources():
        return flat
    index = torch.from_numpy((plan.source[..., 0] * count + plan.source[..., 1]).reshape(-1)).to(views.device)
    return flat.index_select(0, index) if _differentiated(flat) else take_rows(flat, index)


def _differentiated(tensor: torch.Tensor) -> bool:
    """Whether autograd records operations on `tensor` (as for the app's explanations): it refuses out= then."""
    return tensor.requires_grad and torch.is_grad_enabled()


def make_augmenter(mean, std, backend: str = "auto", device="cpu"):
    """The augmenter for `backend`: "torch", "dali", or "auto" (DALI where it is installed, torch otherwise).
    `device` is where a DALI pipeline runs ("cpu" or "cuda[:N]"); the torch augmenter follows its input."""
    if backend not in ("auto", "dali", "torch"):
        raise ValueError(f"unknown augmentation backend '{backend}' (choose auto, dali or torch)")
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    if backend == "torch":
        return TorchAugmenter(mean, std)
    if not dali_available():
        raise ValueError("augmentation backend 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130); "
                         "use backend='torch' or 'auto'")
    return DaliAugmenter(mean, std, device)


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
