"""Explanations on the face: which parts of the mesh drove a prediction.

Two methods give every pixel of every view the model saw (the views in [0, 1], before the CLIP normalisation)
a weight:
- occlusion (the default): each view is cut into OCCLUSION_SQUARES x OCCLUSION_SQUARES squares, and each square
  in turn is hidden in one view: its face pixels take their mean colour, so the square's shape detail is gone
  but the face keeps its outline (background pixels stay background). A square weighs how much the class's
  log-probability drops without it, and pixels between square centres are interpolated. It answers "which
  regions does the prediction need", costs one pass through the image tower per square that shows some face
  (batched), and is faithful: on the demo model, 75-89 % of a smile's map lies on the regions the smile moved,
  which cover 53 % of the views. Hiding a square by setting it to the background instead cuts a hole whose
  outline the model reacts to wherever it is: over seven models trained by the main job that put 72 % of the
  map on those regions on average, against 78 % with the mean (benchmarks/RESULTS.md, "Explanations");
- gradient: the magnitude of the class logit's gradient with respect to each pixel, summed over the three
  channels (through the CLIP normalisation and the whole image tower); one backward pass, but it measures local
  sensitivity, which in a trained model spreads over the whole face (54-58 % of the same smile's map).
Each covered pixel's weight is then carried back onto the mesh: the rasteriser says which triangle covers the
pixel and where inside it (perspective-correct barycentrics), and the weight is shared among the triangle's
three corners in those proportions. Pixels that no triangle covers (the background) carry nothing.
The result is a weight per vertex. To draw it (`heat_map`), the weights are spread over about one pixel's
footprint on the surface: a fine mesh has more vertices than the views have pixels, and drawn raw, the vertices
that no pixel centre fell near would speckle the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from affectvlm.data.views import render_model_views
from affectvlm.geometry.cameras import Cameras, view_cameras
from affectvlm.geometry.mesh import Mesh
from affectvlm.ops.raster import Fragments, render_views
from affectvlm.predict import class_logits, encode_model_views


@dataclass
class Explanation:
    class_name: str
    vertex_weights: np.ndarray  # (V,) float32 >= 0: the pixel weights carried onto the mesh's vertices
    pixel_weights: torch.Tensor  # (K, H, W) >= 0, every pixel: its weight under the explanation's method
    on_face: float  # the fraction of the pixel weights that lies on pixels the mesh covers
    pixel_size: float  # the views' pixel size at the centre of the canonical frame (the mesh's units)


METHODS = ("occlusion", "gradient")
DEFAULT_METHOD = "occlusion"
OCCLUSION_SQUARES = 7  # per side of a view: 16 px squares at 112 px
OCCLUSION_BATCH = 64  # hidden squares per pass through the image tower
HEAT_SATURATION = 0.99  # heat_map's colours run up to this quantile of the weights
MAX_SPREAD_STEPS = 64


def explain(predictor, mesh: Mesh, class_index: int, method: str = DEFAULT_METHOD) -> Explanation:
    """The explanation of class `class_index` for one mesh in the canonical frame (as in
    `affectvlm.predict.Inspection.meshes`), rendered and encoded exactly as for the prediction; `method` is one
    of METHODS."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")

    def class_logit(images: torch.Tensor) -> torch.Tensor:
        return class_logits(predictor, encode_model_views(predictor, images))[:, class_index]

    def class_log_probability(images: torch.Tensor) -> torch.Tensor:
        return class_logits(predictor, encode_model_views(predictor, images)).log_softmax(dim=-1)[:, class_index]

    def pixel_weights_of(images: torch.Tensor) -> torch.Tensor:
        if method == "gradient":
            with torch.enable_grad():
                return gradient_pixel_weights(images, lambda batch: class_logit(batch)[0])
        with torch.no_grad():
            return occlusion_pixel_weights(images, class_log_probability)

    cameras = view_cameras(predictor.views, projection=predictor.projection)
    vertex_weights, pixel_weights = explain_views(mesh.vertices, mesh.faces, cameras, predictor.image_size,
                                                  predictor.recipe, pixel_weights_of, predictor.device)
    total = float(pixel_weights.sum())
    on_face = float(vertex_weights.sum()) / total if total > 0 else 0.0
    return Explanation(predictor.classes[class_index], vertex_weights, pixel_weights, on_face,
                       pixel_size(cameras, predictor.image_size))


