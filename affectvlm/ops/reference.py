"""Pure-PyTorch ground truth for the compiled kernels: plain, materialising, and easy to check by eye.

Tests compare every kernel with these functions, and benchmarks time them as the baseline. Each function
holds whole matrices in memory on purpose; that is what the kernels avoid.

Rasteriser: `render_views_reference` takes the same arguments as `_C.render_views` and follows
csrc/raster/raster_common.h operation by operation, in float32 and exact int64, so that its coverage, depth
keys and triangle ids equal the kernels'. It is vectorised over pixels x triangles in chunks of bounded
memory, and meant for small images and meshes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALISE_EPS = 1e-12  # z / max(|z|, eps), as torch.nn.functional.normalize


def contrastive_loss_reference(
    images: torch.Tensor,
    image_labels: torch.Tensor,
    texts: torch.Tensor | None = None,
    text_labels: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | float,
    margin: torch.Tensor | float,
) -> torch.Tensor:
    """The three terms (multiview contrastive, multiview triplet, image-text) as a tensor of shape (3,).

    `images` (N, D) and `texts` (M, D) are raw embeddings, normalised here; `scale` multiplies the cosine
    similarities in the image-text softmax; `margin` is the hinge margin alpha (already >= 0). The formulas,
    tie-breaks and conventions for empty sets are the ones in the README section "Contrastive loss".
    """
    z = F.normalize(images, dim=1, eps=NORMALISE_EPS)
    similarity = z @ z.T
    same_label = image_labels[:, None] == image_labels[None, :]
    positive = same_label & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    negative = ~same_label

    terms = [
        _multiview_contrastive(similarity, positive, negative, margin),
        _multiview_triplet(z, similarity, positive, negative, margin),
    ]
    if texts is None or len(texts) == 0:
        terms.append(similarity.new_zeros(()))
    else:
        t = F.normalize(texts, dim=1, eps=NORMALISE_EPS)
        logits = scale * (z @ t.T)
        matches = image_labels[:, None] == text_labels[None, :]
        row_loss = _label_aware_infonce(logits, matches)
        column_loss = _label_aware_infonce(logits.T, matches.T)
        terms.append(0.5 * (row_loss + column_loss))
    return torch.stack(terms)


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.new_zeros(()).sum()


def _multiview_contrastive(similarity, positive, negative, margin):
    pull = _mean_or_zero(1 - similarity[positive])
    push = _mean_or_zero(torch.relu(similarity[negative] - margin))
    return pull + push


def _multiview_triplet(z, similarity, positive, negative, margin):
    squared_norm = (z * z).sum(dim=1)
    distance = squared_norm[:, None] + squared_norm[None, :] - 2 * similarity
    # Hardest positive: largest distance; hardest negative: smallest. argmax/argmin return the first
    # (lowest) index among ties, the tie-break the kernels follow.
    hardest_positive = distance.masked_fill(~positive, float("-inf")).argmax(dim=1)
    hardest_negative = distance.masked_fill(~negative, float("inf")).argmin(dim=1)
    anchors = positive.any(dim=1) & negative.any(dim=1)
    rows = torch.arange(len(z), device=z.device)
    hinge = torch.relu(
        distance[rows, hardest_positive] - distance[rows, hardest_negative] + margin
    )
    return _mean_or_zero(hinge[anchors])


def _label_aware_infonce(logits, matches):
    """Mean over rows with at least one match of -mean_{matching p} log softmax(row)[p]."""
    log_probability = torch.log_softmax(logits, dim=1)
    match_count = matches.sum(dim=1)
    has_match = match_count > 0
    row_loss = -(log_probability * matches).sum(dim=1)[has_match] / match_count[has_match]
    return _mean_or_zero(row_loss)


# Rasteriser (csrc/raster): a depth test and resolve per image, as _C.render_views.

SUBPIXEL_SCALE = 256
HALF_PIXEL = SUBPIXEL_SCALE // 2
GUARD_BAND_PIXELS = 2097152.0
NO_KEY = torch.iinfo(torch.int64).max
FLAT_DEPTH_RANGE = torch.tensor(1e-5, dtype=torch.float32)
PIXELS_X_TRIANGLES_PER_CHUNK = 1 << 20


def _transform_row(matrix: torch.Tensor, row: int, points: torch.Tensor) -> torch.Tensor:
    m = matrix[row]
    return ((m[0] * points[:, 0] + m[1] * points[:, 1]) + m[2] * points[:, 2]) + m[3]


def project_vertices_reference(points: torch.Tensor, world_to_clip: torch.Tensor, world_to_view: torch.Tensor,
                               width: int, height: int) -> dict[str, torch.Tensor]:
    """Screen vertices (fixed-point x, y; z01; inv_w; depth; valid) of points (V, 3) seen by one camera."""
    cx, cy, cz, cw = (_transform_row(world_to_clip, r, points) for r in range(4))
    depth = -_transform_row(world_to_view, 2, points)
    valid = (cw > 0) & (cz >= -cw)
    inv_w = torch.ones_like(cw) / cw
    px = ((cx * inv_w) * 0.5 + 0.5) * float(width)
    py = (0.5 - (cy * inv_w) * 0.5) * float(height)
    z01 = (cz * inv_w) * 0.5 + 0.5
    valid &= (px.abs() <= GUARD_BAND_PIXELS) & (py.abs() <= GUARD_BAND_PIXELS)
    x = torch.round(torch.where(valid, px, 0.0) * float(SUBPIXEL_SCALE)).long()
    y = torch.round(torch.where(valid, py, 0.0) * float(SUBPIXEL_SCALE)).long()
    return {"x": x, "y": y, "z01": z01, "inv_w": inv_w, "depth": depth, "valid": valid}


def setup_triangles_reference(screen: dict, faces: torch.Tensor, cull_backfaces: bool, width: int,
                              height: int) -> dict[str, torch.Tensor]:
    """Triangles (F,) made positive: per slot the position and depth of its corner, inside biases, bounding
    box, and whether each triangle is kept."""
    faces = faces.long()
    x, y = screen["x"][faces], screen["y"][faces]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    kept = screen["valid"][faces].all(dim=1) & (area != 0)
    if cull_backfaces:
        kept &= area < 0
    swap = area < 0
    zeros = torch.zeros_like(swap, dtype=torch.long)
    corner = torch.stack([zeros, torch.where(swap, 2, 1), torch.where(swap, 1, 2)], dim=1)
    tx, ty = x.gather(1, corner), y.gather(1, corner)
    bias = []
    for s in range(3):
        dx = tx[:, (s + 2) % 3] - tx[:, (s + 1) % 3]
        dy = ty[:, (s + 2) % 3] - ty[:, (s + 1) % 3]
        bias.append(torch.where((dy < 0) | ((dy == 0) & (dx > 0)), 0, 1))

    def first_centre_at_or_after(low):
        return -torch.div(-(low - HALF_PIXEL), SUBPIXEL_SCALE, rounding_mode="floor")

    def last_centre_at_or_before(high):
        return torch.div(high - HALF_PIXEL, SUBPIXEL_SCALE, rounding_mode="floor")

    col0 = first_centre_at_or_after(tx.amin(1)).clamp_min(0)
    col1 = last_centre_at_or_before(tx.amax(1)).clamp_max(width - 1)
    row0 = first_centre_at_or_after(ty.amin(1)).clamp_min(0)
    row1 = last_centre_at_or_before(ty.amax(1)).clamp_max(height - 1)
    kept &= (col0 <= col1) & (row0 <= row1)
    return {"x": tx, "y": ty, "area": area.abs(), "bias": torch.stack(bias, dim=1),
            "z01": screen["z01"][faces].gather(1, corner), "kept": kept}


def _edge_functions(triangles: dict, px: torch.Tensor, py: torch.Tensor) -> list[torch.Tensor]:
    """Exact edge functions of each slot; triangle tensors (T, 3) against points broadcast with them."""
    x, y = triangles["x"], triangles["y"]
    edges = []
    for s in range(3):
        a, b = (s + 1) % 3, (s + 2) % 3
        edges.append((x[..., b] - x[..., a]) * (py - y[..., a]) - (y[..., b] - y[..., a]) * (px - x[..., a]))
    return edges


def _screen_weights(area: torch.Tensor, edges: list[torch.Tensor]) -> list[torch.Tensor]:
    inv_area = torch.ones_like(area, dtype=torch.float32) / area.float()
    return [e.float() * inv_area for e in edges]


def _pixel_centres(height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                indexing="ij")
    return cols.reshape(-1) * SUBPIXEL_SCALE + HALF_PIXEL, rows.reshape(-1) * SUBPIXEL_SCALE + HALF_PIXEL


def depth_test_reference(triangles: dict, height: int, width: int) -> torch.Tensor:
    """Per pixel (H * W,) the smallest key (float bits of z01) << 32 | triangle id, or NO_KEY."""
    px, py = _pixel_centres(height, width, triangles["x"].device)
    best = torch.full_like(px, NO_KEY)
    ids = torch.nonzero(triangles["kept"]).flatten()
    chunk = max(1, PIXELS_X_TRIANGLES_PER_CHUNK // px.numel())
    for first in range(0, ids.numel(), chunk):
        chosen = ids[first:first + chunk]
        part = {k: v[chosen][:, None] for k, v in triangles.items() if k != "kept"}
        edges = _edge_functions(part, px[None], py[None])
        inside = (edges[0] >= part["bias"][..., 0]) & (edges[1] >= part["bias"][..., 1]) & \
                 (edges[2] >= part["bias"][..., 2])
        w = _screen_weights(part["area"], edges)
        z = part["z01"]
        z01 = (w[0] * z[..., 0] + w[1] * z[..., 1]) + w[2] * z[..., 2]
        inside &= (z01 >= 0) & (z01 <= 1)
        z01 = torch.where(z01 == 0, 0.0, z01)
        keys = (z01.view(torch.int32).long() << 32) | chosen[:, None]
        best = torch.minimum(best, torch.where(inside, keys, NO_KEY).amin(dim=0))
    return best


def _interpolate(bary: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """bary (N, 3) and values (N, 3, ...) -> (N, ...), summed left to right like the kernels."""
    while bary.ndim < values.ndim:
        bary = bary[..., None]
    return (bary[:, 0] * values[:, 0] + bary[:, 1] * values[:, 1]) + bary[:, 2] * values[:, 2]


def vertex_normals_reference(vertices: torch.Tensor, faces: torch.Tensor, meshes: torch.Tensor,
                             meshes_per_chunk: int = 64) -> torch.Tensor:
    """Area-weighted unit vertex normals (NV, 3) of packed meshes, as `_C.vertex_normals`."""
    normals = torch.zeros_like(vertices)
    rows = meshes.tolist()
    for first in range(0, len(rows), meshes_per_chunk):
        packed = torch.cat([faces[face_start:face_start + face_count].long() + vertex_start
                            for vertex_start, _, face_start, face_count in rows[first:first + meshes_per_chunk]])
        corners = vertices[packed]
        face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        for corner in range(3):
            normals.index_add_(0, packed[:, corner], face_normals)
    return normals / normals.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def render_views_reference(vertices, faces, meshes, world_to_clip, world_to_view, images, triangle_ids, *, channels,
                           normals=None, attributes=None, barycentrics=None, normalise_depth=True,
                           cull_backfaces=False,
                           light=(0.0, 0.0, 1.0), ambient=0.0) -> None:
    """Fill images (B, K, C, H, W), triangle_ids (B, K, H, W) and optionally barycentrics (B, K, 3, H, W) as
    `_C.render_views` does."""
    num_meshes, num_views, _, height, width = images.shape
    from affectvlm.ops.raster import NORMAL_CHANNELS, channel_layout

    num_attributes = attributes.shape[1] if attributes is not None else 0
    layout = {name: planes.start for name, planes in channel_layout(channels, num_attributes).items()}
    if not NORMAL_CHANNELS & layout.keys():
        normals = None
    elif normals is None:
        raise ValueError("normals are needed by the normal, normal_rgb and shading channels")
    images.zero_()
    triangle_ids.fill_(-1)
    if barycentrics is not None:
        barycentrics.zero_()
    for b in range(num_meshes):
        vertex_start, vertex_count, face_start, face_count = (int(v) for v in meshes[b])
        mesh_vertices = slice(vertex_start, vertex_start + vertex_count)
        mesh_faces = faces[face_start:face_start + face_count]
        for k in range(num_views):
            camera = (b if world_to_clip.shape[0] > 1 else 0, k)
            screen = project_vertices_reference(vertices[mesh_vertices], world_to_clip[camera],
                                                world_to_view[camera], width, height)
            triangles = setup_triangles_reference(screen, mesh_faces, cull_backfaces, width, height)
            keys = depth_test_reference(triangles, height, width)
            pixels = torch.nonzero(keys != NO_KEY).flatten()
            ids = keys[pixels] & 0xFFFFFFFF
            triangle_ids[b, k].view(-1)[pixels] = ids.int()
            bary = _barycentrics(screen, mesh_faces, ids, pixels, width)
            corners = mesh_faces[ids].long() + vertex_start
            out = images[b, k].view(images.shape[2], -1)
            if barycentrics is not None:
                barycentrics[b, k].view(3, -1)[:, pixels] = bary.T
            _shade(out, layout, pixels, bary, corners, screen["depth"][corners - vertex_start], normals, attributes,
                   world_to_view[camera], light, ambient)
            if "depth" in layout and normalise_depth:
                _normalise_depth(out[layout["depth"]], pixels)


def _normalise_depth(depth: torch.Tensor, pixels: torch.Tensor) -> None:
    if pixels.numel() == 0:
        return
    distance = depth[pixels]
    nearest, farthest = distance.min(), distance.max()
    span = farthest - nearest
    flat = span <= FLAT_DEPTH_RANGE * torch.maximum(nearest.abs(), farthest.abs())
    depth[pixels] = torch.ones_like(distance) if flat else (farthest - distance) / span


def _barycentrics(screen, mesh_faces, ids, pixels, width) -> torch.Tensor:
    """Perspective-correct weights of each pixel's corners: edge function opposite a corner over its clip w,
    normalised (orientation and area cancel), as raster_common.h computes them."""
    corners = mesh_faces[ids].long()
    x, y, inv_w = screen["x"][corners], screen["y"][corners], screen["inv_w"][corners]
    px = pixels % width * SUBPIXEL_SCALE + HALF_PIXEL
    py = pixels // width * SUBPIXEL_SCALE + HALF_PIXEL
    edges = _edge_functions({"x": x, "y": y}, px, py)
    p = [edges[i].float() * inv_w[:, i] for i in range(3)]
    scale = torch.ones_like(p[0]) / ((p[0] + p[1]) + p[2])
    return torch.stack([q * scale for q in p], dim=1)


def _shade(out, layout, pixels, bary, corners, corner_depth, normals, attributes, world_to_view, light,
           ambient) -> None:
    if "depth" in layout:
        out[layout["depth"], pixels] = _interpolate(bary, corner_depth)
    if normals is not None:  # some channel needs them
        world = _interpolate(bary, normals[corners])
        rotation = world_to_view[:3, :3]
        camera = torch.stack([(r[0] * world[:, 0] + r[1] * world[:, 1]) + r[2] * world[:, 2] for r in rotation], 1)
        length = torch.sqrt((camera[:, 0] * camera[:, 0] + camera[:, 1] * camera[:, 1]) + camera[:, 2] * camera[:, 2])
        scale = torch.where(length > 0, torch.ones_like(length) / length, 0.0)
        camera = camera * scale[:, None]
        if "normal" in layout:
            out[layout["normal"]:layout["normal"] + 3, pixels] = camera.T
        if "normal_rgb" in layout:
            out[layout["normal_rgb"]:layout["normal_rgb"] + 3, pixels] = camera.T * 0.5 + 0.5
        if "shading" in layout:
            l = torch.tensor(light, dtype=torch.float32)
            lambert = (camera[:, 0] * l[0] + camera[:, 1] * l[1]) + camera[:, 2] * l[2]
            a = torch.tensor(ambient, dtype=torch.float32)
            out[layout["shading"], pixels] = a + (1.0 - a) * lambert.clamp_min(0.0)
    if "mask" in layout:
        out[layout["mask"], pixels] = 1.0
    if "attributes" in layout:
        start = layout["attributes"]
        out[start:start + attributes.shape[1], pixels] = _interpolate(bary, attributes[corners]).T
