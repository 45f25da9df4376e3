"""Batched mesh-to-multiview rendering: B meshes x K cameras -> float32 images (B, K, C, H, W).

CPU tensors run the C++ kernel, CUDA tensors the CUDA kernel on the current stream, and where a build has no
CUDA kernels the pure-PyTorch reference (`affectvlm.ops.reference`) renders the same images. The kernel call is
the torch.library custom op `torch.ops.affectvlm.render_views` (no gradient), so torch.compile keeps it in its
graph. The channels' names and widths come from the compiled module (`CHANNEL_WIDTHS`), so rendering needs it,
on the reference too. Pixel, depth and fill conventions are documented in csrc/raster/raster_common.h and the
README's Rendering section.

Channels, in the order asked for:
- "depth" (1): distance from the camera along its axis, normalised per view over the covered pixels:
  nearest 1, farthest 0 (1 everywhere when the view is flat), background 0; the distance itself with
  normalise_depth=False;
- "normal" (3): unit normal in camera space (+z towards the camera), interpolated from vertex normals;
- "normal_rgb" (3): (normal + 1) / 2, the same normal as a colour in [0, 1];
- "shading" (1): Lambertian, ambient + (1 - ambient) * max(0, normal . light), light in camera space;
- "mask" (1): 1 where the mesh covers the pixel;
- "attributes" (A): any per-vertex values (colour, curvature, ...) interpolated perspective-correctly.
Background pixels are 0 in every channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from affectvlm.geometry.cameras import Cameras
from affectvlm.ops.checks import require_tensor, value_range


def _kernel_channel_widths() -> dict[str, int | None]:
    """The kernels' table of channels (kChannels in csrc/raster/raster.h): {name: image planes, None for one
    per attribute}. Empty without the compiled module, where channel_layout says why."""
    from affectvlm._ext import IMPORT_ERROR, extension

    return {} if IMPORT_ERROR else extension().raster_channels()


CHANNEL_WIDTHS = _kernel_channel_widths()
DEFAULT_CHANNELS = ("depth", "normal", "shading", "mask")
DEFAULT_LIGHT = (0.3, 0.4, 1.0)
NORMAL_CHANNELS = {"normal", "normal_rgb", "shading"}  # the channels interpolated from vertex normals
BACKENDS = ("auto", "kernel", "reference")


@dataclass
class MeshBatch:
    """B meshes packed for the kernels: vertices (NV, 3) float32, faces (NF, 3) int32 indexing each mesh's
    own vertices, and per mesh a row (vertex_start, vertex_count, face_start, face_count) of `meshes` (B, 4)
    int64. Meshes of one topology share faces (every row has face_start 0). `pack_meshes` lays the meshes'
    vertices one after another; a batch to render may name the same ranges in several rows (`render_views`'
    rows), one for vertex normals may not."""

    vertices: torch.Tensor
    faces: torch.Tensor
    meshes: torch.Tensor
    shared_topology: bool

    @property
    def num_meshes(self) -> int:
        return self.meshes.shape[0]


@dataclass
class Fragments:
    """What covers each pixel: triangle_ids (B, K, H, W) int32, the face index within its mesh or -1, and
    barycentrics (B, K, 3, H, W) float32, perspective-correct weights of the face's corners (None unless
    asked for)."""

    triangle_ids: torch.Tensor
    barycentrics: torch.Tensor | None


def render_views(vertices, faces, cameras: Cameras, image_size=224, channels=DEFAULT_CHANNELS, *,
                 attributes=None, normals=None, rows=None, light=DEFAULT_LIGHT, ambient: float = 0.15,
                 normalise_depth: bool = True, cull_backfaces: bool = False,
                 return_fragments: bool = False, return_barycentrics: bool = False, backend: str = "auto"):
    """Render every mesh through every camera: float32 images (B, K, C, H, W) on the meshes' device.

    vertices/faces: one mesh, B meshes of one topology or lists of meshes (see `pack_meshes`). cameras: K views
    for all meshes or per mesh (`affectvlm.geometry.cameras`). image_size: int or (height, width).
    channels: names from CHANNEL_WIDTHS. attributes: per-vertex values for the "attributes" channel, laid out
    like vertices. normals: the vertex normals that NORMAL_CHANNELS interpolate, laid out like vertices; None
    computes them (`vertex_normals`); pass them to compute them once for several renders of the same meshes.
    rows: which mesh each rendered mesh is, integer (B',), when meshes are to be drawn several times (each
    through its own cameras, which then number 1 or B') or not at all: the meshes are checked, and their
    normals computed, once; the images are (B', K, C, H, W). light: direction towards the light in camera
    space. Front faces wind counter-clockwise as seen by the camera; cull_backfaces drops the others. With
    return_fragments, also returns `Fragments` (triangle ids, and barycentrics with return_barycentrics).
    backend: "auto" (the compiled kernel, or the reference where it is missing), "kernel" or "reference".
    """
    packed = pack_meshes(vertices, faces)
    batch = _rendered_rows(packed, rows)
    height, width = _image_size(image_size)
    world_to_clip, world_to_view = _camera_matrices(cameras, batch)
    attributes = _per_vertex(attributes, batch, "attributes") if attributes is not None else None
    layout = channel_layout(channels, attributes.shape[1] if attributes is not None else 0)
    if "attributes" in layout and attributes is None:
        raise ValueError("the 'attributes' channel needs attributes=")
    light = torch.tensor(light, dtype=torch.float64)
    if light.shape != (3,) or not torch.isfinite(light).all() or light.norm() == 0:
        raise ValueError(f"light must be a finite non-zero 3-vector, got {light.tolist()}")
    light = (light / light.norm()).tolist()
    if not NORMAL_CHANNELS & set(layout):
        normals = None
    elif normals is None:
        normals = vertex_normals(packed, backend)  # once per mesh, however many times it is drawn
    else:
        normals = _per_vertex(normals, batch, "normals", width=3)
        if not _all_finite(normals):
            raise ValueError("normals contain NaN or infinite values")

    options = dict(normalise_depth=normalise_depth, cull_backfaces=cull_backfaces, light=light,
                   ambient=float(ambient))
    if _use_kernel(backend, batch.vertices.device):
        images, triangle_ids, barycentrics = torch.ops.affectvlm.render_views(
            batch.vertices, batch.faces, batch.meshes, world_to_clip, world_to_view, normals, attributes,
            list(layout), height, width, **options, return_triangle_ids=return_fragments,
            return_barycentrics=return_barycentrics)
    else:
        from affectvlm.ops.reference import render_views_reference

        device = batch.vertices.device
        shape = (batch.num_meshes, world_to_clip.shape[1])
        images = torch.empty(*shape, _num_channels(layout), height, width, device=device)
        triangle_ids = torch.empty(*shape, height, width, dtype=torch.int32, device=device)
        barycentrics = torch.empty(*shape, 3, height, width, device=device) if return_barycentrics else None
        render_views_reference(batch.vertices, batch.faces, batch.meshes, world_to_clip, world_to_view, images,
                               triangle_ids, channels=list(layout), normals=normals, attributes=attributes,
                               barycentrics=barycentrics, **options)
    if return_fragments:
        return images, Fragments(triangle_ids, barycentrics if return_barycentrics else None)
    return images


# The kernel as a torch.library custom op, so that torch.compile keeps it in its graph. Renders are inputs
# to a model: the op has no gradient. Fragments not asked for come back as empty tensors.
@torch.library.custom_op(
    "affectvlm::render_views", mutates_args=(),
    schema="(Tensor vertices, Tensor faces, Tensor meshes, Tensor world_to_clip, Tensor world_to_view, "
           "Tensor? normals, Tensor? attributes, str[] channels, SymInt height, SymInt width, "
           "bool normalise_depth, bool cull_backfaces, float[] light, float ambient, bool return_triangle_ids, "
           "bool return_barycentrics) -> (Tensor, Tensor, Tensor)")
def _render_views_op(vertices, faces, meshes, world_to_clip, world_to_view, normals, attributes, channels, height,
                     width, normalise_depth, cull_backfaces, light, ambient, return_triangle_ids,
                     return_barycentrics):
    from affectvlm._ext import extension

    images, triangle_ids, barycentrics = _empty_renders(vertices, meshes, world_to_clip, attributes, channels,
                                                        height, width, return_triangle_ids, return_barycentrics)
    # DLPack refuses tensors that require gradients.
    inputs = [x.detach() for x in (vertices, faces, meshes, world_to_clip, world_to_view)]
    normals, attributes = (None if x is None else x.detach() for x in (normals, attributes))
    options = dict(channels=channels, normals=normals, attributes=attributes, normalise_depth=normalise_depth,
                   cull_backfaces=cull_backfaces, light=light, ambient=ambient,
                   barycentrics=barycentrics if return_barycentrics else None)
    device = vertices.device
    if device.type != "cuda":
        # The CPU kernel needs no triangle ids of its own: they cost a second image's worth of memory traffic.
        extension().render_views(*inputs, images, triangle_ids if return_triangle_ids else None, **options,
                                 num_threads=torch.get_num_threads())
        return images, triangle_ids, barycentrics
    # pack_meshes built and checked the mesh rows and faces; the CUDA kernel trusts them, as the binding
    # cannot read GPU memory.
    kernel_ids = triangle_ids if return_triangle_ids else images.new_empty(_id_shape(images), dtype=torch.int32)
    zbuffer = torch.empty(kernel_ids.shape, dtype=torch.int64, device=device)
    with torch.cuda.device(device):
        extension().render_views(*inputs, images, kernel_ids, zbuffer=zbuffer, **options,
                                 stream=torch.cuda.current_stream().cuda_stream)
    return images, triangle_ids, barycentrics


@_render_views_op.register_fake
def _(vertices, faces, meshes, world_to_clip, world_to_view, normals, attributes, channels, height, width,
      normalise_depth, cull_backfaces, light, ambient, return_triangle_ids, return_barycentrics):
    return _empty_renders(vertices, meshes, world_to_clip, attributes, channels, height, width, return_triangle_ids,
                          return_barycentrics)


def _empty_renders(vertices, meshes, world_to_clip, attributes, channels, height, width, return_triangle_ids,
                   return_barycentrics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's outputs, unfilled: images (B, K, C, H, W), triangle ids (B, K, H, W) and barycentrics
    (B, K, 3, H, W), the last two empty unless asked for."""
    num_channels = _num_channels(channel_layout(channels, attributes.shape[1] if attributes is not None else 0))
    images = vertices.new_empty(meshes.shape[0], world_to_clip.shape[1], num_channels, height, width,
                                dtype=torch.float32)
    triangle_ids = vertices.new_empty(_id_shape(images) if return_triangle_ids else (0,), dtype=torch.int32)
    barycentrics = vertices.new_empty(_id_shape(images)[:2] + (3, height, width) if return_barycentrics else (0,),
                                      dtype=torch.float32)
    return images, triangle_ids, barycentrics


def _id_shape(images: torch.Tensor) -> tuple:
    return (*images.shape[:2], *images.shape[3:])


def pack_meshes(vertices, faces) -> MeshBatch:
    """A batch from per-mesh tensors: `vertices` (V, 3) with `faces` (F, 3) for one mesh; (B, V, 3) with
    (F, 3) for B meshes of one topology (4D frames); or lists of (V_i, 3) and (F_i, 3) for meshes of
    different topologies."""
    if isinstance(vertices, (list, tuple)):
        if not isinstance(faces, (list, tuple)) or len(faces) != len(vertices):
            raise ValueError("lists of vertices and faces must have the same length")
        if not vertices:
            raise ValueError("vertices: no meshes to render")
        checked_vertices = [_check_vertices(v, f"vertices[{i}]") for i, v in enumerate(vertices)]
        device = checked_vertices[0].device
        if any(v.ndim != 2 or v.device != device for v in checked_vertices):
            raise ValueError("each vertices[i] must be a (V, 3) tensor, all on one device")
        checked_faces = [_check_faces(f, len(v), f"faces[{i}]", device)
                         for i, (v, f) in enumerate(zip(checked_vertices, faces))]
        vertex_counts = torch.tensor([len(v) for v in checked_vertices])
        face_counts = torch.tensor([len(f) for f in checked_faces])
        rows = torch.stack([vertex_counts.cumsum(0) - vertex_counts, vertex_counts,
                            face_counts.cumsum(0) - face_counts, face_counts], dim=1)
        return MeshBatch(torch.cat(checked_vertices), torch.cat(checked_faces), rows.to(device), False)

    vertices = _check_vertices(vertices, "vertices")
    if vertices.ndim not in (2, 3):
        raise ValueError(f"vertices must have shape (V, 3) or (B, V, 3), got {tuple(vertices.shape)}")
    batch = vertices[None] if vertices.ndim == 2 else vertices
    if batch.shape[0] == 0:
        raise ValueError("vertices: no meshes to render (B = 0)")
    num_meshes, num_vertices = batch.shape[:2]
    faces = _check_faces(faces, num_vertices, "faces", vertices.device)
    rows = torch.tensor([[b * num_vertices, num_vertices, 0, faces.shape[0]] for b in range(num_meshes)])
    return MeshBatch(batch.reshape(-1, 3), faces, rows.to(vertices.device), True)


def _rendered_rows(batch: MeshBatch, rows) -> MeshBatch:
    """The batch's meshes in the order `rows` names them (see `render_views`), sharing its vertices and faces."""
    if rows is None:
        return batch
    rows = torch.as_tensor(rows)
    if rows.dtype.is_floating_point or rows.dtype == torch.bool or rows.ndim != 1 or len(rows) == 0:
        raise ValueError(f"rows must be a non-empty 1-D tensor of mesh indices, got {rows.dtype} "
                         f"{tuple(rows.shape)}")
    low, high = value_range(rows)
    if low < 0 or high >= batch.num_meshes:
        raise ValueError(f"rows name mesh {low if low < 0 else high} but there are {batch.num_meshes} meshes")
    return MeshBatch(batch.vertices, batch.faces, batch.meshes[rows.to(batch.meshes.device)], batch.shared_topology)


def vertex_normals(batch: MeshBatch, backend: str = "auto") -> torch.Tensor:
    """Area-weighted unit vertex normals (NV, 3) of a batch (zero for vertices in no face): the C++ kernel
    for CPU batches, torch (`vertex_normals_reference`) on a GPU or where the extension is missing."""
    if batch.vertices.device.type == "cpu" and _use_kernel(backend, batch.vertices.device):
        from affectvlm._ext import extension

        normals = torch.empty_like(batch.vertices)
        extension().vertex_normals(batch.vertices, batch.faces, batch.meshes, normals,
                                   num_threads=torch.get_num_threads())
        return normals
    from affectvlm.ops.reference import vertex_normals_reference

    return vertex_normals_reference(batch.vertices, batch.faces, batch.meshes)


def _num_channels(layout: dict[str, slice]) -> int:
    return sum(s.stop - s.start for s in layout.values())


def channel_layout(channels, num_attributes: int = 0) -> dict[str, slice]:
    """Where each named channel lies in the C dimension of the images."""
    if not CHANNEL_WIDTHS:
        from affectvlm._ext import IMPORT_ERROR

        raise ImportError(f"the rasteriser's channels come from its compiled module: {IMPORT_ERROR}")
    layout, start = {}, 0
    for name in channels:
        if name not in CHANNEL_WIDTHS:
            raise ValueError(f"unknown channel '{name}' (choose from {', '.join(CHANNEL_WIDTHS)})")
        if name in layout:
            raise ValueError(f"channel '{name}' is listed twice")
        width = CHANNEL_WIDTHS[name] or num_attributes
        layout[name] = slice(start, start + width)
        start += width
    return layout


# Checks on CPU tensors go through numpy: torch's reductions hand small arrays to its thread pool, whose
# spin-waiting costs milliseconds per call when the cores are shared.
def _all_finite(values: torch.Tensor) -> bool:
    if values.device.type == "cpu":
        return bool(np.isfinite(values.detach().numpy()).all())
    return bool(torch.isfinite(values).all())


def _check_vertices(vertices: torch.Tensor, name: str) -> torch.Tensor:
    require_tensor(vertices, name)
    if not vertices.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {vertices.dtype}")
    if vertices.shape[-1:] != (3,) or vertices.shape[-2] == 0:
        raise ValueError(f"{name} must have shape (..., V, 3) with V >= 1, got {tuple(vertices.shape)}")
    if not _all_finite(vertices):
        raise ValueError(f"{name} contain NaN or infinite coordinates")
    return vertices.float().contiguous()


def _check_faces(faces: torch.Tensor, num_vertices: int, name: str, device: torch.device) -> torch.Tensor:
    require_tensor(faces, name)
    if faces.dtype.is_floating_point or faces.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"{name} must hold integer indices, got {faces.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"{name} must have shape (F, 3) with F >= 1, got {tuple(faces.shape)}")
    if faces.device != device:
        raise ValueError(f"{name} are on {faces.device} but the vertices on {device}")
    low, high = value_range(faces)
    if low < 0:
        raise ValueError(f"{name} hold a negative vertex index ({low})")
    if high >= num_vertices:
        raise ValueError(f"{name} index vertex {high} but the mesh has {num_vertices} vertices")
    if faces.shape[0] >= 2**31:
        raise ValueError(f"{name}: at most 2^31 - 1 faces per mesh")
    return faces.to(torch.int32).contiguous()


def _per_vertex(values, batch: MeshBatch, name: str, width: int | None = None) -> torch.Tensor:
    """Values laid out like the vertices, packed as the batch's vertices are: (NV, A) float32, A = width when given."""
    a = "A" if width is None else str(width)
    if isinstance(values, (list, tuple)):
        values = torch.cat(list(values))
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (V, {a}), (B, V, {a}) or a list of (V_i, {a})")
    values = values.reshape(-1, values.shape[-1]) if values.ndim >= 2 else values
    if (values.ndim != 2 or values.shape[0] != batch.vertices.shape[0] or values.shape[1] == 0
            or width not in (None, values.shape[1])):
        raise ValueError(f"{name} must hold {a if width else 'A >= 1'} values for each of the "
                         f"{batch.vertices.shape[0]} vertices, got shape {tuple(values.shape)}")
    if values.device != batch.vertices.device:
        raise ValueError(f"{name} are on {values.device} but the vertices on {batch.vertices.device}")
    return values.float().contiguous()


def _image_size(image_size) -> tuple[int, int]:
    sides = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not (isinstance(sides, (tuple, list)) and len(sides) == 2
            and all(isinstance(side, int) and side >= 1 for side in sides)):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return tuple(sides)


def _camera_matrices(cameras: Cameras, batch: MeshBatch) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be affectvlm.geometry.cameras.Cameras, got {type(cameras).__name__}")
    if cameras.world_to_view.shape[0] not in (1, batch.num_meshes):
        raise ValueError(f"cameras hold {cameras.world_to_view.shape[0]} sets of views; expected 1 or one per "
                         f"mesh ({batch.num_meshes})")
    device = batch.vertices.device
    return (cameras.world_to_clip.float().to(device).contiguous(),
            cameras.world_to_view.float().to(device).contiguous())


def _use_kernel(backend: str, device: torch.device) -> bool:
    from affectvlm._ext import IMPORT_ERROR, cuda_status

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "reference":
        return False
    available = IMPORT_ERROR is None and (device.type == "cpu" or cuda_status().kernels_built)
    if backend == "kernel" and not available:
        raise RuntimeError(f"no compiled rasteriser for {device.type}: "
                           f"{IMPORT_ERROR or 'this build has no CUDA kernels'}")
    return available
