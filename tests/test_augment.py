"""Mixed view augmentation: the plan's semantics (flip, mixing, per-view draws, purity, ranges, settings) and both
augmenters against an independent numpy reference of the same plan."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from affectvlm.data.augment import AugmentSettings, TorchAugmenter, dali_available, make_augmenter, plan_augmentation

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
VIEWS = ("frontal", "left", "right")


def pixel_tolerance(size: int, backend: str = "torch") -> float:
    """How far a correct float32 bilinear warp of [0, 1] views may be from another after normalisation. Torch
    computes each sample position directly, off by a few ulps of its magnitude (up to `size` pixels): allow 16.
    DALI's CPU warp steps along each output row adding the matrix column to the position (warp_cpu.h), so its
    rounding accumulates over up to `size` steps of half an ulp each: allow size ulps of `size`. A bilinear value
    moves by at most the position error times the neighbour difference (<= 1) per axis, and normalisation
    divides by std (>= 0.26)."""
    ulps = size if backend == "dali" else 16
    position_error = ulps * np.finfo(np.float32).eps * size
    return 2 * position_error / min(STD)


def augmenter_for(backend: str, device="cpu"):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    return make_augmenter(MEAN, STD, backend=backend, device=device)


BACKENDS = ["torch", "dali"]


def batch(rows, seed=0, views=VIEWS, size=16):
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, rows)
    intensity = generator.integers(-1, 3, rows)
    valid = np.ones(rows, dtype=bool)
    sample_ids = generator.permutation(1000)[:rows]
    pixels = torch.from_numpy(generator.random((rows, len(views), 3, size, size), dtype=np.float32))
    return dict(sample_ids=sample_ids, labels=labels, intensity=intensity, valid=valid, view_names=views), pixels


def settings_with(**strengths) -> AugmentSettings:
    return dataclasses.replace(AugmentSettings.off(), **strengths)


def unnormalise(images: torch.Tensor) -> np.ndarray:
    return (images * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)).numpy()


def reference(views: np.ndarray, plan) -> np.ndarray:
    """The plan applied in float64 numpy: gather, bilinear or nearest sampling with zeros outside, colour,
    normalisation."""
    rows, count, channels, height, width = views.shape
    source = views[plan.source[..., 0], plan.source[..., 1]].reshape(rows * count, channels, height, width)
    affine = plan.affine.reshape(-1, 2, 3).astype(np.float64)
    v, u = np.meshgrid((2 * np.arange(height) + 1) / height - 1, (2 * np.arange(width) + 1) / width - 1,
                       indexing="ij")
    x = affine[:, 0, 0, None, None] * u + affine[:, 0, 1, None, None] * v + affine[:, 0, 2, None, None]
    y = affine[:, 1, 0, None, None] * u + affine[:, 1, 1, None, None] * v + affine[:, 1, 2, None, None]
    px, py = (x + 1) * width / 2 - 0.5, (y + 1) * height / 2 - 0.5
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    warped = np.zeros(source.shape)
    view = np.arange(rows * count)[:, None, None]
    if plan.interpolation == "nearest":
        x0, y0, px, py = np.rint(px).astype(int), np.rint(py).astype(int), np.rint(px), np.rint(py)
    for dx, dy in ((0, 0),) if plan.interpolation == "nearest" else ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        values = source[view, :, np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]   # (N, H, W, C)
        warped += np.moveaxis(values * (weight * inside)[..., None], -1, 1)
    m = warped.mean(axis=(1, 2, 3), keepdims=True)
    b, c = plan.brightness.reshape(-1, 1, 1, 1), plan.contrast.reshape(-1, 1, 1, 1)
    coloured = b * (m + c * (warped - m))
    normalised = (coloured - np.array(MEAN).reshape(3, 1, 1)) / np.array(STD).reshape(3, 1, 1)
    return normalised.reshape(views.shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_swaps_left_and_right_and_mirrors_every_view(backend):
    views = ("frontal", "left", "right", "up", "down")
    columns, pixels = batch(3, views=views)
    plan = plan_augmentation(settings_with(flip=1.0), 0, 0, **columns)
    assert plan.flipped.all()
    out = unnormalise(augmenter_for(backend)(pixels, plan))
    mirrored = pixels.flip(-1).numpy()
    for k, name in enumerate(views):
        read = {"left": 2, "right": 1}.get(name, k)
        np.testing.assert_allclose(out[:, k], mirrored[:, read], atol=1e-5)


def test_no_flip_keeps_every_view_in_place():
    columns, _ = batch(4)
    plan = plan_augmentation(settings_with(flip=0.0, rotation=30.0), 0, 0, **columns)
    assert not plan.flipped.any()
    assert plan.keeps_sources()
    assert (plan.affine[..., 0, 0] > 0).all()


def test_mixing_stays_within_emotion_and_intensity_and_skips_padding_and_unlabelled():
    columns, _ = batch(48, seed=1)
    columns["valid"][-6:] = False
    columns["labels"][:4] = -1
    plan = plan_augmentation(settings_with(mix=1.0), 3, 2, **columns)
    rows, views = np.indices(plan.shape)
    labels, intensity, valid = columns["labels"], columns["intensity"], columns["valid"]
    donor = plan.source[..., 0]
    mixed = donor != rows
    np.testing.assert_array_equal(mixed, plan.mixed)
    np.testing.assert_array_equal(plan.source[..., 1], views)     # no flips: a mixed view keeps its name
    assert valid[donor[mixed]].all()
    np.testing.assert_array_equal(labels[donor[mixed]], labels[rows[mixed]])
    known = mixed & (intensity[rows] >= 0)
    np.testing.assert_array_equal(intensity[donor[known]], intensity[rows[known]])
    assert (columns["sample_ids"][donor[mixed]] != columns["sample_ids"][rows[mixed]]).all()
    assert not mixed[~valid].any() and not mixed[labels < 0].any()
    # With mix = 1 every view of a labelled valid sample that has a partner in the batch is mixed.
    for row in np.flatnonzero(valid & (labels >= 0)):
        partners = valid & (labels == labels[row]) & (np.arange(48) != row)
        if intensity[row] >= 0:
            partners &= intensity == intensity[row]
        assert mixed[row].all() == partners.any()
    assert mixed.sum() > 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mixed_view_is_the_donors_view(backend):
    columns, pixels = batch(8, seed=2)
    columns["labels"][:] = 1
    columns["intensity"][:] = -1
    plan = plan_augmentation(settings_with(mix=0.5, flip=0.5), 0, 0, **columns)
    assert plan.mixed.any() and (~plan.mixed).any() and plan.flipped.any()
    out = unnormalise(augmenter_for(backend)(pixels, plan))
    donors = pixels.numpy()[plan.source[..., 0], plan.source[..., 1]]
    expected = np.where(plan.flipped[:, None, None, None, None], donors[..., ::-1], donors)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_mixing_probability_is_honoured():
    columns, _ = batch(400, seed=3)
    columns["intensity"][:] = -1
    plan = plan_augmentation(settings_with(mix=0.3), 0, 0, **columns)
    assert abs(plan.mixed.mean() - 0.3) < 0.03


def test_each_view_of_a_sample_gets_its_own_parameters():
    columns, _ = batch(16)
    plan = plan_augmentation(AugmentSettings(), 0, 0, **columns)
    for row in range(16):
        for a in range(3):
            for b in range(a + 1, 3):
                assert not np.allclose(plan.affine[row, a], plan.affine[row, b])
                assert plan.brightness[row, a] != plan.brightness[row, b]
                assert plan.contrast[row, a] != plan.contrast[row, b]


def test_draws_are_a_pure_function_of_seed_epoch_sample_and_view():
    settings = AugmentSettings(mix=0.0)
    columns, _ = batch(6)
    plan = plan_augmentation(settings, 7, 3, **columns)
    # The same samples in another order, beside other samples, with other labels: the same transforms.
    other = dict(columns, sample_ids=np.r_[[999_999, 123_456], columns["sample_ids"][::-1]],
                 labels=np.r_[[2, 2], columns["labels"][::-1] + 1], intensity=np.r_[[0, 0], columns["intensity"]],
                 valid=np.ones(8, dtype=bool))
    moved = plan_augmentation(settings, 7, 3, **other)
    for name in ("affine", "brightness", "contrast", "flipped"):
        np.testing.assert_array_equal(getattr(moved, name)[2:][::-1], getattr(plan, name))
    for seed, epoch in ((8, 3), (7, 4)):
        changed = plan_augmentation(settings, seed, epoch, **columns)
        assert not np.allclose(changed.affine, plan.affine)


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_is_deterministic_and_only_normalises(backend):
    columns, pixels = batch(4, seed=4)
    augmenter = augmenter_for(backend)
    plan = plan_augmentation(AugmentSettings.off(), 5, 9, **columns)
    assert plan.is_identity() and not plan.flipped.any() and not plan.mixed.any()
    first, second = augmenter(pixels, plan), augmenter(pixels, plan)
    expected = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.equal(first, second)
    if backend == "torch":
        assert torch.equal(first, expected)
    else:
        torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_augmenter_matches_the_reference(backend, dtype):
    columns, pixels = batch(5, seed=5, size=20)
    plan = plan_augmentation(AugmentSettings(rotation=25.0, crop_scale=(0.5, 0.9), mix=0.5), 1, 2, **columns)
    pixels = pixels.to(dtype)
    out = augmenter_for(backend)(pixels, plan)
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    expected = reference(pixels.float().numpy().astype(np.float64), plan)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=pixel_tolerance(20, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_colour_only_plan_changes_colour_alone_and_one_augmenter_serves_both_kinds(backend):
    """What the online source leaves an augmenter once the renderer has drawn the geometry; the same augmenter
    then takes full plans again (DALI keeps a pipeline with and one without the warp)."""
    columns, pixels = batch(6, seed=9, size=16)
    plan = plan_augmentation(AugmentSettings(mix=0.5, flip=0.5), 2, 3, **columns)
    colour = plan.colour_only()
    assert colour.keeps_sources() and colour.keeps_geometry() and not colour.flipped.any()
    np.testing.assert_array_equal(colour.brightness, plan.brightness)
    augmenter = augmenter_for(backend)
    for each in (colour, plan, colour):
        np.testing.assert_allclose(augmenter(pixels, each).numpy(), reference(pixels.numpy().astype(np.float64), each),
                                   rtol=0, atol=pixel_tolerance(16, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_interpolation_takes_each_pixel_from_the_nearest_source_pixel(backend):
    columns, pixels = batch(5, seed=11, size=20)
    settings = AugmentSettings(rotation=25.0, crop_scale=(0.5, 0.9), mix=0.5, brightness=0.0, contrast=0.0,
                               interpolation="nearest")
    plan = plan_augmentation(settings, 1, 2, **columns)
    assert plan.interpolation == "nearest" and not plan.keeps_geometry()
    out = augmenter_for(backend)(pixels, plan).numpy()
    expected = reference(pixels.numpy().astype(np.float64), plan)
    # A sample position within rounding error of halfway between two pixels may round either way.
    agree = np.isclose(out, expected, rtol=0, atol=1e-5).mean()
    assert agree > 0.995, f"{agree:.4f} of the pixels are the nearest source pixel's"


def test_torch_and_dali_agree_on_random_views():
    pytest.importorskip("nvidia.dali")
    columns, pixels = batch(8, seed=6, size=32)
    plan = plan_augmentation(AugmentSettings(rotation=20.0), 4, 1, **columns)
    torch_out = augmenter_for("torch")(pixels, plan)
    dali_out = augmenter_for("dali")(pixels, plan)
    torch.testing.assert_close(dali_out, torch_out, rtol=0, atol=pixel_tolerance(32, "dali"))


def test_parameters_stay_within_their_ranges():
    settings = AugmentSettings(flip=0.3, rotation=15.0, crop_scale=(0.5, 0.8), crop_ratio=(0.8, 1.25),
                               brightness=0.1, contrast=0.3)
    columns, _ = batch(500, seed=7)
    plan = plan_augmentation(settings, 0, 0, **columns)
    a = plan.affine.astype(np.float64)
    mirror = np.where(plan.flipped, -1.0, 1.0)[:, None]
    width, height = np.hypot(a[..., 0, 0], a[..., 0, 1]), np.hypot(a[..., 1, 0], a[..., 1, 1])
    angle = np.degrees(np.arctan2(-a[..., 0, 1] / width, a[..., 1, 1] / height))
    np.testing.assert_allclose(a[..., 1, 0] * mirror / height, -a[..., 0, 1] / width, atol=1e-6)  # a rotation
    checks = {"angle": (angle, -15, 15), "area": (width * height, 0.5, 0.8), "ratio": (width / height, 0.8, 1.25),
              "brightness": (plan.brightness, 0.9, 1.1), "contrast": (plan.contrast, 0.7, 1.3)}
    for name, (values, low, high) in checks.items():
        assert low - 1e-5 <= values.min() and values.max() <= high + 1e-5, name
        assert values.min() < low + 0.1 * (high - low) and values.max() > high - 0.1 * (high - low), name
    assert (np.abs(a[..., 0, 2]) + width <= 1 + 1e-6).all() and (np.abs(a[..., 1, 2]) + height <= 1 + 1e-6).all()
    assert abs(plan.flipped.mean() - 0.3) < 0.06


@pytest.mark.parametrize("strengths, field", [
    (dict(flip=-0.1), "flip"), (dict(flip=1.5), "flip"), (dict(mix=-0.01), "mix"), (dict(mix=2.0), "mix"),
    (dict(rotation=-5.0), "rotation"), (dict(brightness=1.0), "brightness"), (dict(contrast=-0.2), "contrast"),
    (dict(crop_scale=(0.5, 1.2)), "crop_scale"), (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
    (dict(crop_scale=(0.0, 0.5)), "crop_scale"), (dict(crop_ratio=(1.2, 0.8)), "crop_ratio"),
    (dict(crop_ratio=(0.5,)), "crop_ratio"), (dict(crop_ratio="wide"), "crop_ratio"),
    (dict(interpolation="bicubic"), "interpolation"),
])
def test_bad_settings_are_one_line_errors(strengths, field):
    with pytest.raises(ValueError, match=field) as error:
        AugmentSettings(**strengths)
    assert "\n" not in str(error.value)


def test_bad_batches_are_one_line_errors():
    columns, pixels = batch(4)
    with pytest.raises(ValueError, match="same length"):
        plan_augmentation(AugmentSettings(), 0, 0, **dict(columns, labels=columns["labels"][:3]))
    with pytest.raises(ValueError, match="view_names"):
        plan_augmentation(AugmentSettings(), 0, 0, **dict(columns, view_names=()))
    with pytest.raises(ValueError, match="seed"):
        plan_augmentation(AugmentSettings(), -1, 0, **columns)
    plan = plan_augmentation(AugmentSettings(), 0, 0, **columns)
    augmenter = TorchAugmenter(MEAN, STD)
    with pytest.raises(ValueError, match=r"\(B, K, 3, H, W\)"):
        augmenter(pixels[:3], plan)
    with pytest.raises(ValueError, match="square"):
        augmenter(pixels[..., :8], plan)
    with pytest.raises(ValueError, match="floating point"):
        augmenter((pixels * 255).to(torch.uint8), plan)
    with pytest.raises(ValueError, match="std"):
        TorchAugmenter(MEAN, (0.2, 0.0, 0.2))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_augmenter_on_cuda_matches_the_reference(backend):
    columns, pixels = batch(6, seed=8, size=24)
    plan = plan_augmentation(AugmentSettings(rotation=20.0), 0, 0, **columns)
    on_gpu = augmenter_for(backend, device="cuda")(pixels.cuda().half(), plan)
    assert on_gpu.is_cuda and on_gpu.dtype == torch.float32
    expected = reference(pixels.half().float().numpy().astype(np.float64), plan)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), expected, rtol=0, atol=pixel_tolerance(24, backend))


def test_auto_backend_is_dali_where_installed_and_bad_backends_are_errors():
    expected = "DaliAugmenter" if dali_available() else "TorchAugmenter"
    assert type(make_augmenter(MEAN, STD)).__name__ == expected
    with pytest.raises(ValueError, match="backend 'opencv'"):
        make_augmenter(MEAN, STD, backend="opencv")


def test_dali_pipeline_serves_batches_of_any_size():
    augmenter = augmenter_for("dali")
    for rows in (2, 5, 3):
        columns, pixels = batch(rows, seed=rows, size=12)
        plan = plan_augmentation(AugmentSettings(), 0, 0, **columns)
        np.testing.assert_allclose(augmenter(pixels, plan).numpy(), reference(pixels.numpy().astype(np.float64), plan),
                                   rtol=0, atol=pixel_tolerance(12, "dali"))
    with pytest.raises(ValueError, match="on cpu"):
        augmenter(pixels.to("meta"), plan)


def test_settings_round_trip_through_a_dict():
    settings = AugmentSettings(rotation=math.pi, crop_scale=[0.6, 0.9])
    assert AugmentSettings(**settings.as_dict()) == settings
    assert settings.crop_scale == (0.6, 0.9)


@pytest.mark.parametrize("settings", [AugmentSettings.off(), AugmentSettings(), AugmentSettings(mix=0.0, flip=0.0)],
                         ids=["identity", "default", "no-mixing"])
def test_torch_augmenter_writes_over_the_views_only_when_let(settings):
    augmenter = augmenter_for("torch")
    columns, pixels = batch(6, seed=10, size=12)
    plan = plan_augmentation(settings, 3, 1, **columns)
    original = pixels.clone()
    for each in (plan, plan.colour_only()):
        kept = augmenter(pixels, each)
        assert torch.equal(pixels, original)  # the caller's views are untouched
        given_up = pixels.clone()
        overwritten = augmenter(given_up, each, overwrite=True)
        assert torch.equal(overwritten, kept)
        if each.keeps_sources() and each.keeps_geometry():  # nothing was gathered or warped into new memory
            assert overwritten.data_ptr() == given_up.data_ptr()


def test_gradients_flow_through_the_torch_augmenter():
    """Explanations differentiate through it, so it never writes in place where gradients flow: its gradient is
    that of the documented formula (b * (m + c * (x - m)) - mean) / std, m the view's mean."""
    columns, pixels = batch(4, seed=11, size=10)
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (MEAN, STD))
    for plan in (plan_augmentation(AugmentSettings.off(), 0, 0, **columns),
                 plan_augmentation(AugmentSettings(), 0, 0, **columns).colour_only()):
        views, reference = pixels.clone().requires_grad_(), pixels.clone().requires_grad_()
        augmenter_for("torch")(views, plan, overwrite=True).sum().backward()
        b, c = (torch.from_numpy(values)[..., None, None, None] for values in (plan.brightness, plan.contrast))
        m = reference.mean(dim=(2, 3, 4), keepdim=True)
        ((b * (m + c * (reference - m)) - mean) / std).sum().backward()
        assert views.grad is not None and views.grad.std() > 0
        torch.testing.assert_close(views.grad, reference.grad, rtol=1e-5, atol=1e-6)


def test_dali_output_survives_the_next_batch():
    augmenter = augmenter_for("dali")
    columns, pixels = batch(4, seed=9, size=12)
    plan = plan_augmentation(AugmentSettings(), 0, 0, **columns)
    first = augmenter(pixels, plan)
    kept = first.clone()
    augmenter(torch.rand_like(pixels), plan)
    assert torch.equal(first, kept)
