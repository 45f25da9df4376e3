"""The canonical frame every mesh is brought into before rendering: centred, unit size, facing +z, and
optionally in the template face's pose."""

from __future__ import annotations

import numpy as np

from affectvlm.geometry.holes import fill_holes
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.register import register

POSES = ("none", "template")  # how a face's pose is normalised (see `normalise`)
# The pose normalisation of the data pipeline and of new models unless asked otherwise. "template" makes a model
# indifferent to head pose (the robustness suite's ±15 degrees cost it nothing, where unregistered models fell to
# 42-69% under pitch and roll), and under the 5-fold protocol the main job registered held out as well as
# unregistered: 81.6% ± 1.6% against 79.5% ± 1.4% (benchmarks/RESULTS.md, "Pose registration by default").
DEFAULT_POSE = "template"
UNRECORDED_POSE = "none"  # what caches and checkpoints from before the choice existed, which name none, had


def normalise(mesh: Mesh, pose: str = DEFAULT_POSE, close_holes: bool = True) -> Mesh:
    """Close the holes of a scan (`affectvlm.geometry.holes`: at the eyes, an open mouth; the outer rim stays
    open), then centre the bounding box at the origin and scale so the farthest vertex lies at distance 1; with
    `pose="template"`, then also turn, scale and shift the face onto the template face
    (`affectvlm.geometry.register`), so that a face comes out in one pose and size however it was scanned.

    Triangles are first wound so that their normals point outward (away from the bounding box's centre, summed
    over the surface weighted by area): scans come wound either way, and the rendered normals and shading depend
    on it. The transform applied is stored as metadata `normalise_transform` (4 x 4, input to output
    coordinates), with `normalise_holes_closed` (how many holes were closed; the patches' vertices and faces
    follow the mesh's own), `normalise_rewound` (whether the winding was reversed) and, for the template pose,
    `normalise_registered` (false when the fit failed and only the bounding box was used).
    """
    if pose not in POSES:
        raise ValueError(f"unknown pose normalisation '{pose}' (choose from {', '.join(POSES)})")
    vertices, faces, holes_closed = fill_holes(mesh.vertices, mesh.faces) if close_holes else (
        mesh.vertices, mesh.faces, 0)
    vertices = vertices.astype(np.float64)
    rewound = _winds_inward(vertices, faces)
    faces = np.ascontiguousarray(faces[:, [0, 2, 1]]) if rewound else faces
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = np.linalg.norm(vertices - centre, axis=1).max()
    scale = 1.0 / radius if radius > 0 else 1.0
    vertices = (vertices - centre) * scale
    transform = np.diag([scale, scale, scale, 1.0])
    transform[:3, 3] = -scale * centre
    metadata = {**mesh.metadata, "normalise_holes_closed": holes_closed, "normalise_rewound": rewound}
    if pose == "template":
        registration = register(vertices, faces)
        vertices = vertices @ (registration.scale * registration.rotation).T + registration.translation
        transform = registration.matrix() @ transform
        metadata["normalise_registered"] = registration.registered
    metadata["normalise_transform"] = transform
    return Mesh(vertices.astype(np.float32), faces, metadata)


def _winds_inward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether the area-weighted triangle normals point, on the whole, towards the bounding box's centre (for a
    closed mesh: a negative signed volume)."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    return float(np.einsum("ij,ij->", normals, corners.mean(axis=1) - centre)) < 0


def head_rotation(yaw_pitch_roll_degrees) -> np.ndarray:
    """The rotation of a head turned by yaw (about +y, towards its left), pitch (about +x) and roll (about +z),
    in degrees, applied in the order roll, pitch, yaw."""
    yaw, pitch, roll = np.radians(np.asarray(yaw_pitch_roll_degrees, dtype=np.float64))
    about_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    about_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    about_z = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    return about_y @ about_x @ about_z
