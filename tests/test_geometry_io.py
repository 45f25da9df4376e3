"""Mesh reading through trimesh and our VRML and .bnt readers, on files these tests write."""

import struct

import numpy as np
import pytest
import trimesh

from affectvlm.geometry import Mesh, MeshError, load_mesh, save_mesh

# A unit square split into two triangles plus one apex above it: small enough to check by hand.
SQUARE_POINTS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], dtype=np.float64)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ---------------------------------------------------------------- formats read through trimesh

@pytest.mark.parametrize("suffix", ["obj", "ply", "off", "glb"])
def test_trimesh_formats_keep_vertices_and_faces(tmp_path, suffix):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / f"sphere.{suffix}"
    sphere.export(path)
    mesh = load_mesh(path)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert mesh.faces.shape == sphere.faces.shape
    # Compare triangle corner positions, which survive any vertex renumbering a format might do.
    assert np.allclose(np.sort(mesh.vertices[mesh.faces].reshape(-1, 9), axis=0),
                       np.sort(sphere.vertices[sphere.faces].reshape(-1, 9), axis=0), atol=1e-5)


def test_stl_corners_are_merged_into_shared_vertices(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    sphere.export(tmp_path / "sphere.stl")
    mesh = load_mesh(tmp_path / "sphere.stl")
    assert mesh.num_vertices == len(sphere.vertices) and mesh.num_faces == len(sphere.faces)


def test_obj_quads_and_polygons_are_triangulated(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nv 2 1 0\nv 3 0.5 0\n" \
           "f 1 2 3 4\nf 2 5 7 6 3\n"  # a quad (2 triangles) and a pentagon (3 triangles)
    mesh = load_mesh(write(tmp_path, "poly.obj", text))
    assert mesh.num_faces == 5
    assert mesh.num_vertices == 7


def test_glb_scene_is_flattened_into_one_mesh(tmp_path):
    box, sphere = trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=1)
    trimesh.Scene([box, sphere.apply_translation([3, 0, 0])]).export(tmp_path / "scene.glb")
    mesh = load_mesh(tmp_path / "scene.glb")
    assert mesh.num_faces == len(box.faces) + len(sphere.faces)
    assert mesh.vertices[:, 0].max() > 3.5  # the sphere's vertices, moved by the scene, are there


@pytest.mark.parametrize("suffix", ["obj", "ply", "wrl"])
def test_save_then_load_round_trips(tmp_path, suffix):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    original = Mesh(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32))
    save_mesh(tmp_path / f"m.{suffix}", original)
    again = load_mesh(tmp_path / f"m.{suffix}")
    assert np.array_equal(again.faces, original.faces)
    assert np.allclose(again.vertices, original.vertices, atol=1e-5)


# ---------------------------------------------------------------- VRML 2.0 (BU-3DFE, BU-4DFE)

BU_STYLE_VRML = """#VRML V2.0 utf8
# written like the BU-3DFE scans
Transform { children [
Shape {
  appearance Appearance { texture ImageTexture { url "F0001_HA03WH_F2D.bmp" } }
  geometry IndexedFaceSet {
    creaseAngle 1.0
    coord DEF co Coordinate {
      point [
        0 0 0, 1 0 0, 1 1 0, 0 1 0,   # the square
        0.5 0.5 1,
        2 0 0, 2 1 0, 3 0 0, 3 1 0, 2.5 2 0
      ]
    }
    coordIndex [
      0, 1, 4, -1,
      1, 2, 3, 0, -1,
      1, 5, 6, 9, 2, -1,
      5, 7, 8, 9, 6, 2, -1
    ]
    texCoord TextureCoordinate { point [ 0 0, 1 0, 1 1, 0 1, 0.5 0.5, 0.1 0.1, 0.2 0.2, 0.3 0.3, 0.4 0.4, 0.6 0.6 ] }
    texCoordIndex [ 0 1 4 -1 1 2 3 0 -1 1 5 6 9 2 -1 5 7 8 9 6 2 -1 ]
  }
}
] }
"""


def test_vrml_polygons_of_three_to_six_vertices_are_fan_triangulated(tmp_path):
    mesh = load_mesh(write(tmp_path, "F0001_HA03WH_F3D.wrl", BU_STYLE_VRML))
    assert mesh.num_vertices == 10
    assert np.allclose(mesh.vertices[4], [0.5, 0.5, 1])
    expected_faces = [[0, 1, 4],
                      [1, 2, 3], [1, 3, 0],
                      [1, 5, 6], [1, 6, 9], [1, 9, 2],
                      [5, 7, 8], [5, 8, 9], [5, 9, 6], [5, 6, 2]]
    assert mesh.faces.tolist() == expected_faces
    assert mesh.metadata["texture"] == "F0001_HA03WH_F2D.bmp"
    assert mesh.metadata["uv"].shape == (10, 2) and np.allclose(mesh.metadata["uv"][9], [0.6, 0.6])
    assert mesh.metadata["uv_faces"].tolist() == expected_faces