def gradient_pixel_weights(images: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(K, H, W): |d score / d pixel| of one sample's views (1, K, 3, H, W), summed over the channels."""
    images = images.detach().requires_grad_(True)
    gradient, = torch.autograd.grad(score(images), images)
    return gradient[0].abs().sum(dim=1)


def occlusion_pixel_weights(images: torch.Tensor, scores: Callable[[torch.Tensor], torch.Tensor],
                            squares: int = OCCLUSION_SQUARES) -> torch.Tensor:
    """(K, H, W): for one sample's views (1, K, 3, H, W), how much `scores` (a batch of samples
    (B, K, 3, H, W) -> (B,)) drops when each square of each view is hidden (`hide_square`), a rise counting as
    0. The squares tile each view, `squares` per side; each square's drop is placed at its centre
    and interpolated bilinearly between the centres, so the map has no square edges. Squares that are all
    background already are not passed through `scores` (hiding them changes nothing)."""
    drops = occlusion_drops(images, scores, squares)  # (K, squares, squares)
    height, width = images.shape[-2:]
    return torch.nn.functional.interpolate(drops[None], size=(height, width), mode="bilinear",
                                           align_corners=False)[0]


def occlusion_drops(images: torch.Tensor, scores: Callable[[torch.Tensor], torch.Tensor],
                    squares: int) -> torch.Tensor:
    """(K, squares, squares): the drop of `scores` when each square of each view is hidden, at least 0."""
    _, views, _, height, width = images.shape
    rows = np.linspace(0, height, squares + 1).round().astype(int)
    columns = np.linspace(0, width, squares + 1).round().astype(int)
    every_square = [(view, i, j) for view in range(views) for i in range(squares) for j in range(squares)]

    def pixels(view, i, j):  # of a sample's views (K, 3, H, W)
        return view, slice(None), slice(*rows[i:i + 2]), slice(*columns[j:j + 2])

    hidden = [square for square in every_square if images[0][pixels(*square)].any()]
    unhidden = scores(images)
    drops = torch.zeros(views, squares, squares, device=images.device)
    for start in range(0, len(hidden), OCCLUSION_BATCH):
        chunk = hidden[start:start + OCCLUSION_BATCH]
        batch = images.repeat(len(chunk), 1, 1, 1, 1)
        for sample, square in enumerate(chunk):
            hide_square(batch[sample][pixels(*square)])
        for square, drop in zip(chunk, (unhidden - scores(batch)).clamp(min=0)):
            drops[square] = drop
    return drops


def hide_square(square: torch.Tensor) -> None:
    """Hides a square (3, h, w) of a view in place: its face pixels (any channel above 0) take their mean
    colour, background pixels stay 0."""
    on_face = square.any(dim=0, keepdim=True)
    mean = (square * on_face).sum(dim=(1, 2), keepdim=True) / on_face.sum().clamp(min=1)
    square.copy_(torch.where(on_face, mean, square))


def pixel_size(cameras: Cameras, size: int) -> float:
    """The mean over the views of one pixel's width at the point the cameras look at (the origin)."""
    clip = cameras.world_to_clip.reshape(-1, 4, 4).double()
    ndc_per_unit = clip[:, 1, :3].norm(dim=1) / clip[:, 3, 3].abs()  # d(ndc y) / d(world) at the origin
    return float((2.0 / (size * ndc_per_unit)).mean())


def heat_map(explanation: Explanation, mesh: Mesh) -> np.ndarray:
    """Vertex colours in [0, 1]: the weights averaged over about one pixel's footprint on the surface (repeated
    averaging over each vertex's triangles), scaled so that the top (1 - HEAT_SATURATION) saturate."""
    faces = mesh.faces.astype(np.int64)
    edges = mesh.vertices[faces] - mesh.vertices[np.roll(faces, 1, axis=1)]
    mean_edge = float(np.linalg.norm(edges, axis=-1).mean())
    # Averaging spreads a value over about sqrt(steps) edges.
    steps = min(MAX_SPREAD_STEPS, math.ceil((explanation.pixel_size / max(mean_edge, 1e-12)) ** 2))
    weights = explanation.vertex_weights.astype(np.float64)
    triangles_per_vertex = np.bincount(faces.ravel(), minlength=len(weights))
    for _ in range(steps):
        triangle_means = weights[faces].mean(axis=1)
        spread = np.bincount(faces.ravel(), weights=np.repeat(triangle_means, 3), minlength=len(weights))
        weights = np.where(triangles_per_vertex > 0, spread / np.maximum(triangles_per_vertex, 1), weights)
    top = float(np.quantile(weights, HEAT_SATURATION))
    return np.clip(weights / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(weights, np.float32)


def explain_views(vertices, faces, cameras: Cameras, size: int, recipe: str,
                  pixel_weights_of: Callable[[torch.Tensor], torch.Tensor],
                  device="cpu") -> tuple[np.ndarray, torch.Tensor]:
    """(vertex weights (V,), pixel weights (K, H, W)) of one mesh: its model views (1, K, 3, H, W), rendered
    with `render_model_views` (the function predict and training use), weighed by `pixel_weights_of`."""
    vertices = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(faces, dtype=torch.int32, device=device)
    pixel_weights = pixel_weights_of(render_model_views(vertices[None], faces, cameras, size, recipe))
    fragments = mesh_fragments(vertices, faces, cameras, size)
    return carry_to_vertices(pixel_weights, fragments, faces, len(vertices)).numpy(), pixel_weights.cpu()


def mesh_fragments(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, size: int) -> Fragments:
    """Which triangle covers each pixel of each view, and where: the same rasterisation as the model's views."""
    _, fragments = render_views(vertices[None], faces, cameras, size, channels=("mask",), return_fragments=True,
                                return_barycentrics=True)
    return fragments


def carry_to_vertices(pixel_weights: torch.Tensor, fragments: Fragments, faces: torch.Tensor,
                      num_vertices: int) -> torch.Tensor:
    """Vertex weights (V,) float32 on the CPU: each covered pixel's weight (K, H, W) shared among the corners
    of the triangle that covers it, in proportion to its barycentrics; uncovered pixels give nothing."""
    triangle_ids = fragments.triangle_ids[0].cpu()  # (K, H, W)
    barycentrics = fragments.barycentrics[0].cpu().permute(0, 2, 3, 1)  # (K, H, W, 3)
    covered = triangle_ids >= 0
    corners = faces.cpu().long()[triangle_ids[covered].long()]  # (P, 3)
    shares = pixel_weights.detach().cpu().float()[covered][:, None] * barycentrics[covered]  # (P, 3)
    return torch.zeros(num_vertices).index_add_(0, corners.reshape(-1), shares.reshape(-1))
