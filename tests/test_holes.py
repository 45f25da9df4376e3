"""Closing the holes of a scan: holes are closed by patches that lie on the lost surface and are wound like it,
the outer rim stays open, and the result does not depend on how the mesh is listed."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from affectvlm.data.procedural_face import Anatomy, ProceduralFaceModel
from affectvlm.evaluate.perturb import cut_holes, shuffle_order
from affectvlm.geometry import Mesh, normalise
from affectvlm.geometry.bnt import grid_triangles
from affectvlm.geometry.cameras import orbit_cameras
from affectvlm.geometry.holes import HOLE_FRACTION, boundary_loops, fill_holes
from affectvlm.ops.raster import render_views

EYE_RADIUS_MM = 12.0


@pytest.fixture(scope="module")
def face():
    """A generated face in millimetres with the positions of its eyes and mouth."""
    model = ProceduralFaceModel()
    identity = model.random_identity(np.random.default_rng(7))
    vertices = model.rig(identity).neutral.astype(np.float32)
    features = {name: vertices[i].astype(np.float64) for name, i in model.feature_vertices(Anatomy(identity)).items()}
    return Mesh(vertices, model.faces), features


def holed(face, names=("right_eye", "left_eye")):
    mesh, features = face
    return cut_holes(mesh, [features[name] for name in names], EYE_RADIUS_MM)


def edge_uses(faces):
    """Directed edge -> how many faces run it."""
    half_edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys, counts = np.unique(half_edges, axis=0, return_counts=True)
    return {tuple(key): count for key, count in zip(keys.tolist(), counts.tolist())}


def face_normals(vertices, faces):
    corners = vertices[faces].astype(np.float64)
    return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def test_a_whole_face_has_one_loop_and_is_left_alone(face):
    mesh, _ = face
    assert len(boundary_loops(mesh.faces)) == 1
    vertices, faces, closed = fill_holes(mesh.vertices, mesh.faces)
    assert closed == 0 and vertices is mesh.vertices and faces is mesh.faces


def test_eye_holes_are_closed_and_the_rim_stays_open(face):
    mesh = holed(face)
    loops = boundary_loops(mesh.faces)
    assert len(loops) == 3
    rim = max(loops, key=len)
    vertices, faces, closed = fill_holes(mesh.vertices, mesh.faces)
    assert closed == 2
    after = boundary_loops(faces)
    assert len(after) == 1 and sorted(after[0].tolist()) == sorted(rim.tolist())
    # The old vertices and faces come first, unchanged.
    assert np.array_equal(vertices[:mesh.num_vertices], mesh.vertices)
    assert np.array_equal(faces[:mesh.num_faces], mesh.faces)


def test_patches_are_wound_like_the_surface_around_them(face):
    whole, features = face
    mesh = holed(face)
    vertices, faces, _ = fill_holes(mesh.vertices, mesh.faces)
    # Every directed edge is run at most once: the patches join the surface consistently wound.
    assert max(edge_uses(faces).values()) == 1
    patch_faces = faces[mesh.num_faces:]
    for name in ("right_eye", "left_eye"):
        near = lambda v, f: np.linalg.norm(v[f].mean(axis=1) - features[name], axis=1) < 1.5 * EYE_RADIUS_MM
        patch = face_normals(vertices, patch_faces[near(vertices, patch_faces)]).sum(axis=0)
        lost = face_normals(whole.vertices, whole.faces[near(whole.vertices, whole.faces)]).sum(axis=0)
        assert patch @ lost > 0.9 * np.linalg.norm(patch) * np.linalg.norm(lost), name


def test_patches_lie_close_to_the_lost_surface(face):
    whole, features = face
    mesh = holed(face)
    vertices, _, _ = fill_holes(mesh.vertices, mesh.faces)
    patch = vertices[mesh.num_vertices:].astype(np.float64)
    lost = whole.vertices[np.linalg.norm(whole.vertices[:, None] - np.stack([features["right_eye"],
                                         features["left_eye"]])[None], axis=2).min(axis=1) < 1.5 * EYE_RADIUS_MM]
    gaps = np.linalg.norm(patch[:, None] - lost[None], axis=2).min(axis=1)
    assert np.median(gaps) < 0.15 * EYE_RADIUS_MM and gaps.max() < 0.4 * EYE_RADIUS_MM, (np.median(gaps), gaps.max())


def test_closing_does_not_depend_on_the_order_of_vertices_and_faces(face):
    mesh = holed(face, ("right_eye", "left_eye", "mouth"))
    shuffled = shuffle_order(mesh, seed=3)
    patch = fill_holes(mesh.vertices, mesh.faces)[0][mesh.num_vertices:]
    shuffled_patch = fill_holes(shuffled.vertices, shuffled.faces)[0][shuffled.num_vertices:]
    assert len(patch) == len(shuffled_patch)
    np.testing.assert_allclose(np.sort(patch, axis=0), np.sort(shuffled_patch, axis=0), atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holes_in_random_smooth_surfaces_are_closed_onto_them(seed):
    rng = np.random.default_rng(seed)
    side = 60
    coefficients = rng.normal(0, 0.15, (3, 3))
    surface = lambda x, y: sum(coefficients[i, j] * np.cos(i * x) * np.cos(j * y) for i in range(3) for j in range(3))
    xs = np.linspace(-2, 2, side)
    x, y = np.meshgrid(xs, xs)
    grid = np.stack([x, y, surface(x, y)], axis=-1)
    vertices, faces = grid_triangles(grid, np.ones((side, side), bool), max_edge_factor=4.0)
    centres = rng.uniform(-1.2, 1.2, (2, 2))
    while np.linalg.norm(centres[0] - centres[1]) < 1.2:
        centres = rng.uniform(-1.2, 1.2, (2, 2))
    radius = rng.uniform(0.25, 0.45)
    mesh = cut_holes(Mesh(vertices.astype(np.float32), faces.astype(np.int32)),
                     np.c_[centres, surface(centres[:, 0], centres[:, 1])], radius)
    filled, filled_faces, closed = fill_holes(mesh.vertices, mesh.faces)
    assert closed == 2 and len(boundary_loops(filled_faces)) == 1
    patch = filled[mesh.num_vertices:].astype(np.float64)
    assert np.abs(patch[:, 2] - surface(patch[:, 0], patch[:, 1])).max() < 0.1 * radius


def test_a_loop_longer_than_the_hole_fraction_stays_open():
    # A flat ring whose inner edge is 80% as long as its outer one: a frame, not a surface with a hole.
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    outer, inner = np.c_[np.cos(angles), np.sin(angles)], 0.8 * np.c_[np.cos(angles), np.sin(angles)]
    vertices = np.c_[np.concatenate([outer, inner]), np.zeros(96)].astype(np.float32)
    i, j = np.arange(48), (np.arange(48) + 1) % 48
    faces = np.concatenate([np.c_[i, j, 48 + i], np.c_[j, 48 + j, 48 + i]]).astype(np.int32)
    assert 0.8 > HOLE_FRACTION
    vertices_after, faces_after, closed = fill_holes(vertices, faces)
    assert closed == 0 and len(boundary_loops(faces_after)) == 2


def test_normalise_closes_holes_unless_told_not_to(face):
    mesh = holed(face)
    closed = normalise(mesh, pose="none")
    assert closed.metadata["normalise_holes_closed"] == 2 and len(boundary_loops(closed.faces)) == 1
    kept = normalise(mesh, pose="none", close_holes=False)
    assert kept.metadata["normalise_holes_closed"] == 0 and len(boundary_loops(kept.faces)) == 3
    assert np.array_equal(kept.faces, mesh.faces)


def test_a_face_with_closed_eye_holes_renders_close_to_the_whole_face(face):
    whole, _ = face
    mesh = holed(face)
    cameras = orbit_cameras([(0.0, 0.0)])
    transform = normalise(whole, pose="none").metadata["normalise_transform"]  # one frame for all three faces

    def shading(m):
        vertices = m.vertices.astype(np.float64) @ transform[:3, :3].T + transform[:3, 3]
        image = render_views(torch.from_numpy(vertices.astype(np.float32)), torch.from_numpy(m.faces), cameras, 96,
                             ("shading",))
        return image[0, 0, 0].double().numpy()

    closed = Mesh(*fill_holes(mesh.vertices, mesh.faces)[:2])
    reference = shading(whole)
    open_error = np.abs(shading(mesh) - reference).mean()
    closed_error = np.abs(shading(closed) - reference).mean()
    assert closed_error < 0.25 * open_error, (closed_error, open_error)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vertices=st.integers(3, 40), faces=st.integers(1, 80))
def test_any_triangle_soup_comes_out_a_valid_mesh_with_no_more_loops(seed, vertices, faces):
    # Degenerate triangles, edges shared by many faces, faces wound against their neighbours: nothing may crash.
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(vertices, 3)).astype(np.float32)
    triangles = rng.integers(0, vertices, (faces, 3)).astype(np.int32)
    filled, filled_faces, closed = fill_holes(points, triangles)
    assert np.isfinite(filled).all() and filled_faces.min() >= 0 and filled_faces.max() < len(filled)
    assert np.array_equal(filled[:vertices], points) and np.array_equal(filled_faces[:faces], triangles)
    assert len(boundary_loops(filled_faces)) == len(boundary_loops(triangles)) - closed
