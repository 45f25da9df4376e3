"""The rasteriser: C++ kernel against the PyTorch reference, analytic scenes, fill rule, layouts, bad input.

CUDA tests (marked `cuda`) hold the CUDA kernel to the CPU kernel and the reference; they skip without a GPU.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from raster_scenes import (flat_cube, frontal_orthographic, grid_square, icosphere, random_cameras,
                           random_mesh)

from affectvlm._ext import extension
from affectvlm.geometry.cameras import Cameras, look_at, orbit_cameras, perspective, view_cameras
from affectvlm.ops.raster import (CHANNEL_WIDTHS, DEFAULT_CHANNELS, channel_layout, pack_meshes, render_views,
                                  vertex_normals)

ALL_CHANNELS = ("depth", "normal", "shading", "mask", "normal_rgb", "attributes")


def render_both(vertices, faces, cameras, size, **options):
    """The same call through the C++ kernel and the reference: (images, fragments) of each."""
    common = dict(channels=ALL_CHANNELS, return_fragments=True, return_barycentrics=True, **options)
    return (render_views(vertices, faces, cameras, size, backend="kernel", **common),
            render_views(vertices, faces, cameras, size, backend="reference", **common))


def assert_same_render(kernel, reference):
    (images, fragments), (ref_images, ref_fragments) = kernel, reference
    assert torch.equal(fragments.triangle_ids, ref_fragments.triangle_ids)
    torch.testing.assert_close(images, ref_images, rtol=0, atol=1e-5)
    torch.testing.assert_close(fragments.barycentrics, ref_fragments.barycentrics, rtol=0, atol=1e-5)


def raw_kernel_render(vertices, faces, cameras, size, channels, fill=float("nan"), **options):
    """`_C.render_views` on outputs prefilled with `fill` / a sentinel id, so unwritten elements show."""
    batch = pack_meshes(vertices, faces)
    clip, view = cameras.world_to_clip.float().contiguous(), cameras.world_to_view.float().contiguous()
    num_channels = sum(CHANNEL_WIDTHS[c] for c in channels)
    shape = (batch.num_meshes, cameras.num_views)
    images = torch.full((*shape, num_channels, size, size), fill)
    ids = torch.full((*shape, size, size), -7, dtype=torch.int32)
    bary = torch.full((*shape, 3, size, size), fill)
    normals = vertex_normals(batch)
    extension().render_views(batch.vertices, batch.faces, batch.meshes, clip, view, images, ids, channels=channels,
                             normals=normals, barycentrics=bary, **options)
    return images, ids, bary


@pytest.mark.parametrize("seed", range(8))
def test_kernel_matches_reference_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = random_mesh(rng, int(rng.integers(20, 120)), int(rng.integers(50, 300)))
    attributes = torch.from_numpy(rng.standard_normal((len(vertices), 2))).float()
    cameras = random_cameras(rng, num_views=int(rng.integers(1, 4)))
    size = int(rng.integers(24, 49))
    kernel, reference = render_both(vertices, faces, cameras, size, attributes=attributes,
                                    cull_backfaces=bool(seed % 2), light=tuple(rng.standard_normal(3)),
                                    ambient=float(rng.uniform(0, 0.5)))
    assert (kernel[1].triangle_ids >= 0).any()
    assert_same_render(kernel, reference)


def test_kernel_matches_reference_on_a_generated_face():
    from affectvlm.data.procedural_face import ProceduralFaceModel
    from affectvlm.geometry import Mesh, normalise

    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(1)))
    mesh = normalise(Mesh(rig.pose({}).astype(np.float32), model.faces))
    keep = np.random.default_rng(2).permutation(len(mesh.faces))[:1500]  # the reference is slow on 21k faces
    kernel, reference = render_both(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces[keep]),
                                    view_cameras(), 40, attributes=torch.from_numpy(mesh.vertices))
    assert_same_render(kernel, reference)


def test_every_output_element_is_written():
    rng = np.random.default_rng(5)
    vertices, faces = random_mesh(rng, 50, 200)
    images, ids, bary = raw_kernel_render(vertices, faces, random_cameras(rng, 3), 37,
                                          ["depth", "normal", "shading", "mask", "normal_rgb"])
    assert not images.isnan().any() and not bary.isnan().any()
    assert not (ids == -7).any()
    assert (ids >= 0).any() and (ids == -1).any()


def test_plane_at_a_known_distance():
    square = torch.tensor([[-5.0, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]]), torch.tensor([[0, 1, 2], [0, 2, 3]])
    for distance in (1.7, 2.5, 4.0):
        cameras = orbit_cameras([(0.0, 0.0)], distance=distance, fov_degrees=50)
        images, ids, _ = raw_kernel_render(*square, cameras, 32, ["depth", "mask"], normalise_depth=False)
        assert (ids >= 0).all()
        torch.testing.assert_close(images[0, 0, 0], torch.full((32, 32), distance), rtol=1e-6, atol=0)


def test_sphere_depth_is_analytic():
    size, half_height, distance = 64, 1.25, 3.0
    images, ids, _ = raw_kernel_render(*icosphere(5), frontal_orthographic(half_height, distance), size,
                                       ["depth", "mask"], normalise_depth=False)
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    x = centres[None, :] * half_height
    y = -centres[:, None] * half_height
    radius = torch.sqrt(x**2 + y**2)
    inside, outside = radius < 0.98, radius > 1.0
    expected = distance - torch.sqrt((1 - radius**2).clamp_min(0))
    assert (ids[0, 0][inside] >= 0).all() and (ids[0, 0][outside] == -1).all()
    # An icosphere of 5 subdivisions lies within 0.1% of the sphere.
    torch.testing.assert_close(images[0, 0, 0][inside], expected[inside], rtol=0, atol=2e-3)


def test_cube_normals_are_its_side_normals_in_camera_space():
    vertices, faces, side_normals = flat_cube()
    view = look_at((2.0, 1.5, 2.5))
    cameras = Cameras(view[None, None].float(), perspective(40)[None, None].float())
    images, fragments = render_views(vertices, faces, cameras, 48, channels=("normal",), return_fragments=True)
    ids = fragments.triangle_ids[0, 0]
    expected = torch.from_numpy(side_normals).float() @ view[:3, :3].float().T
    covered = ids >= 0
    torch.testing.assert_close(images[0, 0].permute(1, 2, 0)[covered], expected[ids[covered].long()],
                               rtol=0, atol=1e-5)
    seen_sides = set((ids[covered] // 2).tolist())
    assert seen_sides == {1, 3, 5}  # +x, +y, +z face the camera; their 6 triangles and no others
    assert (images[0, 0, 2][covered] > 0).all()  # camera-space normals point towards the camera


def test_normal_rgb_is_the_normal_as_a_colour_with_a_black_background():
    rng = np.random.default_rng(11)
    vertices, faces = random_mesh(rng, 60, 200)
    images = render_views(vertices, faces, random_cameras(rng, 3), 40, channels=("normal_rgb", "normal", "mask"))
    colour, normal, mask = images[:, :, 0:3], images[:, :, 3:6], images[:, :, 6:7]
    assert mask.any() and not mask.all()
    torch.testing.assert_close(colour, (normal + 1) / 2 * mask, rtol=0, atol=1e-7)
    assert colour.min() >= 0 and colour.max() <= 1


def test_normals_given_replace_the_computed_ones():
    rng = np.random.default_rng(12)
    vertices, faces = random_mesh(rng, 40, 120)
    cameras = random_cameras(rng, 2)
    computed = render_views(vertices, faces, cameras, 32, channels=("normal", "shading"))
    given = vertex_normals(pack_meshes(vertices, faces))
    assert torch.equal(render_views(vertices, faces, cameras, 32, channels=("normal", "shading"), normals=given),
                       computed)
    flipped = render_views(vertices, faces, cameras, 32, channels=("normal",), normals=-given)
    torch.testing.assert_close(flipped, -computed[:, :, 0:3], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"normals must hold 3 values for each of the 40 vertices, got shape \(40, 2"):
        render_views(vertices, faces, cameras, 32, channels=("normal",), normals=given[:, :2])
    with pytest.raises(ValueError, match="normals contain NaN"):
        render_views(vertices, faces, cameras, 32, channels=("normal",), normals=given * float("nan"))
    with pytest.raises(TypeError, match="normals must be a floating-point tensor"):
        render_views(vertices, faces, cameras, 32, channels=("normal",), normals=given.int())


def test_the_reference_refuses_normal_channels_without_normals_as_the_kernel_does():
    from affectvlm.ops.reference import render_views_reference

    arguments = _direct_arguments()
    for channels in (["normal_rgb"], ["mask", "shading"]):
        with pytest.raises(ValueError, match="normals are needed by the normal, normal_rgb and shading channels"):
            extension().render_views(**{**arguments, "channels": channels})
        images = torch.zeros(1, 1, sum(CHANNEL_WIDTHS[c] for c in channels), 8, 8)
        with pytest.raises(ValueError, match="normals are needed by the normal, normal_rgb and shading channels"):
            render_views_reference(arguments["vertices"], arguments["faces"], arguments["meshes"],
                                   arguments["world_to_clip"], arguments["world_to_view"], images,
                                   torch.zeros(1, 1, 8, 8, dtype=torch.int32), channels=channels)


def test_perspective_correct_interpolation():
    tilt = math.radians(50)
    rotation = torch.tensor([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    vertices = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]) @ rotation.T
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fov, distance, size = 60.0, 2.5, 48
    cameras = orbit_cameras([(0.0, 0.0)], distance=distance, fov_degrees=fov)
    images, fragments = render_views(vertices, faces, cameras, size, channels=("attributes",), attributes=vertices,
                                     return_fragments=True)
    # The ray through each pixel centre meets the plane where the interpolated world position says.
    ndc = (torch.arange(size) + 0.5) / size * 2 - 1
    focal = 1 / math.tan(math.radians(fov) / 2)
    direction = torch.stack(torch.broadcast_tensors(ndc[None, :] / focal, -ndc[:, None] / focal,
                                                    torch.tensor(-1.0)), dim=-1)
    eye = torch.tensor([0.0, 0.0, distance])
    normal = rotation[:, 2]
    hit = eye + (-(normal @ eye) / (direction @ normal))[..., None] * direction
    covered = fragments.triangle_ids[0, 0] >= 0
    assert covered.sum() > size * size / 4
    torch.testing.assert_close(images[0, 0].permute(1, 2, 0)[covered], hit[covered], rtol=0, atol=1e-3)


@pytest.mark.parametrize("flip_some", [False, True])
@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_tessellated_square_covers_each_inside_pixel_exactly_once(jitter, flip_some):
    rng = np.random.default_rng(11)
    size, half_size = 32, 0.75
    vertices, faces = grid_square(8, half_size, jitter, rng, flip_some)
    # Unjittered, the grid lines run through pixel centres: every tie goes through the fill rule.
    cameras = frontal_orthographic(half_height=1.0)
    one_mesh_per_triangle = ([vertices] * len(faces), [f[None] for f in faces])
    _, ids, _ = raw_kernel_render(*one_mesh_per_triangle, cameras, size, ["mask"])
    coverage = (ids[:, 0] >= 0).sum(dim=0)
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    inside = (centres[None, :].abs() < half_size) & (centres[:, None].abs() < half_size)
    assert (coverage[inside] == 1).all()
    assert (coverage[~inside] <= 1).all()
    reference = render_views(*one_mesh_per_triangle, cameras, size, channels=("mask",), backend="reference")
    assert torch.equal((reference[:, 0, 0] > 0).sum(dim=0), coverage)


def test_coincident_triangles_resolve_to_the_lowest_id():
    rng = np.random.default_rng(3)
    vertices, faces = random_mesh(rng, 30, 40)
    doubled = torch.cat([faces, faces])
    _, ids, _ = raw_kernel_render(vertices, doubled, random_cameras(rng, 2), 32, ["mask"])
    assert (ids < len(faces)).all() and (ids >= 0).any()


def test_backface_culling_keeps_counter_clockwise_triangles():
    front = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])
    back = front[0], torch.tensor([[0, 2, 1]])
    cameras = frontal_orthographic(1.5)
    for (vertices, faces), drawn in ((front, True), (back, False)):
        images = render_views(vertices, faces, cameras, 16, channels=("mask",), cull_backfaces=True)
        assert bool(images.any()) == drawn
        assert render_views(vertices, faces, cameras, 16, channels=("mask",)).any()


def test_triangles_crossing_the_near_plane_are_rejected():
    cameras = orbit_cameras([(0.0, 0.0)], distance=3.0, near=1.0)
    in_front = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0]])
    crossing = torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 0.2, 2.5]])  # apex 0.5 from the eye, inside near
    faces = torch.tensor([[0, 1, 2]])
    assert render_views(in_front, faces, cameras, 16, channels=("mask",)).any()
    for backend in ("kernel", "reference"):
        assert not render_views(crossing, faces, cameras, 16, channels=("mask",), backend=backend).any()


def test_shared_topology_and_packed_batches_equal_per_mesh_renders():
    rng = np.random.default_rng(8)
    _, faces = random_mesh(rng, 40, 120)
    frames = torch.from_numpy(rng.standard_normal((4, 40, 3)) * 0.5).float()
    cameras = view_cameras(["frontal", "left", "right", "up"])
    batched = render_views(frames, faces, cameras, 32, channels=ALL_CHANNELS, attributes=frames)
    for b in range(4):
        single = render_views(frames[b], faces, cameras, 32, channels=ALL_CHANNELS, attributes=frames[b])
        assert torch.equal(batched[b], single[0])

    meshes = [random_mesh(rng, int(n), int(2 * n)) for n in (10, 60, 25)]
    per_mesh_cameras = random_cameras(rng, num_views=2, sets=3)
    packed = render_views([m[0] for m in meshes], [m[1] for m in meshes], per_mesh_cameras, 32,
                          channels=ALL_CHANNELS, attributes=[m[0] for m in meshes])
    for b, (vertices, faces) in enumerate(meshes):
        own = Cameras(per_mesh_cameras.world_to_view[b:b + 1], per_mesh_cameras.projection[b:b + 1])
        single = render_views(vertices, faces, own, 32, channels=ALL_CHANNELS, attributes=vertices)
        assert torch.equal(packed[b], single[0])


def rows_and_copies(rng: np.random.Generator, shared_topology: bool):
    """Meshes, a random choice of rows among them (repeats, omissions, any order), and the chosen meshes copied."""
    if shared_topology:
        _, faces = random_mesh(rng, 40, 120)
        vertices = torch.from_numpy(rng.standard_normal((4, 40, 3)) * 0.5).float()
        rows = torch.from_numpy(rng.integers(0, 4, 7))
        return vertices, faces, rows, vertices[rows], faces
    meshes = [random_mesh(rng, int(n), int(2 * n)) for n in rng.integers(10, 60, 4)]
    rows = torch.from_numpy(rng.integers(0, 4, 7))
    vertices, faces = [m[0] for m in meshes], [m[1] for m in meshes]
    return vertices, faces, rows, [vertices[r] for r in rows], [faces[r] for r in rows]


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("shared_topology", [True, False])
def test_rows_render_the_meshes_they_name_as_copies_of_them_would(backend, shared_topology):
    rng = np.random.default_rng(9 + shared_topology)
    vertices, faces, rows, copied_vertices, copied_faces = rows_and_copies(rng, shared_topology)
    cameras = random_cameras(rng, num_views=2, sets=len(rows))
    options = dict(channels=ALL_CHANNELS, attributes=vertices, return_fragments=True, backend=backend)
    drawn = render_views(vertices, faces, cameras, 24, rows=rows, **options)
    copied = render_views(copied_vertices, copied_faces, cameras, 24, **{**options, "attributes": copied_vertices})
    assert drawn[0].shape[:2] == (len(rows), 2)
    assert torch.equal(drawn[1].triangle_ids, copied[1].triangle_ids)
    assert torch.equal(drawn[0], copied[0])


@pytest.mark.parametrize("rows, error, message", [
    (torch.tensor([0, 2]), ValueError, "rows name mesh 2 but there are 2 meshes"),
    (torch.tensor([-1]), ValueError, "rows name mesh -1"),
    (torch.tensor([0.0]), ValueError, "rows must be a non-empty 1-D tensor"),
    (torch.tensor([[0]]), ValueError, "rows must be a non-empty 1-D tensor"),
    (torch.tensor([], dtype=torch.int64), ValueError, "rows must be a non-empty 1-D tensor"),
    (torch.tensor([0, 1, 1]), ValueError, "cameras hold 2 sets of views; expected 1 or one per mesh \\(3\\)"),
])
def test_bad_rows_raise_a_clear_error(rows, error, message):
    vertices, faces = _triangle()
    cameras = frontal_orthographic()
    two_sets = Cameras(cameras.world_to_view.expand(2, 1, 4, 4), cameras.projection.expand(2, 1, 4, 4))
    with pytest.raises(error, match=message):
        render_views(vertices.expand(2, 3, 3), faces, two_sets, 16, rows=rows)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_depth_is_normalised_per_view_over_the_mask(backend):
    sphere, cameras = icosphere(3), view_cameras()
    images = render_views(*sphere, cameras, 32, channels=("depth", "mask"), backend=backend)
    distance = render_views(*sphere, cameras, 32, channels=("depth",), normalise_depth=False, backend=backend)
    depth, mask = images[0, :, 0], images[0, :, 1] > 0
    for k in range(3):
        covered = distance[0, k, 0][mask[k]]
        expected = (covered.max() - covered) / (covered.max() - covered.min())
        torch.testing.assert_close(depth[k][mask[k]], expected, rtol=0, atol=1e-6)
        assert depth[k][mask[k]].max() == 1.0 and depth[k][mask[k]].min() == 0.0
        assert (depth[k][~mask[k]] == 0).all()


def test_depth_of_a_tilted_plane_falls_linearly_and_a_facing_plane_is_flat():
    tilt = math.radians(30)
    plane = torch.tensor([[-3.0, -3, 0], [3, -3, 0], [3, 3, 0], [-3, 3, 0]]), torch.tensor([[0, 1, 2], [0, 2, 3]])
    tilted = plane[0] @ torch.tensor([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)],
                                      [0, math.sin(tilt), math.cos(tilt)]]).T
    cameras = frontal_orthographic(1.0)
    depth = render_views(tilted, plane[1], cameras, 16, channels=("depth",))[0, 0, 0]
    # The top of the plane leans towards the camera: row 0 is nearest (1), the last row farthest (0).
    expected = (1 - torch.arange(16) / 15.0)[:, None].expand(16, 16)
    torch.testing.assert_close(depth, expected, rtol=0, atol=1e-5)
    facing = render_views(*plane, orbit_cameras([(0.0, 0.0)], distance=2.5), 16, channels=("depth",))
    assert (facing == 1).all()


def test_reference_fallback_renders_where_asked():
    rng = np.random.default_rng(4)
    vertices, faces = random_mesh(rng, 30, 60)
    cameras = random_cameras(rng, 2)
    kernel = render_views(vertices, faces, cameras, 24, backend="auto")
    reference = render_views(vertices, faces, cameras, 24, backend="reference")
    torch.testing.assert_close(kernel, reference, rtol=0, atol=1e-5)


def test_each_channel_of_the_kernels_table_has_its_width_in_kernel_and_reference():
    """`_C.raster_channels()` is the one table of channels: the kernel, the reference and channel_layout all
    give each channel the planes it lists, and the extension names exactly these channels when refusing one."""
    table = extension().raster_channels()
    assert list(table)[:4] == list(DEFAULT_CHANNELS) and table["attributes"] is None
    rng = np.random.default_rng(9)
    vertices, faces = random_mesh(rng, 30, 60)
    cameras = random_cameras(rng, 2)
    attributes = torch.from_numpy(rng.standard_normal((30, 5))).float()
    (kernel, _), (reference, _) = render_both(vertices, faces, cameras, 12, attributes=attributes)
    layout = channel_layout(ALL_CHANNELS, num_attributes=5)
    for name, width in table.items():
        alone = render_views(vertices, faces, cameras, 12, channels=(name,), attributes=attributes)
        assert alone.shape[2] == (width or 5) == layout[name].stop - layout[name].start
        torch.testing.assert_close(alone, kernel[:, :, layout[name]], rtol=0, atol=1e-5)
        torch.testing.assert_close(alone, reference[:, :, layout[name]], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected one of " + ", ".join(table) + "$"):
        extension().render_views(**{**_direct_arguments(), "channels": ["sparkle"]})


def _triangle():
    return torch.tensor([[-1.0, -1, 0], [1, -1, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]])


@pytest.mark.parametrize("change, error, message", [
    (lambda v, f, c: (v, f + 5, c), ValueError, "faces index vertex 7 but the mesh has 3 vertices"),
    (lambda v, f, c: (v, f - 1, c), ValueError, "faces hold a negative vertex index"),
    (lambda v, f, c: (v.index_fill(0, torch.tensor([1]), float("nan")), f, c), ValueError, "vertices contain NaN"),
    (lambda v, f, c: (v[:0], f, c), ValueError, "vertices must have shape"),
    (lambda v, f, c: (v, f[:0], c), ValueError, "faces must have shape (F, 3) with F >= 1"),
    (lambda v, f, c: (v[:, :2], f, c), ValueError, "vertices must have shape"),
    (lambda v, f, c: (v.int(), f, c), TypeError, "vertices must be floating point"),
    (lambda v, f, c: (v, f.float(), c), TypeError, "faces must hold integer indices"),
    (lambda v, f, c: (v, f[:, :2], c), ValueError, "faces must have shape (F, 3)"),
    (lambda v, f, c: ([v, v], [f], c), ValueError, "same length"),
    (lambda v, f, c: (v.expand(2, 3, 3), f, Cameras(c.world_to_view.expand(3, 1, 4, 4),
                                                    c.projection.expand(3, 1, 4, 4))), ValueError, "expected 1 or"),
    (lambda v, f, c: (v, f, "frontal"), TypeError, "cameras must be"),
])
def test_bad_input_raises_a_clear_error(change, error, message):
    vertices, faces, cameras = change(*_triangle(), frontal_orthographic())
    for backend in ("kernel", "reference"):
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            render_views(vertices, faces, cameras, 16, backend=backend)


def test_bad_options_raise_a_clear_error():
    vertices, faces = _triangle()
    cameras = frontal_orthographic()
    for options, message in [({"channels": ("depth", "colour")}, "unknown channel 'colour'"),
                             ({"channels": ("mask", "mask")}, "listed twice"),
                             ({"channels": ("attributes",)}, "needs attributes="),
                             ({"attributes": torch.zeros(2, 1)}, "for each of the 3 vertices"),
                             ({"light": (0, 0, 0)}, "light must be"),
                             ({"backend": "gpu"}, "unknown backend")]:
        with pytest.raises(ValueError, match=message):
            render_views(vertices, faces, cameras, 16, **options)
    for size in (0, (16, -1), 2.5):
        with pytest.raises(ValueError, match="image_size"):
            render_views(vertices, faces, cameras, size)
    with pytest.raises(ValueError, match="zero views"):
        view_cameras([])
    with pytest.raises(ValueError, match="zero views"):
        Cameras(torch.zeros(1, 0, 4, 4), torch.zeros(1, 0, 4, 4))


def _direct_arguments():
    vertices, faces = _triangle()
    batch = pack_meshes(vertices, faces)
    cameras = frontal_orthographic()
    return dict(vertices=batch.vertices, faces=batch.faces, meshes=batch.meshes,
                world_to_clip=cameras.world_to_clip.float(), world_to_view=cameras.world_to_view.float(),
                images=torch.zeros(1, 1, 1, 8, 8), triangle_ids=torch.zeros(1, 1, 8, 8, dtype=torch.int32),
                channels=["mask"])


@pytest.mark.parametrize("name, value, message", [
    ("faces", torch.tensor([[0, 1, 3]], dtype=torch.int32), r"faces must hold values in \[0, 3\), got 3"),
    ("faces", torch.tensor([[0, -1, 2]], dtype=torch.int32), r"faces must hold values in \[0, 3\), got -1"),
    ("faces", torch.tensor([[0, 1, 2]], dtype=torch.int64), "faces must have dtype int32"),
    ("meshes", torch.tensor([[0, 4, 0, 1]]), "meshes row 0: vertices"),
    ("meshes", torch.tensor([[0, 3, 1, 1]]), "meshes row 0: faces"),
    ("meshes", torch.tensor([[-1, 3, 0, 1]]), "meshes row 0: vertices"),
    ("meshes", torch.zeros(0, 4, dtype=torch.int64), "meshes is empty"),
    ("vertices", torch.zeros(0, 3), "vertices is empty"),
    ("vertices", torch.zeros(3, 3, dtype=torch.float64), "vertices must have dtype float32"),
    ("world_to_clip", torch.zeros(1, 0, 4, 4), "zero views"),
    ("world_to_clip", torch.zeros(2, 1, 4, 4), "cameras for 1 or 1 meshes"),
    ("world_to_view", torch.zeros(1, 2, 4, 4), "world_to_view must have size 1 in dimension 1"),
    ("images", torch.zeros(1, 1, 2, 8, 8), "images must have size 1 in dimension 2"),
    ("images", torch.zeros(1, 1, 1, 8, 16)[..., ::2], "images must be contiguous"),
    ("triangle_ids", torch.zeros(1, 1, 8, 8), "triangle_ids must have dtype int32"),
    ("channels", ["mask", "normal"], "normals are needed"),
    ("channels", ["sparkle"], "unknown channel 'sparkle'"),
])
def test_extension_rejects_bad_arguments_without_touching_memory(name, value, message):
    arguments = _direct_arguments()
    arguments[name] = value
    with pytest.raises((ValueError, TypeError), match=message):
        extension().render_views(**arguments)


@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(6))
def test_cuda_kernel_matches_cpu_kernel_and_reference(seed):
    rng = np.random.default_rng(100 + seed)
    meshes = [random_mesh(rng, int(rng.integers(20, 200)), int(rng.integers(50, 600))) for _ in range(3)]
    cameras = random_cameras(rng, num_views=3, sets=3 if seed % 2 else 1)
    options = dict(channels=ALL_CHANNELS, return_fragments=True, return_barycentrics=True,
                   cull_backfaces=bool(seed % 3 == 0), attributes=[m[0] for m in meshes])
    size = int(rng.integers(24, 64))
    cpu = render_views([m[0] for m in meshes], [m[1] for m in meshes], cameras, size, **options)
    cuda_options = {**options, "attributes": [m[0].cuda() for m in meshes]}
    gpu = render_views([m[0].cuda() for m in meshes], [m[1].cuda() for m in meshes], cameras.to("cuda"), size,
                       **cuda_options)
    assert torch.equal(gpu[1].triangle_ids.cpu(), cpu[1].triangle_ids)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(gpu[1].barycentrics.cpu(), cpu[1].barycentrics, rtol=0, atol=1e-5)
    reference = render_views([m[0] for m in meshes], [m[1] for m in meshes], cameras, size, backend="reference",
                             **options)
    assert torch.equal(gpu[1].triangle_ids.cpu(), reference[1].triangle_ids)


@pytest.mark.cuda
def test_cuda_shared_topology_and_large_triangles_match_cpu():
    rng = np.random.default_rng(7)
    _, faces = random_mesh(rng, 300, 2000)
    frames = torch.from_numpy(rng.standard_normal((5, 300, 3)) * 0.5).float()
    cameras = view_cameras()
    cpu = render_views(frames, faces, cameras, 96, return_fragments=True)
    gpu = render_views(frames.cuda(), faces.cuda(), cameras, 96, return_fragments=True)
    assert torch.equal(gpu[1].triangle_ids.cpu(), cpu[1].triangle_ids)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5)
    cube_cpu = render_views(*flat_cube()[:2], view_cameras(), 128, return_fragments=True)
    cube_gpu = render_views(*(t.cuda() for t in flat_cube()[:2]), view_cameras(), 128, return_fragments=True)
    assert torch.equal(cube_gpu[1].triangle_ids.cpu(), cube_cpu[1].triangle_ids)


@pytest.mark.cuda
@pytest.mark.parametrize("shared_topology", [True, False])
def test_cuda_rows_render_as_on_the_cpu(shared_topology):
    rng = np.random.default_rng(30 + shared_topology)
    vertices, faces, rows, _, _ = rows_and_copies(rng, shared_topology)
    cameras = random_cameras(rng, num_views=2, sets=len(rows))
    cpu = render_views(vertices, faces, cameras, 48, channels=ALL_CHANNELS, attributes=vertices, rows=rows,
                       return_fragments=True)
    on_gpu = [v.cuda() for v in vertices] if isinstance(vertices, list) else vertices.cuda()
    gpu_faces = [f.cuda() for f in faces] if isinstance(faces, list) else faces.cuda()
    gpu = render_views(on_gpu, gpu_faces, cameras.to("cuda"), 48, channels=ALL_CHANNELS, attributes=on_gpu,
                       rows=rows.cuda(), return_fragments=True)
    assert torch.equal(gpu[1].triangle_ids.cpu(), cpu[1].triangle_ids)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_cuda_writes_every_output_element_and_checks_faces():
    rng = np.random.default_rng(9)
    vertices, faces = random_mesh(rng, 50, 200)
    batch = pack_meshes(vertices.cuda(), faces.cuda())
    cameras = random_cameras(rng, 3).to("cuda")
    images = torch.full((1, 3, 9, 40, 40), float("nan"), device="cuda")
    ids = torch.full((1, 3, 40, 40), -7, dtype=torch.int32, device="cuda")
    bary = torch.full((1, 3, 3, 40, 40), float("nan"), device="cuda")
    zbuffer = torch.empty((1, 3, 40, 40), dtype=torch.int64, device="cuda")
    extension().render_views(batch.vertices, batch.faces, batch.meshes, cameras.world_to_clip.float().contiguous(),
                             cameras.world_to_view.float().contiguous(), images, ids,
                             channels=["depth", "normal", "shading", "mask", "normal_rgb"],
                             normals=vertex_normals(batch), barycentrics=bary, zbuffer=zbuffer,
                             stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert not images.isnan().any() and not bary.isnan().any() and not (ids == -7).any()
    with pytest.raises(ValueError, match="faces index vertex 50"):
        render_views(vertices.cuda(), torch.cat([faces, torch.tensor([[0, 1, 50]])]).cuda(), view_cameras(), 16)


def test_extension_drops_non_finite_vertices_without_reading_them_as_positions():
    arguments = _direct_arguments()
    arguments["vertices"] = arguments["vertices"].clone()
    arguments["vertices"][1] = float("nan")
    arguments["images"] = torch.full((1, 1, 1, 8, 8), -1.0)
    extension().render_views(**arguments)
    assert (arguments["images"] == 0).all() and (arguments["triangle_ids"] == -1).all()


def small_triangle_soup(rng: np.random.Generator, num_faces: int):
    """Triangles of up to a few pixels at 48 px, as a face mesh has at 224 px, with some larger ones and some
    behind the camera among them: the vectorised depth test takes eight at a time, the rest go one by one."""
    centres = rng.uniform(-0.9, 0.9, (num_faces, 1, 3))
    sizes = np.where(rng.random((num_faces, 1, 1)) < 0.9, 0.03, 0.4)
    vertices = (centres + rng.standard_normal((num_faces, 3, 3)) * sizes).reshape(-1, 3)
    vertices[rng.random(len(vertices)) < 0.02, 2] = 5.0  # beyond the camera at distance 3
    return torch.from_numpy(vertices).float(), torch.arange(3 * num_faces, dtype=torch.int32).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_depth_test_matches_reference_on_small_triangles(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = small_triangle_soup(rng, 403)
    kernel, reference = render_both(vertices, faces, random_cameras(rng, 2), 48, attributes=vertices,
                                    cull_backfaces=bool(seed % 2))
    assert (kernel[1].triangle_ids >= 0).sum() > 200
    assert_same_render(kernel, reference)


def tie_camera():
    """Identity view and projection: pixel x of a vertex at world x is (x / 2 + 1 / 2) * size, exactly."""
    identity = torch.eye(4).reshape(1, 1, 4, 4)
    return Cameras(identity, identity.clone())


@pytest.mark.parametrize("subpixels_right, columns_right", [(0.5, 0), (0.75, 1)])
def test_positions_round_to_the_nearest_subpixel_and_halfway_to_even(subpixels_right, columns_right):
    """Fixed-point positions round like rintf. Rectangles whose left and right sides lie half a subpixel right
    of a pixel centre (an even fixed-point value) land on that centre, which the fill rule gives to the
    left side only; three quarters of a subpixel right, they land right of it and the rectangle covers one
    column further right. (Rounding halfway cases up, or truncating, would shift one of the two.)"""
    size, subpixels = 16, 256
    rows = [(1, 4), (5, 8), (9, 12), (13, 16)]

    def world_x(column):
        return ((column + 0.5) * subpixels + subpixels_right) / (size * subpixels) * 2 - 1

    def world_y(row):
        return 1 - row / size * 2

    vertices, faces, expected = [], [], torch.zeros(size, size, dtype=torch.bool)
    for number, (top, bottom) in enumerate(rows):
        left, right = 1 + 2 * number, 9 + number
        corners = [(world_x(left), world_y(top)), (world_x(right), world_y(top)),
                   (world_x(right), world_y(bottom)), (world_x(left), world_y(bottom))]
        start = len(vertices)
        vertices += [(x, y, 0.0) for x, y in corners]
        faces += [(start, start + 3, start + 2), (start, start + 2, start + 1)]
        expected[top:bottom, left + columns_right:right + columns_right] = True
    vertices, faces = torch.tensor(vertices), torch.tensor(faces, dtype=torch.int32)
    fixed_x = (vertices[:, 0] * 0.5 + 0.5) * size * subpixels
    assert torch.equal(fixed_x % 1, torch.full_like(fixed_x, subpixels_right))  # the world positions are exact
    kernel, reference = render_both(vertices, faces, tie_camera(), size, attributes=vertices)
    assert torch.equal(kernel[1].triangle_ids[0, 0] >= 0, expected)
    assert_same_render(kernel, reference)


def test_small_triangles_across_the_image_border_stay_inside_it():
    """A triangle whose 2 x 2 pixel box is cut by the image's edge must not reach past it: not into the next
    row (right edge), nor past the last row (bottom edge)."""
    rng = np.random.default_rng(3)
    size, count = 16, 64
    border = rng.choice([-1.0, 1.0], (count, 1, 2)) * (rng.random((count, 1, 2)) < 0.5)
    centres = np.where(border != 0, border, rng.uniform(-1, 1, (count, 1, 2)))
    corners = centres + rng.uniform(-1.5, 1.5, (count, 3, 2)) * 2 / size  # within a pixel and a half
    vertices = np.concatenate([corners, np.zeros((count, 3, 1))], axis=2).reshape(-1, 3)
    vertices = torch.from_numpy(vertices).float()
    faces = torch.arange(3 * count, dtype=torch.int32).reshape(-1, 3)
    kernel, reference = render_both(vertices, faces, tie_camera(), size, attributes=vertices)
    ids = kernel[1].triangle_ids[0, 0]
    assert (ids[:, -1] >= 0).any() and (ids[-1] >= 0).any()
    assert_same_render(kernel, reference)


def test_baseline_build_renders_like_the_vectorised_one(tmp_path):
    """AFFECTVLM_CPU=baseline runs the baseline build on any CPU, which projects and depth-tests one vertex and
    one triangle at a time: its images must equal the default build's (eight at a time in AVX2 lanes where the
    CPU has them) bit for bit."""
    script = (
        "import sys, numpy as np, torch\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from raster_scenes import random_cameras\n"
        "from test_raster import small_triangle_soup\n"
        "from affectvlm._ext import extension\n"
        "from affectvlm.ops.raster import render_views\n"

        "rng = np.random.default_rng(11)\n"
        "vertices, faces = small_triangle_soup(rng, 997)\n"
        "images, fragments = render_views(vertices, faces, random_cameras(rng, 3), 64, return_fragments=True)\n"
        "torch.save((images, fragments.triangle_ids, extension().cpu_code()), sys.argv[1])\n")
    outputs = []
    for cpu in ("baseline", "default"):
        path = tmp_path / f"{cpu}.pt"
        tests = Path(__file__).parent
        subprocess.run([sys.executable, "-c", script, str(path), str(tests)], check=True, cwd=tests,
                       env={**os.environ, "AFFECTVLM_CPU": cpu})
        outputs.append(torch.load(path))
    (images, ids, code), (default_images, default_ids, _) = outputs
    assert code == "baseline"
    assert (ids >= 0).sum() > 1000
    assert torch.equal(ids, default_ids) and torch.equal(images, default_images)


@pytest.mark.parametrize("meshes, views", [(1, 1), (1, 3), (2, 3), (5, 3)])
def test_images_are_the_same_on_any_number_of_threads(meshes, views):
    """Few images are split across threads (faces, then bands of rows); many are handed out whole. Either
    way every thread count gives the same bits."""
    rng = np.random.default_rng(meshes * 10 + views)
    vertices, faces = small_triangle_soup(rng, 500)
    vertices = vertices.expand(meshes, -1, -1) + 0.01 * torch.randn(meshes, *vertices.shape)
    cameras = random_cameras(rng, views)
    renders = [raw_kernel_render(vertices, faces, cameras, 40, ["depth", "normal", "shading", "mask"],
                                 num_threads=threads) for threads in (1, 2, 3, 8)]
    for images, ids, bary in renders[1:]:
        assert torch.equal(images, renders[0][0]) and torch.equal(ids, renders[0][1])
        assert torch.equal(bary, renders[0][2])


def test_vertex_normals_of_a_sphere_point_outwards_in_every_layout():
    vertices, faces = icosphere(3)
    scaled = torch.stack([vertices, vertices * 2])
    for batch in (pack_meshes(scaled, faces), pack_meshes(list(scaled), [faces, faces])):
        for backend in ("kernel", "reference"):
            normals = vertex_normals(batch, backend)
            torch.testing.assert_close(normals, torch.cat([vertices, vertices]), rtol=0, atol=2e-2)


def test_kernel_vertex_normals_match_the_reference_on_random_meshes():
    rng = np.random.default_rng(12)
    meshes = [random_mesh(rng, int(n), int(3 * n)) for n in (5, 80, 40)]
    batch = pack_meshes([m[0] for m in meshes], [m[1] for m in meshes])
    torch.testing.assert_close(vertex_normals(batch, "kernel"), vertex_normals(batch, "reference"), rtol=0,
                               atol=1e-5)
    overlapping = batch.meshes.clone()
    overlapping[1, 0] = 0
    with pytest.raises(ValueError, match="meshes row 1: vertex ranges must follow each other"):
        extension().vertex_normals(batch.vertices, batch.faces, overlapping, torch.empty_like(batch.vertices))


@pytest.mark.cuda
def test_cuda_vertex_normals_match_cpu():
    vertices, faces = icosphere(3)
    batch = pack_meshes(torch.stack([vertices, vertices * 2]), faces)
    cuda_batch = pack_meshes(torch.stack([vertices, vertices * 2]).cuda(), faces.cuda())
    torch.testing.assert_close(vertex_normals(cuda_batch).cpu(), vertex_normals(batch), rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_extension_either_renders_or_refuses_any_mesh_rows_and_faces(data):
    """Arbitrary mesh rows and face indices never reach memory they do not own: a ValueError or a render."""
    num_vertices = data.draw(st.integers(1, 12))
    num_faces = data.draw(st.integers(1, 12))
    faces = torch.tensor(data.draw(st.lists(st.lists(st.integers(-3, 15), min_size=3, max_size=3),
                                            min_size=num_faces, max_size=num_faces)), dtype=torch.int32)
    rows = torch.tensor(data.draw(st.lists(st.lists(st.integers(-2, 14), min_size=4, max_size=4),
                                           min_size=1, max_size=3)), dtype=torch.int64)
    arguments = _direct_arguments()
    arguments.update(vertices=torch.randn(num_vertices, 3) * 0.5, faces=faces, meshes=rows,
                     images=torch.zeros(len(rows), 1, 1, 8, 8),
                     triangle_ids=torch.zeros(len(rows), 1, 8, 8, dtype=torch.int32))
    try:
        extension().render_views(**arguments)
    except ValueError as error:
        assert "meshes row" in str(error) or "faces must hold values" in str(error)
        return
    for (vertex_start, vertex_count, face_start, face_count) in rows.tolist():
        assert 0 <= vertex_start and vertex_start + vertex_count <= num_vertices
        assert 0 <= face_start and face_start + face_count <= num_faces
        used = faces[face_start:face_start + face_count]
        assert used.min() >= 0 and used.max() < vertex_count


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_kernel_equals_reference_on_scenes_full_of_ties(data):
    """Vertices on a coarse lattice: shared and collinear edges through pixel centres, coincident and
    degenerate triangles, equal depths. Triangle ids must still agree exactly."""
    lattice = st.integers(-4, 4).map(lambda i: i / 4)
    num_vertices = data.draw(st.integers(3, 10))
    vertices = torch.tensor(data.draw(st.lists(st.tuples(lattice, lattice, lattice), min_size=num_vertices,
                                                max_size=num_vertices)), dtype=torch.float32)
    faces = torch.tensor(data.draw(st.lists(st.tuples(*[st.integers(0, num_vertices - 1)] * 3), min_size=1,
                                             max_size=16)), dtype=torch.int32)
    projection = data.draw(st.sampled_from(["orthographic", "perspective"]))
    yaw = data.draw(st.sampled_from([0.0, 45.0, 90.0]))
    cameras = orbit_cameras([(yaw, 0.0)], distance=3.0, projection=projection, half_height=1.0)
    kernel, reference = render_both(vertices, faces, cameras, 16, attributes=vertices,
                                    cull_backfaces=data.draw(st.booleans()))
    assert_same_render(kernel, reference)
