"""The model's input views: image recipes against the rasteriser's own channels, jittered cameras."""

import math

import numpy as np
import pytest
import torch

from affectvlm.data import index_dataset, load_sample
from affectvlm.data.views import (IMAGE_RECIPES, CameraJitter, default_light, jittered_cameras,
                                  render_model_views)
from affectvlm.geometry.cameras import view_cameras
from affectvlm.ops.raster import render_views

VIEWS = "frontal,left,right,up"
PRESETS = [(0.0, 0.0), (45.0, 0.0), (-45.0, 0.0), (0.0, 30.0)]  # (yaw, pitch) of VIEWS


@pytest.fixture(scope="module")
def faces_of_one_topology(static_dataset):
    meshes = [load_sample(sample) for sample in index_dataset(static_dataset)[:2]]
    return torch.from_numpy(np.stack([m.vertices for m in meshes])), torch.from_numpy(meshes[0].faces)


def test_recipes_are_the_rasteriser_channels_in_the_unit_range(faces_of_one_topology):
    vertices, faces = faces_of_one_topology
    raw = render_views(vertices, faces, view_cameras(VIEWS), 40, ("shading", "depth", "normal", "mask"))
    shading, depth, normal, mask = raw[:, :, 0:1], raw[:, :, 1:2], raw[:, :, 2:5], raw[:, :, 5:6]
    expected = {"shading": shading.expand(-1, -1, 3, -1, -1),
                "shading_depth_normal": torch.cat([shading, depth, (normal[:, :, 2:] + 1) / 2 * mask], dim=2),
                "normal": (normal + 1) / 2 * mask}
    assert set(IMAGE_RECIPES) == set(expected)
    for recipe, reference in expected.items():
        images = render_model_views(vertices, faces, view_cameras(VIEWS), 40, recipe)
        assert images.shape == (2, 4, 3, 40, 40) and images.dtype == torch.float32, recipe
        assert images.min() >= 0 and images.max() <= 1, recipe
        assert (images * (1 - mask) == 0).all(), recipe  # background 0
        torch.testing.assert_close(images, reference, atol=2e-6, rtol=0, msg=recipe)


def test_a_light_per_view_shades_each_view_as_the_rasteriser_does_with_that_light(faces_of_one_topology):
    vertices, faces = faces_of_one_topology
    lights = torch.nn.functional.normalize(torch.randn(2, 4, 3) + torch.tensor([0.0, 0.0, 2.0]), dim=-1)
    images = render_model_views(vertices, faces, view_cameras(VIEWS), 32, "shading", light=lights)
    for b in range(2):
        for k in range(4):
            reference = render_views(vertices[b], faces, view_cameras(VIEWS), 32, ("shading",),
                                     light=tuple(lights[b, k].tolist()))[0, k, 0]
            torch.testing.assert_close(images[b, k, 0], reference, atol=2e-6, rtol=0)
    default = render_model_views(vertices, faces, view_cameras(VIEWS), 32, "shading")
    assert torch.equal(default, render_model_views(vertices, faces, view_cameras(VIEWS), 32, "shading",
                                                   light=default_light().expand(2, 4, 3)))


def test_bad_recipe_and_light_are_named(faces_of_one_topology):
    vertices, faces = faces_of_one_topology
    with pytest.raises(ValueError, match="unknown image recipe 'rgb'"):
        render_model_views(vertices, faces, view_cameras(), 16, "rgb")
    with pytest.raises(ValueError, match=r"light must be a \(B, K, 3\)"):
        render_model_views(vertices, faces, view_cameras(), 16, light=torch.ones(3))


def test_no_jitter_gives_exactly_the_presets_and_the_default_light():
    cameras, light = jittered_cameras(VIEWS, CameraJitter.none(), seed=3, epoch=7, sample_ids=[4, 0, 9])
    presets = view_cameras(VIEWS)
    assert cameras.world_to_view.shape == (3, 4, 4, 4)
    assert torch.equal(cameras.world_to_view, presets.world_to_view.expand(3, -1, -1, -1))
    assert torch.equal(cameras.projection, presets.projection.expand(3, -1, -1, -1))
    assert torch.equal(light, default_light().expand(3, 4, 3))


