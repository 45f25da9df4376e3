"""Pose normalisation by registration to the template face: the stored template is the generator's, a face
comes out of `normalise` in the same place however it was turned, scaled, moved or cut at the neck and forehead."""

import numpy as np
import pytest

from affectvlm.data.face_template import average_face
from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.data.synthetic import expression_weights
from affectvlm.evaluate import perturb
from affectvlm.geometry import Mesh, normalise
from affectvlm.geometry.normalise import head_rotation
from affectvlm.geometry.register import load_template, order_free_faces, register, surface_samples


def random_face(rng) -> Mesh:
    model = ProceduralFaceModel()
    emotion = str(rng.choice(["happiness", "sadness", "surprise", "fear", "anger", "disgust"]))
    weights = expression_weights(model, emotion, int(rng.integers(1, 5)))
    vertices = model.rig(model.random_identity(rng)).pose(weights)
    return Mesh(vertices.astype(np.float32), model.faces, {})


def mean_distance(a: Mesh, b: Mesh) -> float:
    return float(np.linalg.norm(a.vertices - b.vertices, axis=1).mean())


def test_the_stored_template_is_the_generators_average_face():
    template, face = load_template(), average_face()
    vertices = face.vertices.astype(np.float64)
    samples = surface_samples(vertices, face.faces, len(template.points))
    np.testing.assert_allclose(template.points, samples.points, atol=1e-6)
    np.testing.assert_allclose(template.normals, samples.normals(vertices, face.faces), atol=1e-6)
    assert (template.normals[:, 2] > 0).mean() > 0.9  # the face looks along +z, wound outward
    # Each cell's entry is (to rounding) the point nearest its centre.
    rng = np.random.default_rng()
    cells = template.nearest.shape[0]
    ijk = rng.integers(0, cells, (500, 3))
    centres = (ijk + 0.5) * (2 * template.half / cells) - template.half
    distances = np.linalg.norm(centres[:, None] - template.points[None], axis=2)
    chosen = distances[np.arange(500), template.nearest[ijk[:, 0], ijk[:, 1], ijk[:, 2]]]
    np.testing.assert_allclose(chosen, distances.min(axis=1), atol=1e-5)


def test_turned_rescaled_and_moved_faces_come_out_where_the_faces_themselves_do():
    """Six random faces, each turned by up to 20 degrees in every axis, rescaled and moved. Over 300 such faces 298
    came out within 1% of the canonical radius of the unturned face and 2 about 8% off (README, "Datasets": the
    fit of a few faces trades a tenth of their scale for a shift), so one face in six may miss the 1%, none the
    10%."""
    rng = np.random.default_rng()
    distances, unregistered = [], []
    for _ in range(6):
        face = random_face(rng)
        moved = perturb.rigid_motion(face, rng.uniform(-20, 20, 3), offset=rng.uniform(-300, 300, 3))
        moved = Mesh(moved.vertices * np.float32(rng.uniform(0.001, 10)), moved.faces, {})
        reference, registered = normalise(face, pose="template"), normalise(moved, pose="template")
        assert reference.metadata["normalise_registered"] and registered.metadata["normalise_registered"]
        distances.append(mean_distance(registered, reference))
        unregistered.append(mean_distance(normalise(moved, pose="none"), normalise(face, pose="none")))
    assert sum(distance >= 0.01 for distance in distances) <= 1 and max(distances) < 0.1, distances
    # Without registration the turn alone moves vertices about 20 times more than the 1% (less for a slight turn).
    assert np.median(unregistered) > 0.05, unregistered


def degrees_between(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(first @ second.T) - 1) / 2, -1, 1))))


def test_a_turned_face_cut_at_the_neck_and_forehead_is_turned_back():
    rng = np.random.default_rng()
    face = random_face(rng)
    angles = rng.choice([-1, 1], 3) * rng.uniform(8, 15, 3)  # a turn of 14-26 degrees
    cut = perturb.crop_height(perturb.rigid_motion(face, angles), 0.08, 0.9)
    whole, turned_cut = (register(normalise(mesh, pose="none").vertices, mesh.faces) for mesh in (face, cut))
    assert whole.registered and turned_cut.registered
    # The turn found for the cut face undoes the head's turn, then turns as the whole face's does (measured on 12
    # faces: 0.4 degrees on average, 1.6 at worst).
    assert degrees_between(turned_cut.rotation @ head_rotation(angles), whole.rotation) < 3, angles


def test_faces_cut_at_the_neck_and_forehead_keep_their_place_and_size():
    """A cut scan is not the whole face, so it cannot come out exactly where the face does. Over 19 random faces:
    0.014 of the canonical radius apart on average against 0.045 with the bounding box alone, but one face in 19
    landed further off registered (0.062) than unregistered (0.033); so the claim is on the median of several."""
    rng = np.random.default_rng()
    registered, unregistered = [], []
    for face in (random_face(rng) for _ in range(6)):
        cut = perturb.crop_height(face, 0.08, 0.9)
        # Each vertex kept by the cut against the same vertex of the whole face.
        kept = [np.flatnonzero((face.vertices == vertex).all(axis=1))[0] for vertex in cut.vertices[::50]]
        for pose, distances in (("template", registered), ("none", unregistered)):
            offsets = normalise(cut, pose).vertices[::50] - normalise(face, pose).vertices[kept]
            distances.append(np.linalg.norm(offsets, axis=1).mean())
    assert np.median(registered) < 0.5 * np.median(unregistered), (registered, unregistered)


def test_registration_is_a_pure_function_of_the_mesh():
    face = random_face(np.random.default_rng())
    first, second = normalise(face, pose="template"), normalise(face, pose="template")
    np.testing.assert_array_equal(first.vertices, second.vertices)


def test_registration_does_not_depend_on_vertex_order_or_winding():
    face = random_face(np.random.default_rng())
    listed_otherwise = perturb.shuffle_order(face, seed=int(np.random.default_rng().integers(1 << 31)))
    wound_otherwise = perturb.reverse_winding(face)
    reference = register(face.vertices, face.faces)
    for other in (listed_otherwise, wound_otherwise):
        fit = register(other.vertices, other.faces)
        np.testing.assert_allclose(fit.matrix(), reference.matrix(), rtol=0, atol=1e-12)
    # The order-free listing holds the same triangles: each face once, with its corners' positions.
    triangles = {tuple(sorted(map(tuple, face.vertices[f]))) for f in face.faces}
    listed = order_free_faces(listed_otherwise.vertices.astype(np.float64), listed_otherwise.faces)
    assert len(listed) == len(face.faces)
    assert {tuple(sorted(map(tuple, listed_otherwise.vertices[f]))) for f in listed} == triangles
