"""The template faces are registered to (`affectvlm.geometry.register`): the built-in generator's average person
(every shape coefficient zero), neutral, unturned, in the canonical frame.

    python -m affectvlm.data.face_template      # rewrites affectvlm/geometry/face_template.npz
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from affectvlm.data.face_rig import Identity
from affectvlm.data.procedural_face import SHAPE_PARAMETERS, Anatomy, ProceduralFaceModel
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.normalise import normalise
from affectvlm.geometry.register import (TEMPLATE_FILE, FaceTemplate, nearest_neighbours, nearest_point_grid,
                                         surface_samples)

POINTS = 4000
NEIGHBOURS = 8
CELLS = 48
HALF = 1.3  # the grid's cube reaches past the unit sphere, where turned or rescaled faces start
EYE_HOLE_MM = 12.0  # radius of the hole a scanner leaves at an eye (the socket is about 20 mm wide)


@dataclass(frozen=True)
class TemplateEyes:
    """Where the eyes of a face registered to the template lie, in the canonical frame."""

    centres: np.ndarray  # (2, 3) float64: the subject's right eye, then the left
    hole_radius: float  # EYE_HOLE_MM in canonical units


def average_face() -> Mesh:
    model = ProceduralFaceModel()
    neutral = model.rig(_average_identity()).neutral
    return normalise(Mesh(neutral.astype(np.float32), model.faces), pose="none")  # the template defines the pose


@functools.cache
def template_eyes() -> TemplateEyes:
    """The average face's eye centres and the eye-hole radius, in the canonical frame (the template's)."""
    face = average_face()
    vertices = ProceduralFaceModel().feature_vertices(Anatomy(_average_identity()))
    scale = float(np.linalg.norm(face.metadata["normalise_transform"][:3, 0]))  # canonical units per mm
    centres = face.vertices[[vertices["right_eye"], vertices["left_eye"]]].astype(np.float64)
    return TemplateEyes(centres, EYE_HOLE_MM * scale)


def _average_identity() -> Identity:
    return Identity(np.zeros(len(SHAPE_PARAMETERS)))


def build_template(points: int = POINTS, neighbours: int = NEIGHBOURS, cells: int = CELLS, half: float = HALF
                   ) -> FaceTemplate:
    face = average_face()
    vertices = face.vertices.astype(np.float64)
    samples = surface_samples(vertices, face.faces, points)
    return FaceTemplate(samples.points.astype(np.float32), samples.normals(vertices, face.faces).astype(np.float32),
                        nearest_neighbours(samples.points, neighbours), nearest_point_grid(samples.points, cells, half),
                        half)


def main() -> None:
    template = build_template()
    np.savez_compressed(TEMPLATE_FILE, points=template.points, normals=template.normals,
                        neighbours=template.neighbours, nearest=template.nearest,
                        half=np.float32(template.half))
    print(f"wrote {TEMPLATE_FILE} ({TEMPLATE_FILE.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
