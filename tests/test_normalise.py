import numpy as np
import pytest
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
    result = normalise(mesh, pose="none")
    bounds = result.vertices.min(axis=0), result.vertices.max(axis=0)
    assert np.allclose((bounds[0] + bounds[1]) / 2, 0, atol=1e-6)
    assert np.isclose(np.linalg.norm(result.vertices, axis=1).max(), 1.0)
    assert np.array_equal(result.faces, mesh.faces)
    assert "normalise_registered" not in result.metadata
    # Undo the stored transform: the input comes back.
    inverse = np.linalg.inv(result.metadata["normalise_transform"])
    restored = result.vertices @ inverse[:3, :3].T + inverse[:3, 3]
    assert np.allclose(restored, mesh.vertices, atol=1e-4)


def test_an_unknown_pose_normalisation_is_refused():
    with pytest.raises(ValueError, match="unknown pose normalisation 'upright'"):
        normalise(disc_facing([0, 0, 1]), pose="upright")


def test_a_mesh_wound_inward_is_rewound_and_one_wound_outward_is_kept():
    rng = np.random.default_rng()
    sphere = trimesh.creation.icosphere(subdivisions=2)
    vertices = (sphere.vertices * rng.uniform(1, 50) + rng.normal(size=3) * 100).astype(np.float32)
    outward = Mesh(vertices, sphere.faces.astype(np.int64), {})
    inward = Mesh(vertices, sphere.faces[:, ::-1].astype(np.int64), {})
    kept, rewound = normalise(outward, pose="none"), normalise(inward, pose="none")
    assert not kept.metadata["normalise_rewound"] and rewound.metadata["normalise_rewound"]
    np.testing.assert_array_equal(kept.faces, outward.faces)
    np.testing.assert_array_equal(np.sort(rewound.faces, axis=1), np.sort(outward.faces, axis=1))
    corners = rewound.vertices[rewound.faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (np.einsum("ij,ij->i", normals, corners.mean(axis=1)) > 0).all()  # every face now points outward


def test_a_face_scan_renders_the_same_whichever_way_it_is_wound():
    import torch

    from affectvlm.app_inputs import synthetic_face
    from affectvlm.data.views import render_model_views
    from affectvlm.geometry.cameras import view_cameras

    face = synthetic_face("surprise", 3, identity_seed=int(np.random.default_rng().integers(1000)))
    flipped = Mesh(face.vertices, face.faces[:, [0, 2, 1]].copy(), {})
    cameras = view_cameras(["frontal", "left"])
    canonical = [normalise(mesh, pose="none") for mesh in (face, flipped)]
    images = [render_model_views(torch.from_numpy(mesh.vertices)[None], torch.from_numpy(mesh.faces), cameras, 48,
                                 "shading_depth_normal") for mesh in canonical]
    torch.testing.assert_close(images[0], images[1])