def test_vrml_last_polygon_may_omit_its_minus_one(tmp_path):
    text = BU_STYLE_VRML.replace("5, 7, 8, 9, 6, 2, -1\n", "5, 7, 8, 9, 6, 2\n")
    text = text.replace("texCoordIndex [ 0 1 4 -1 1 2 3 0 -1 1 5 6 9 2 -1 5 7 8 9 6 2 -1 ]", "")
    mesh = load_mesh(write(tmp_path, "open_end.wrl", text))
    assert mesh.num_faces == 10
    assert np.array_equal(mesh.metadata["uv_faces"], mesh.faces)  # per-vertex texture coordinates


def test_vrml_with_several_face_sets_concatenates_them(tmp_path):
    shape = BU_STYLE_VRML.split("Shape {", 1)[1].rsplit("}", 2)[0]
    text = "#VRML V2.0 utf8\nShape {" + shape + "}\nShape {" + shape + "}\n"
    mesh = load_mesh(write(tmp_path, "two.wrl", text))
    assert mesh.num_vertices == 20 and mesh.num_faces == 20
    assert mesh.faces[10:].tolist() == (mesh.faces[:10] + 10).tolist()


@pytest.mark.parametrize("change, reason", [
    (("5, 7, 8, 9, 6, 2, -1", "5, 7, 8, 9, 6, 12, -1"), "refers to vertex 12 but only 10 points exist"),
    (("0, 1, 4, -1,", "0, 1, -1,"), "fewer than 3 vertices"),
    (("0, 1, 4, -1,", "0, -5, 4, -1,"), "negative index"),
    (("0, 1, 4, -1,", "0, one, 4, -1,"), "coordIndex holds something that is not a number"),
    (("0.5 0.5 1,", "0.5 nan 1,"), "NaN or infinite"),
    (("0.5 0.5 1,", "0.5 0.5,"), "not a multiple of 3"),
    (("coordIndex [", "faceIndex ["), "no 'coordIndex"),
    (("coord DEF co Coordinate {", "coord DEF co Normals {"), "no 'coord Coordinate"),
    (("IndexedFaceSet {", "PointSet {"), "no IndexedFaceSet"),
    (("#VRML V2.0 utf8", "#VRML V1.0 ascii"), "not a VRML 2.0 file"),
    (("texCoordIndex [ 0 1 4 -1", "texCoordIndex [ 0 1 4 5 -1"), "does not have the polygons of coordIndex"),
    (("0.6 0.6 ]", "0.6 ]"), "not a multiple of 2"),
    (("0.6 0.6 ]", "0.6 inf ]"), "infinite texture coordinates"),
])
def test_malformed_vrml_gives_a_mesh_error_naming_file_and_reason(tmp_path, change, reason):
    old, new = change
    assert old in BU_STYLE_VRML
    path = write(tmp_path, "bad.wrl", BU_STYLE_VRML.replace(old, new, 1))
    with pytest.raises(MeshError, match=reason) as raised:
        load_mesh(path)
    assert str(raised.value).startswith(str(path))
    assert "\n" not in str(raised.value)


def test_truncated_vrml_gives_a_mesh_error(tmp_path):
    data = BU_STYLE_VRML.encode()
    for length in range(0, len(data) - 20, 7):  # every cut leaves the face set unclosed or incomplete
        with pytest.raises(MeshError):
            load_mesh(write(tmp_path, "cut.wrl", data[:length]))


# ---------------------------------------------------------------- Bosphorus .bnt

def bnt_bytes(grid_xyz, zmin, image_name=b"bs001_E_HAPPY_0.png", uv=None, count=None):
    """A .bnt file written straight from the format description: header, then the N x 5 matrix by column."""
    nrows, ncols, _ = grid_xyz.shape
    points = grid_xyz.reshape(-1, 3)
    uv = np.zeros((len(points), 2)) if uv is None else uv
    matrix = np.concatenate([points, uv], axis=1)
    count = matrix.size if count is None else count
    return (struct.pack("<HHdH", nrows, ncols, zmin, len(image_name)) + image_name
            + struct.pack("<I", count) + matrix.T.astype("<f8").tobytes())


def plane_grid(nrows=4, ncols=5):
    rows, cols = np.mgrid[0:nrows, 0:ncols].astype(np.float64)
    return np.stack([cols, -rows, np.full_like(rows, 10.0)], axis=-1)


def test_bnt_grid_becomes_a_mesh_without_background(tmp_path):
    grid = plane_grid()
    zmin = -1e9
    grid[0, 0, 2] = zmin  # one background corner: the cell there keeps only its far triangle
    uv = np.stack([np.linspace(0, 1, 20), np.linspace(1, 0, 20)], axis=1)
    mesh = load_mesh(write(tmp_path, "bs001_E_HAPPY_0.bnt", bnt_bytes(grid, zmin, uv=uv)))
    assert mesh.num_vertices == 19
    assert mesh.num_faces == 2 * 3 * 4 - 1
    assert np.allclose(mesh.vertices, grid.reshape(-1, 3)[1:])
    assert mesh.metadata["image"] == "bs001_E_HAPPY_0.png"
    assert mesh.metadata["grid_shape"] == (4, 5)
    assert np.allclose(mesh.metadata["uv"], uv[1:])


