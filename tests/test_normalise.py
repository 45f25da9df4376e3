import numpy as np
import trimesh

from affectvlm.geometry import Mesh, normalise


def disc_facing(direction, centre=(5.0, -2.0, 7.0), radius=30.0):
    """A flat disc whose triangles wind counter-clockwise seen from `direction`."""
    disc = trimesh.creation.annulus(r_min=0, r_max=radius, height=1e-3, sections=32)
    front = disc.faces[disc.face_normals[:, 2] > 0.5]  # keep the top side only: an open surface
    vertices = disc.vertices.copy()
    vertices[:, 2] = 0
    rotation = trimesh.geometry.align_vectors([0, 0, 1], direction)[:3, :3]
    return Mesh((vertices @ rotation.T + centre).astype(np.float32), front.astype(np.int32))


def test_normalise_centres_and_scales_to_unit_radius():
    mesh = disc_facing([0, 0, 1])
    result = normalise(mesh)
    bounds = result.vertices.min(axis=0), result.vertices.max(axis=0)
    assert np.allclose((bounds[0] + bounds[1]) / 2, 0, atol=1e-6)
    assert np.isclose(np.linalg.norm(result.vertices, axis=1).max(), 1.0)
    assert np.array_equal(result.faces, mesh.faces)
    # Undo the stored transform: the input comes back.
    restored = result.vertices / result.metadata["normalise_scale"] + result.metadata["normalise_centre"]
    assert np.allclose(restored, mesh.vertices, atol=1e-4)


def test_align_turns_the_forward_direction_onto_plus_z():
    for direction in ([1, 0, 0], [0, -1, 0], [0, 0, -1], [1, 1, 1]):
        result = normalise(disc_facing(np.array(direction, float) / np.linalg.norm(direction)), align=True)
        normals = trimesh.Trimesh(result.vertices, result.faces, process=False).face_normals
        assert np.allclose(normals.mean(axis=0), [0, 0, 1], atol=1e-3), direction
        assert np.ptp(result.vertices[:, 2]) < 1e-3  # the disc now lies in the xy plane
