"""The canonical frame every mesh is brought into before rendering: centred, unit size, facing +z."""

from __future__ import annotations

import numpy as np

from affectvlm.geometry.mesh import Mesh


def normalise(mesh: Mesh, align: bool = False) -> Mesh:
    """Centre the bounding box at the origin and scale so the farthest vertex lies at distance 1.

    Triangles are first wound so that their normals point outward (away from the bounding box's centre, summed
    over the surface weighted by area): scans come wound either way, and the rendered normals and shading depend
    on it. With `align`, also rotate the face's forward direction onto +z. The forward direction is the mesh's
    vector area (the sum of triangle normals weighted by area), which for an open face surface whose
    triangles wind outward points out of the face.
    The transform applied is stored as metadata `normalise_centre`, `normalise_scale`, `normalise_rotation` and
    `normalise_rewound` (whether the winding was reversed).
    """
    vertices = mesh.vertices.astype(np.float64)
    rewound = _winds_inward(vertices, mesh.faces)
    faces = mesh.faces[:, [0, 2, 1]] if rewound else mesh.faces
    rotation = _forward_to_z(vertices, faces) if align else np.eye(3)
    vertices = vertices @ rotation.T
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    vertices -= centre
    radius = np.linalg.norm(vertices, axis=1).max()
    scale = 1.0 / radius if radius > 0 else 1.0
    metadata = {**mesh.metadata, "normalise_centre": centre, "normalise_scale": scale,
                "normalise_rotation": rotation, "normalise_rewound": rewound}
    return Mesh((vertices * scale).astype(np.float32), np.ascontiguousarray(faces), metadata)


def _winds_inward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether the area-weighted triangle normals point, on the whole, towards the bounding box's centre (for a
    closed mesh: a negative signed volume)."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    return float(np.einsum("ij,ij->", normals, corners.mean(axis=1) - centre)) < 0


def _forward_to_z(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    vector_area = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).sum(axis=0)
    length = np.linalg.norm(vector_area)
    if length == 0:
        return np.eye(3)
    return rotation_between(vector_area / length, np.array([0.0, 0.0, 1.0]))


def rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector `source` to unit vector `target` (Rodrigues)."""
    axis = np.cross(source, target)
    sine, cosine = np.linalg.norm(axis), float(source @ target)
    if sine < 1e-12:
        if cosine > 0:
            return np.eye(3)
        # Opposite vectors: turn half a revolution about any axis perpendicular to source.
        perpendicular = np.cross(source, [1.0, 0.0, 0.0] if abs(source[0]) < 0.9 else [0.0, 1.0, 0.0])
        perpendicular /= np.linalg.norm(perpendicular)
        return 2 * np.outer(perpendicular, perpendicular) - np.eye(3)
    axis /= sine
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + sine * cross + (1 - cosine) * cross @ cross


def head_rotation(yaw_pitch_roll_degrees) -> np.ndarray:
    """The rotation of a head turned by yaw (about +y, towards its left), pitch (about +x) and roll (about +z),
    in degrees, applied in the order roll, pitch, yaw."""
    yaw, pitch, roll = np.radians(np.asarray(yaw_pitch_roll_degrees, dtype=np.float64))
    about_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    about_x = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    about_z = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    return about_y @ about_x @ about_z
