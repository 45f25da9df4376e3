"""The two view sources: the render cache as rendered, online views equal to it at zero jitter, augmented online
views drawn by the renderer (mirrored faces, rotations and crops, mixed views), 4D labels."""

import numpy as np
import pytest
import torch

from affectvlm.data import index_dataset, load_sample
from affectvlm.data.augment import AugmentSettings, TorchAugmenter, plan_augmentation
from affectvlm.data.mesh_cache import build_mesh_cache
from affectvlm.data.pipeline import CachedViews, OnlineViews, ViewPipeline, open_views
from affectvlm.data.views import DEFAULT_RECIPE, CameraJitter, jittered_cameras, render_model_views
from affectvlm.geometry.cameras import view_cameras


def test_cached_views_are_the_model_views_of_each_sample(static_dataset, view_cache):
    source = CachedViews(view_cache)
    assert source.view_names == ("frontal", "left", "right") and source.image_size == 32
    assert source.recipe == DEFAULT_RECIPE and len(source.samples) == 50
    ids = np.array([17, 3, 17, 49])  # across shards, one twice
    views = source.views(ids)
    assert views.shape == (4, 3, 3, 32, 32) and views.dtype == torch.float32
    assert torch.equal(source.views(ids, dtype=torch.float16).float(), views)
    samples = index_dataset(static_dataset)
    for position, i in enumerate(ids):
        assert static_dataset / source.samples[i].path == samples[i].path
        mesh = load_sample(samples[i], source.pose)
        expected = render_model_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), view_cameras(), 32)
        assert torch.equal(views[position], expected[0].half().float())  # as stored, float16


def test_online_views_without_jitter_equal_the_cache(view_cache, mesh_cache):
    cached, online = CachedViews(view_cache), OnlineViews(mesh_cache, size=32, device="cpu")
    ids = np.array([0, 9, 23, 41, 42])
    for epoch in (0, 3):
        rendered = online.views(ids, epoch=epoch, seed=7, augment=False)
        assert rendered.dtype == torch.float32
        assert torch.equal(rendered.half(), cached.views(ids, dtype=torch.float16))  # the same floats, stored
    zero = OnlineViews(mesh_cache, size=32, jitter=CameraJitter.none(), device="cpu")
    assert torch.equal(zero.views(ids, epoch=5, seed=1).half(), cached.views(ids, dtype=torch.float16))


@pytest.mark.cuda
def test_online_views_on_the_gpu_equal_the_cache_and_the_cpu_views(view_cache, mesh_cache):
    cached = CachedViews(view_cache)
    ids = np.array([0, 9, 23, 41, 42])
    on_gpu = OnlineViews(mesh_cache, size=32, jitter=CameraJitter.none(), device="cuda").views(ids, epoch=5, seed=1)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), cached.views(ids), rtol=0, atol=1e-3)  # the cache holds float16
    jitter = CameraJitter(yaw=15, pitch=10, roll=8, distance=0.2, light=40)
    gpu, cpu = (OnlineViews(mesh_cache, size=32, jitter=jitter, device=device).views(ids, epoch=2, seed=5)
                for device in ("cuda", "cpu"))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)


def test_online_views_render_the_jittered_cameras_and_light_of_each_sample(mesh_cache):
    jitter = CameraJitter(yaw=15, pitch=10, roll=8, distance=0.2, light=40)
    online = OnlineViews(mesh_cache, views="frontal,up", size=32, recipe="shading", jitter=jitter, device="cpu")
    ids = np.array([4, 30, 31])
    views = online.views(ids, epoch=2, seed=5)
    cameras, light = jittered_cameras("frontal,up", jitter, 5, 2, ids)
    for position, i in enumerate(ids):
        vertices, faces = online.meshes.load(i)
        one = lambda tensor: tensor[position:position + 1]  # noqa: E731
        expected = render_model_views(torch.from_numpy(vertices), torch.from_numpy(faces),
                                      type(cameras)(one(cameras.world_to_view), one(cameras.projection)), 32,
                                      "shading", one(light))
        assert torch.equal(views[position:position + 1], expected)
    again = online.views(ids, epoch=2, seed=5)
    next_epoch = online.views(ids, epoch=3, seed=5)
    assert torch.equal(again, views) and not torch.equal(next_epoch, views)
    assert views.min() >= 0 and views.max() <= 1


# Augmented online views: the renderer draws the plan's view sources, flips, rotations and crops.
GEOMETRY_OFF = dict(flip=0.0, rotation=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), brightness=0.0,
                    contrast=0.0, mix=0.0)


