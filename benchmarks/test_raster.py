"""Views per second of the rasteriser against its peers in the same run.

Groups are named `raster-{size}px-{triangles}-{meshes}x3`: one mesh size, image size and batch of meshes,
each rendered into the three default views. The peers ray-cast the same views: Open3D's RaycastingScene
(Embree; depth; one scene built per mesh, as a new mesh needs) and trimesh with embreex (first triangle hit
per pixel). The PyTorch reference is timed where it finishes in seconds. pytest-benchmark's times are per
batch; views/s = 3 x meshes / time. On a GPU the CUDA kernel runs too, beside PyTorch3D or nvdiffrast when
importable.
"""

import numpy as np
import pytest
import torch
from raster_peers import face_mesh, import_open3d, open3d_depth_views, trimesh_triangle_views

from affectvlm.geometry.cameras import view_cameras
from affectvlm.ops.raster import render_views

SIZES = (112, 224)
TRIANGLES = ("5k", "20k", "80k")
BATCHES = (1, 64, 512)
open3d = import_open3d()


def rounds_for(views: int) -> int:
    return 5 if views <= 3 else 3 if views <= 192 else 2


def batch_of(triangles: str, meshes: int, device: str = "cpu"):
    mesh = face_mesh(triangles)
    vertices = torch.from_numpy(mesh.vertices).to(device).expand(meshes, -1, -1).contiguous()
    # Slightly different frames, as in a 4D sequence, so no two meshes are the same input.
    vertices = vertices + 1e-3 * torch.randn(vertices.shape, generator=torch.Generator().manual_seed(0)).to(device)
    return vertices, torch.from_numpy(mesh.faces).to(device)


def run_benchmark(benchmark, function, meshes: int):
    benchmark.extra_info["views"] = 3 * meshes
    benchmark.pedantic(function, rounds=rounds_for(3 * meshes), iterations=1, warmup_rounds=1)


def cases(batches=BATCHES, sizes=SIZES, triangles=TRIANGLES):
    return [pytest.param(size, tris, meshes, id=f"{size}px-{tris}-{meshes}x3",
                         marks=pytest.mark.benchmark(group=f"raster-{size}px-{tris}-{meshes}x3"))
            for size in sizes for tris in triangles for meshes in batches]


@pytest.mark.parametrize("size, triangles, meshes", cases())
def test_affectvlm_cpu_depth(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes)
    cameras = view_cameras()
    run_benchmark(benchmark, lambda: render_views(vertices, faces, cameras, size, ("depth",)), meshes)


@pytest.mark.parametrize("size, triangles, meshes", cases())
def test_affectvlm_cpu_all_channels(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes)
    cameras = view_cameras()
    run_benchmark(benchmark, lambda: render_views(vertices, faces, cameras, size), meshes)


@pytest.mark.skipif(open3d is None, reason="open3d is not installed")
@pytest.mark.parametrize("size, triangles, meshes", cases(batches=(1, 64)))
def test_peer_open3d_raycasting_depth(benchmark, size, triangles, meshes):
    run_benchmark(benchmark, lambda: open3d_depth_views(open3d, [face_mesh(triangles)] * meshes, size), meshes)


@pytest.mark.parametrize("size, triangles, meshes", cases(batches=(1,)))
def test_peer_trimesh_embree_triangle_ids(benchmark, size, triangles, meshes):
    run_benchmark(benchmark, lambda: trimesh_triangle_views([face_mesh(triangles)] * meshes, size), meshes)


@pytest.mark.parametrize("size, triangles, meshes", cases(batches=(1,), sizes=(112,), triangles=("5k",)))
def test_reference_cpu_depth(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes)
    cameras = view_cameras()
    benchmark.extra_info["views"] = 3 * meshes
    benchmark.pedantic(lambda: render_views(vertices, faces, cameras, size, ("depth",), backend="reference"),
                       rounds=1, iterations=1)


def cuda_render(function):
    def timed():
        function()
        torch.cuda.synchronize()
    return timed


@pytest.mark.cuda
@pytest.mark.parametrize("size, triangles, meshes", cases())
def test_affectvlm_cuda_depth(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes, "cuda")
    cameras = view_cameras().to("cuda")
    run_benchmark(benchmark, cuda_render(lambda: render_views(vertices, faces, cameras, size, ("depth",))), meshes)


@pytest.mark.cuda
@pytest.mark.parametrize("size, triangles, meshes", cases())
def test_affectvlm_cuda_all_channels(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes, "cuda")
    cameras = view_cameras().to("cuda")
    run_benchmark(benchmark, cuda_render(lambda: render_views(vertices, faces, cameras, size)), meshes)


@pytest.mark.cuda
@pytest.mark.parametrize("size, triangles, meshes", cases(batches=(1,), sizes=(112,), triangles=("5k",)))
def test_reference_cuda_depth(benchmark, size, triangles, meshes):
    vertices, faces = batch_of(triangles, meshes, "cuda")
    cameras = view_cameras().to("cuda")
    benchmark.pedantic(cuda_render(lambda: render_views(vertices, faces, cameras, size, ("depth",),
                                                        backend="reference")), rounds=1, iterations=1)


@pytest.mark.cuda
@pytest.mark.parametrize("size, triangles, meshes", cases(batches=(1, 64, 512)))
def test_peer_nvdiffrast_triangle_ids(benchmark, size, triangles, meshes):
    dr = pytest.importorskip("nvdiffrast.torch")
    vertices, faces = batch_of(triangles, meshes, "cuda")
    cameras = view_cameras().to("cuda")
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[..., :1])], dim=-1)
    clip = torch.einsum("bvj,kij->bkvi", homogeneous, cameras.world_to_clip[0].float())
    clip = clip.reshape(-1, vertices.shape[1], 4)
    context = dr.RasterizeCudaContext()
    run_benchmark(benchmark, cuda_render(lambda: dr.rasterize(context, clip.contiguous(), faces, (size, size))),
                  meshes)


def test_peers_see_the_face_where_affectvlm_does():
    """Not a timing: the peers render the same views, so their coverage matches the kernel's mask."""
    mesh = face_mesh("5k")
    mask = render_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), view_cameras(), 112,
                        ("mask",))[0, :, 0].numpy() > 0
    hits = np.stack(trimesh_triangle_views([mesh], 112)) >= 0
    assert (mask != hits).mean() < 0.01
    if open3d is not None:
        # Open3D's pinhole images are mirrored left-right and sample pixels differently: compare areas.
        depth = np.stack(open3d_depth_views(open3d, [mesh], 112))
        np.testing.assert_allclose(np.isfinite(depth).mean(axis=(1, 2)), mask.mean(axis=(1, 2)), rtol=0.03)
