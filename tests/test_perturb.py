"""The robustness perturbations do what they say, on a generated face in millimetres."""

import numpy as np
import pytest
import torch

from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.evaluate.perturb import (crop_height, cut_holes, reverse_winding, rescale, rescan, rigid_motion,
                                        scanner_noise, shuffle_order)
from affectvlm.geometry import Mesh
from affectvlm.geometry.cameras import orbit_cameras
from affectvlm.geometry.normalise import head_rotation
from affectvlm.ops.raster import render_views


@pytest.fixture(scope="module")
def face():
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(4)))
    return Mesh(rig.neutral.astype(np.float32), model.faces)


def face_normals(mesh):
    corners = mesh.vertices[mesh.faces].astype(np.float64)
    return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def boundary_edges(mesh):
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts == 1).sum())


def test_rescale_changes_units_only(face):
    metres = rescale(face, 0.001)
    np.testing.assert_allclose(metres.vertices, face.vertices * np.float32(0.001))
    assert np.array_equal(metres.faces, face.faces)


def test_rigid_motion_turns_and_moves_without_deforming(face):
    angles, offset = np.array([12.0, -9.0, 15.0]), np.array([30.0, -20.0, 5.0])
    moved = rigid_motion(face, angles, offset)
    before = face.vertices.astype(np.float64) - face.vertices.mean(axis=0)
    after = moved.vertices.astype(np.float64) - moved.vertices.mean(axis=0)
    # The rotation that best maps the old points onto the new ones (Kabsch) is the one asked for.
    u, _, vt = np.linalg.svd(after.T @ before)
    np.testing.assert_allclose(u @ vt, head_rotation(angles), atol=1e-5)
    centre = lambda v: (v.min(axis=0) + v.max(axis=0)) / 2
    np.testing.assert_allclose(moved.vertices.mean(axis=0) - face.vertices.mean(axis=0),
                               offset + (head_rotation(angles) - np.eye(3)) @ (face.vertices.mean(axis=0)
                                                                                - centre(face.vertices)),
                               atol=1e-3)


def test_scanner_noise_is_along_depth_with_the_asked_spread(face):
    noisy = scanner_noise(face, sigma=0.2, seed=1)
    assert np.array_equal(noisy.vertices[:, :2], face.vertices[:, :2])
    error = noisy.vertices[:, 2].astype(np.float64) - face.vertices[:, 2]
    assert abs(error.std() - 0.2) < 0.01 and abs(error.mean()) < 0.01


def test_shuffled_order_is_the_same_surface(face):
    shuffled = shuffle_order(face, seed=2)
    triangles = lambda mesh: sorted(map(tuple, np.sort(mesh.vertices[mesh.faces].reshape(-1, 9), axis=1)))
    assert not np.array_equal(shuffled.vertices, face.vertices)
    assert triangles(shuffled) == triangles(face)


def test_reversed_winding_turns_every_normal_around(face):
    np.testing.assert_allclose(face_normals(reverse_winding(face)), -face_normals(face))


def test_holes_remove_only_what_lies_near_their_centres(face):
    centres = face.vertices[[100, 9000]].astype(np.float64)
    holed = cut_holes(face, centres, radius=8.0)
    centroids = holed.vertices[holed.faces].mean(axis=1)
    assert (np.linalg.norm(centroids[:, None] - centres[None], axis=2) > 8.0).all()
    far = (np.linalg.norm(face.vertices[face.faces].mean(axis=1)[:, None] - centres[None], axis=2) > 8.0).all(axis=1)
    assert holed.num_faces == far.sum() < face.num_faces
    assert boundary_edges(holed) > boundary_edges(face)


def test_cropping_leaves_the_band_asked_for(face):
    cropped = crop_height(face, 0.1, 0.85)
    bottom, height = face.vertices[:, 1].min(), np.ptp(face.vertices[:, 1])
    relative = (cropped.vertices[cropped.faces].mean(axis=1)[:, 1] - bottom) / height
    assert relative.min() >= 0.1 and relative.max() <= 0.85
    assert 0.6 * face.num_faces < cropped.num_faces < 0.95 * face.num_faces


def front_depth(mesh, frame, size=160):
    centre, radius = frame
    vertices = torch.from_numpy((mesh.vertices - centre) / radius)
    camera = orbit_cameras([(0.0, 0.0)], projection="orthographic", half_height=1.05)
    images = render_views(vertices, torch.from_numpy(mesh.faces), camera, size, ("depth", "mask"),
                          normalise_depth=False)[0, 0]
    return images[0].numpy() * radius, images[1].numpy() > 0


@pytest.mark.parametrize("faces", [5_000, 100_000])
def test_rescan_samples_the_same_surface_with_a_new_triangulation(face, faces):
    scanned = rescan(face, faces)
    assert 0.8 * faces < scanned.num_faces < 1.2 * faces
    np.testing.assert_allclose(np.ptp(scanned.vertices[:, :2], axis=0), np.ptp(face.vertices[:, :2], axis=0),
                               rtol=0.03)
    # The same surface: seen from the front, depths agree to a fraction of a millimetre where both cover.
    # Both seen in one frame, the original's: centred on its bounding box, unit radius.
    centre = (face.vertices.min(axis=0) + face.vertices.max(axis=0)) / 2
    frame = centre, np.linalg.norm(face.vertices - centre, axis=1).max()
    depth, covered = front_depth(face, frame)
    scanned_depth, scanned_covered = front_depth(scanned, frame)
    both = covered & scanned_covered
    assert both.sum() > 0.95 * covered.sum()
    assert np.median(np.abs(depth[both] - scanned_depth[both])) < 0.3
    # A new triangulation: hardly any vertex of the old mesh survives.
    old = {tuple(v) for v in np.round(face.vertices, 3)}
    assert sum(tuple(v) in old for v in np.round(scanned.vertices, 3)) < 0.01 * scanned.num_vertices


def test_a_perturbation_that_would_remove_everything_says_so(face):
    with pytest.raises(ValueError, match="every face"):
        cut_holes(face, face.vertices.mean(axis=0), radius=1e6)