def camera_pose(world_to_view):
    """(yaw, pitch, distance, roll) in degrees of a rigid world_to_view, and how far off the origin it looks."""
    rotation, translation = world_to_view[:3, :3].double(), world_to_view[:3, 3].double()
    eye = -rotation.T @ translation
    distance = eye.norm().item()
    yaw = math.degrees(math.atan2(eye[0].item(), eye[2].item()))
    pitch = math.degrees(math.asin(eye[1].item() / distance))
    backward = eye / distance
    off_axis = torch.linalg.cross(rotation[2], backward).norm().item()
    level_right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 1, 0], dtype=torch.float64),
                                                                   backward), dim=0)
    roll = math.degrees(math.atan2(torch.dot(torch.linalg.cross(level_right, rotation[0]), backward).item(),
                                   torch.dot(level_right, rotation[0]).item()))
    return yaw, pitch, distance, roll, off_axis


def test_jitter_stays_within_its_ranges_and_uses_them():
    jitter = CameraJitter(yaw=12.0, pitch=8.0, roll=6.0, distance=0.15, light=25.0)
    ids = np.arange(200) * 7 + 3
    cameras, light = jittered_cameras(VIEWS, jitter, seed=1, epoch=2, sample_ids=ids)
    offsets = np.array([[np.subtract(camera_pose(cameras.world_to_view[b, k])[:4],
                                     (*PRESETS[k], 2.8, 0.0)) for k in range(4)] for b in range(len(ids))])
    off_axis = max(camera_pose(cameras.world_to_view[b, k])[4] for b in range(len(ids)) for k in range(4))
    assert off_axis < 1e-5  # every camera still looks at the face's centre
    limits = np.array([12.0, 8.0, 0.15 * 2.8, 6.0])
    spread = np.abs(offsets).max(axis=(0, 1))
    assert (spread <= limits + 1e-4).all(), spread
    assert (spread >= 0.9 * limits).all(), spread  # the ranges are used, not a fraction of them
    assert (offsets.min(axis=(0, 1)) < 0).all() and (offsets.max(axis=(0, 1)) > 0).all()  # both directions
    angles = torch.rad2deg(torch.arccos((light.double() @ default_light().double()).clamp(-1, 1)))
    assert angles.max() <= 25.0 + 1e-3 and angles.max() >= 22.0
    torch.testing.assert_close(light.norm(dim=-1), torch.ones(len(ids), 4))


def test_jitter_is_a_pure_function_of_seed_epoch_sample_and_view():
    jitter = CameraJitter()
    cameras, light = jittered_cameras(VIEWS, jitter, seed=5, epoch=1, sample_ids=[10, 11, 12])
    alone, alone_light = jittered_cameras(VIEWS, jitter, seed=5, epoch=1, sample_ids=[12])
    assert torch.equal(alone.world_to_view[0], cameras.world_to_view[2])  # whatever else is in the batch
    assert torch.equal(alone_light[0], light[2])
    views_differ = not torch.equal(cameras.world_to_view[0, 1], cameras.world_to_view[0, 2])
    next_epoch, _ = jittered_cameras(VIEWS, jitter, seed=5, epoch=2, sample_ids=[10, 11, 12])
    other_seed, _ = jittered_cameras(VIEWS, jitter, seed=6, epoch=1, sample_ids=[10, 11, 12])
    assert views_differ
    assert not torch.equal(next_epoch.world_to_view, cameras.world_to_view)
    assert not torch.equal(other_seed.world_to_view, cameras.world_to_view)
    yaws = [camera_pose(cameras.world_to_view[b, 0])[0] for b in range(3)]
    assert len(set(np.round(yaws, 6))) == 3  # per sample, not one draw per batch


def test_jitter_ranges_are_checked():
    for arguments, message in [({"yaw": -1.0}, "yaw must be a finite number >= 0"),
                               ({"distance": 1.0}, "distance must be a fraction below 1"),
                               ({"light": 95.0}, "light at most 90 degrees")]:
        with pytest.raises(ValueError, match=message):
            CameraJitter(**arguments)
    with pytest.raises(ValueError, match="past the pole"):
        jittered_cameras("up", CameraJitter(pitch=60.0), 0, 0, [0])