def plan_for(online, ids, seed=0, labels=None, **settings):
    labels = np.zeros(len(ids), dtype=np.int64) if labels is None else labels
    return plan_augmentation(AugmentSettings(**{**GEOMETRY_OFF, **settings}), seed, 0, ids, labels,
                             np.full(len(ids), 3), np.ones(len(ids), dtype=bool), online.view_names)


def test_a_flipped_sample_is_drawn_as_the_views_of_the_mirrored_face(mesh_cache):
    online = OnlineViews(mesh_cache, size=32, jitter=CameraJitter.none(), device="cpu")
    ids = np.array([3, 17, 40])
    views = online.views(ids, augment=False, plan=plan_for(online, ids, flip=1.0))
    for position, i in enumerate(ids):
        vertices, faces = online.meshes.load(i)
        mirrored = vertices * np.array([-1, 1, 1], dtype=vertices.dtype)  # x -> -x, and the winding reversed
        expected = render_model_views(torch.from_numpy(mirrored), torch.from_numpy(faces[:, ::-1].copy()),
                                      view_cameras(online.view_names), 32)[0]
        torch.testing.assert_close(views[position], expected, rtol=0, atol=1e-6)  # normals mirrored too


def test_rotations_and_crops_are_drawn_where_warping_the_plain_views_puts_them(mesh_cache):
    online = OnlineViews(mesh_cache, size=64, jitter=CameraJitter.none(), device="cpu")
    ids = np.arange(8)
    plan = plan_for(online, ids, seed=4, rotation=20.0, crop_scale=(0.6, 0.8), crop_ratio=(0.8, 1.25))
    drawn = online.views(ids, augment=False, plan=plan)
    warped = TorchAugmenter((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(online.views(ids, augment=False), plan)
    difference = (drawn - warped).abs()
    # They differ only where the warp interpolates across an edge (a wrong turn of the rotation gives ~0.12).
    assert difference.median() < 1e-3 and difference.mean() < 0.03


def test_mixed_views_are_drawn_from_the_donors_meshes_and_cameras(mesh_cache):
    online = OnlineViews(mesh_cache, size=24, device="cpu")
    ids = np.array([5, 9, 20, 33, 41, 47])
    plan = plan_for(online, ids, seed=2, labels=np.array([0, 0, 0, 1, 1, 1]), mix=1.0)
    assert plan.mixed.all()
    drawn = online.views(ids, epoch=2, seed=7, plan=plan)
    plain = online.views(ids, epoch=2, seed=7)  # with each sample's own camera jitter
    rows, views = (torch.from_numpy(plan.source[..., i]) for i in range(2))
    assert torch.equal(drawn, plain[rows, views])


def test_open_views_picks_the_source_from_the_folder(view_cache, mesh_cache):
    assert isinstance(open_views(view_cache), CachedViews)
    online = open_views(mesh_cache, views="frontal", size=24, device="cpu")
    assert isinstance(online, OnlineViews) and online.views([0]).shape == (1, 1, 3, 24, 24)


def test_four_d_batches_carry_sequence_and_frame(sequence_dataset, tmp_path):
    source = OnlineViews(build_mesh_cache(sequence_dataset, tmp_path / "meshes").path, size=16, device="cpu")
    pipeline = ViewPipeline(source, 5, training=False, backend="torch", device="cpu")
    assert pipeline.sequence_names == sorted({s.sequence for s in index_dataset(sequence_dataset)})
    batches = list(pipeline.epoch(0))
    for batch in batches:
        for row in range(5):
            sample = pipeline.samples[batch.sample_ids[row]]
            assert pipeline.sequence_names[batch.sequences[row]] == sample.sequence
            assert batch.frames[row] == sample.frame and batch.intensity[row] == sample.intensity
    assert sorted(torch.cat([b.frames[b.valid] for b in batches]).tolist()) == sorted([0, 1, 2] * 6)


def test_static_scans_have_no_sequence(view_cache):
    batch = next(ViewPipeline(CachedViews(view_cache), 4, backend="torch", device="cpu").epoch(0))
    assert (batch.sequences == -1).all() and (batch.frames == -1).all()


def test_a_batch_of_several_topologies_renders_each_mesh_as_alone(static_dataset, tmp_path):
    from affectvlm.data import Sample, write_labels
    from affectvlm.geometry import Mesh
    from affectvlm.geometry.io import save_mesh

    folder = tmp_path / "mixed"
    folder.mkdir()
    samples = []
    for i, sample in enumerate(index_dataset(static_dataset)[:3]):
        mesh = load_sample(sample)
        faces = mesh.faces[i % 2::1 + i % 2].copy()  # every face, then every other face, then every face
        save_mesh(folder / f"{i}.ply", Mesh(mesh.vertices, faces))
        samples.append(Sample(folder / f"{i}.ply", sample.subject, sample.emotion, sample.intensity))
    write_labels(folder, samples)
    online = OnlineViews(build_mesh_cache(folder, tmp_path / "meshes").path, size=24, device="cpu")
    assert len({online.meshes.topology(i) for i in range(3)}) == 2
    together = online.views([2, 1, 0], epoch=1, seed=2)
    for position, i in enumerate([2, 1, 0]):
        assert torch.equal(together[position], online.views([i], epoch=1, seed=2)[0])
    plan = plan_for(online, np.array([2, 1, 0]), mix=1.0)  # views drawn from meshes of other topologies
    assert plan.mixed.any()
    rows, views = (torch.from_numpy(plan.source[..., i]) for i in range(2))
    assert torch.equal(online.views([2, 1, 0], epoch=1, seed=2, plan=plan), together[rows, views])


@pytest.fixture(scope="module")
def registered_mesh_cache(static_dataset, tmp_path_factory):
    return build_mesh_cache(static_dataset, tmp_path_factory.mktemp("registered") / "cache", pose="template").path


def test_the_template_eyes_are_where_a_registered_face_has_its_eyes():
    from affectvlm.data.face_template import template_eyes
    from affectvlm.evaluate.robustness import generated_faces
    from affectvlm.geometry.normalise import normalise

    eyes = template_eyes()
    for face in generated_faces(4, seed=11, levels=(4,))[::3]:
        transform = normalise(face.mesh, pose="template").metadata["normalise_transform"]
        landmarks = np.stack([face.landmarks["right_eye"], face.landmarks["left_eye"]])
        registered = landmarks @ transform[:3, :3].T + transform[:3, 3]
        # within half the hole's radius: the smallest hole cut there, moved as far as it goes, still covers the eye
        assert np.linalg.norm(registered - eyes.centres, axis=1).max() < eyes.hole_radius / 2, face.subject


def test_eye_holes_cut_the_eyes_of_the_drawn_training_faces_only(registered_mesh_cache):
    ids = np.arange(50)
    plain = OnlineViews(registered_mesh_cache, views="frontal", size=64, jitter=CameraJitter.none(), device="cpu")
    holed = OnlineViews(registered_mesh_cache, views="frontal", size=64, jitter=CameraJitter.none(), device="cpu",
                        eye_holes=0.5)
    before, after = plain.views(ids, epoch=1, seed=2)[:, 0], holed.views(ids, epoch=1, seed=2)[:, 0]
    assert torch.equal(holed.views(ids, epoch=1, seed=2, augment=False)[:, 0], before)  # evaluation: no holes
    assert torch.equal(holed.views(ids, epoch=1, seed=2)[:, 0], after)                  # a pure function
    face_before, face_after = before.amax(dim=1) > 0, after.amax(dim=1) > 0             # (B, H, W) face pixels
    lost = face_before & ~face_after
    changed = (before != after).flatten(1).any(dim=1)
    assert 10 <= int(changed.sum()) <= 40                                                # about half of 50
    assert not (face_after & ~face_before).any()                                        # holes only remove
    for sample in np.flatnonzero(changed.numpy()):
        rows, columns = np.nonzero(lost[sample].numpy())
        assert (columns < 32).sum() > 5 and (columns >= 32).sum() > 5, "a hole at each eye"
        assert rows.max() < 32, "above the middle of the image: the eyes, not the mouth"
    later = holed.views(ids, epoch=2, seed=2)[:, 0]
    assert not torch.equal((later != before).flatten(1).any(dim=1), changed)             # redrawn each epoch


def test_eye_holes_need_faces_registered_to_the_template(mesh_cache, registered_mesh_cache):
    with pytest.raises(ValueError, match="eye holes need faces registered to the template"):
        OnlineViews(mesh_cache, size=32, device="cpu", eye_holes=0.5)
    with pytest.raises(ValueError, match=r"eye holes: a probability in \[0, 1\]"):
        OnlineViews(registered_mesh_cache, size=32, device="cpu", eye_holes=1.5)
