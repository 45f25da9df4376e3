"""Explanations on the face: which parts of the mesh drove a prediction.

The score of a class (its logit) is differentiated with respect to every pixel of every view the model saw
(the views in [0, 1], before the CLIP normalisation, so the gradient flows through that normalisation and the
whole image tower). The gradient's magnitude, summed over the three channels, says how much each pixel
mattered. Each covered pixel's weight is then carried back onto the mesh: the rasteriser says which triangle
covers the pixel and where inside it (perspective-correct barycentrics), and the weight is shared among the
triangle's three corners in those proportions. Pixels that no triangle covers (the background) carry nothing.
The result is a weight per vertex, the heat map the app draws on the 3D view.
"""

from __future__ import annotations

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
    pixel_weights: torch.Tensor  # (K, H, W): |d score / d pixel| summed over the channels, every pixel
    on_face: float  # the fraction of the pixel weights that lies on pixels the mesh covers


def explain(predictor, mesh: Mesh, class_index: int) -> Explanation:
    """The explanation of `class_index`'s logit for one mesh in the canonical frame (as in
    `affectvlm.predict.Inspection.meshes`), rendered and encoded exactly as for the prediction."""
    def class_score(images: torch.Tensor) -> torch.Tensor:
        return class_logits(predictor, encode_model_views(predictor, images))[0, class_index]

    cameras = view_cameras(predictor.views, projection=predictor.projection)
    with torch.enable_grad():
        vertex_weights, pixel_weights = explain_views(mesh.vertices, mesh.faces, cameras, predictor.image_size,
                                                      predictor.recipe, class_score, predictor.device)
    total = float(pixel_weights.sum())
    on_face = float(vertex_weights.sum()) / total if total > 0 else 0.0
    return Explanation(predictor.classes[class_index], vertex_weights, pixel_weights, on_face)


def explain_views(vertices, faces, cameras: Cameras, size: int, recipe: str,
                  score: Callable[[torch.Tensor], torch.Tensor], device="cpu") -> tuple[np.ndarray, torch.Tensor]:
    """(vertex weights (V,), pixel weights (K, H, W)) of a scalar `score` of one mesh's model views
    (1, K, 3, H, W), rendered with `render_model_views` (the function predict and training use)."""
    vertices = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(faces, dtype=torch.int32, device=device)
    images = render_model_views(vertices[None], faces, cameras, size, recipe).requires_grad_(True)
    gradient, = torch.autograd.grad(score(images), images)
    pixel_weights = gradient[0].abs().sum(dim=1)
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