def test_bnt_drops_triangles_with_overly_long_edges(tmp_path):
    grid = plane_grid()
    grid[2, 2, 2] = 60.0  # a spike 50 grid steps high: the 6 triangles around it are not skin
    mesh = load_mesh(write(tmp_path, "spike.bnt", bnt_bytes(grid, zmin=-1e9)))
    assert mesh.num_faces == 2 * 3 * 4 - 6


def test_every_truncation_of_a_bnt_file_gives_a_mesh_error(tmp_path):
    data = bnt_bytes(plane_grid(2, 3), zmin=-1e9)
    for length in range(len(data)):
        with pytest.raises(MeshError, match="truncated|empty"):
            load_mesh(write(tmp_path, "cut.bnt", data[:length]))


@pytest.mark.parametrize("build, reason", [
    (lambda: bnt_bytes(plane_grid(), -1e9, count=99), "header says 99 values"),
    (lambda: bnt_bytes(np.zeros((0, 4, 3)), -1e9), "empty grid"),
    (lambda: bnt_bytes(np.full((3, 3, 3), -1e9), -1e9), "no faces"),
    (lambda: bnt_bytes(np.where(np.arange(60).reshape(4, 5, 3) == 7, np.inf, plane_grid()), -1e9), "infinite"),
    (lambda: bnt_bytes(plane_grid(), -1e9, uv=np.full((20, 2), np.nan)), "texture coordinates"),
])
def test_malformed_bnt_gives_a_mesh_error(tmp_path, build, reason):
    path = write(tmp_path, "bad.bnt", build())
    with pytest.raises(MeshError, match=reason):
        load_mesh(path)


# ---------------------------------------------------------------- errors common to every format

@pytest.mark.parametrize("suffix", ["obj", "ply", "off", "stl", "glb", "wrl", "bnt"])
def test_empty_file_is_a_mesh_error(tmp_path, suffix):
    with pytest.raises(MeshError, match="empty|truncated|not a VRML"):
        load_mesh(write(tmp_path, f"empty.{suffix}", b""))


@pytest.mark.parametrize("suffix", ["obj", "ply", "off", "stl", "glb", "wrl", "bnt"])
def test_binary_garbage_is_a_mesh_error(tmp_path, suffix):
    garbage = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(MeshError):
        load_mesh(write(tmp_path, f"garbage.{suffix}", garbage))


def test_obj_with_out_of_range_or_missing_faces(tmp_path):
    with pytest.raises(MeshError, match="no faces"):
        load_mesh(write(tmp_path, "points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"))


def test_unknown_suffix_and_missing_file_are_mesh_errors(tmp_path):
    with pytest.raises(MeshError, match="unknown mesh format '.xyz'"):
        load_mesh(write(tmp_path, "cloud.xyz", "0 0 0\n"))
    with pytest.raises(MeshError, match="no such file"):
        load_mesh(tmp_path / "absent.obj")
    (tmp_path / "folder.obj").mkdir()
    with pytest.raises(MeshError, match="no such file"):
        load_mesh(tmp_path / "folder.obj")


@pytest.mark.parametrize("suffix", ["obj", "wrl", "bnt"])
def test_face_limit_is_enforced(tmp_path, suffix):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / f"big.{suffix}"
    if suffix == "bnt":
        path.write_bytes(bnt_bytes(plane_grid(20, 20), zmin=-1e9))
    else:
        save_mesh(path, Mesh(sphere.vertices.astype(np.float32), sphere.faces.astype(np.int32)))
    assert load_mesh(path, max_faces=1000).num_faces > 100
    with pytest.raises(MeshError, match="more (faces )?than the limit of 100"):
        load_mesh(path, max_faces=100)


def test_wrong_checked_arrays_are_rejected():
    from affectvlm.geometry.mesh import checked_mesh

    with pytest.raises(MeshError, match=r"x: face index out of range \[0, 5\)"):
        checked_mesh("x", SQUARE_POINTS, [[0, 1, 5]])
    with pytest.raises(MeshError, match="must be integers"):
        checked_mesh("x", SQUARE_POINTS, np.array([[0, 1, 2.5]]))
    with pytest.raises(MeshError, match="too large for float32"):
        checked_mesh("x", SQUARE_POINTS * 1e300, [[0, 1, 2]])
    with pytest.raises(MeshError, match="must be numbers"):
        checked_mesh("x", np.array([["a", "b", "c"]]), [[0, 0, 0]])
    with pytest.raises(MeshError, match=r"shape \(V, 3\)"):
        checked_mesh("x", SQUARE_POINTS[:, :2], [[0, 1, 2]])
