"""The template faces are registered to (`affectvlm.geometry.register`): the built-in generator's average person
(every shape coefficient zero), neutral, unturned, in the canonical frame.

    python -m affectvlm.data.face_template      # rewrites affectvlm/geometry/face_template.npz
"""

from __future__ import annotations

import numpy as np

from affectvlm.data.face_rig import Identity
from affectvlm.data.procedural_face import SHAPE_PARAMETERS, ProceduralFaceModel
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.normalise import normalise
from affectvlm.geometry.register import (TEMPLATE_FILE, FaceTemplate, nearest_neighbours, nearest_point_grid,
                                         surface_samples)

POINTS = 4000
NEIGHBOURS = 8
CELLS = 48
HALF = 1.3  # the grid's cube reaches past the unit sphere, where turned or rescaled faces start


def average_face() -> Mesh:
    model = ProceduralFaceModel()
    neutral = model.rig(Identity(np.zeros(len(SHAPE_PARAMETERS)))).neutral
    return normalise(Mesh(neutral.astype(np.float32), model.faces), pose="none")  # the template defines the pose


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
