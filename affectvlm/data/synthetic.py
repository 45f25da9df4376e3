"""The built-in dataset: labelled synthetic 3D faces and 4D sequences, written as mesh files + labels.csv.

Faces come from a face model (the procedural one by default, or a user's blendshape model). Each subject is
a random identity; static data holds, like BU-3DFE, one neutral face and the six basic emotions at four
intensity levels; 4D data holds one neutral -> apex -> neutral sequence per basic emotion. Every mesh has
its own jitter of the expression weights, a small head pose and vertex noise. Subject i of seed s is the
same person whatever the number of subjects asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from affectvlm.data.datasets import Sample, write_labels
from affectvlm.data.emotions import BASIC_EMOTIONS
from affectvlm.data.face_rig import FaceModel, FaceRig, Identity
from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.geometry.io import save_mesh
from affectvlm.geometry.normalise import head_rotation
from affectvlm.geometry.mesh import Mesh

LEVELS = (1, 2, 3, 4)
LEVEL_STRENGTH = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}  # fraction of the apex weights
WEIGHT_JITTER = 0.2  # relative standard deviation of each expression weight, per mesh
POSE_DEGREES = np.array([4.0, 3.0, 2.0])  # standard deviation of yaw, pitch, roll
NOISE_FRACTION = 2.5e-4  # vertex noise per axis, as a fraction of the face's bounding-box diagonal (~0.06 mm)
SEQUENCE_LEVEL = 4
DEFAULT_FRAMES = 24
FORMATS = ("obj", "ply", "wrl")


def expression_weights(model: FaceModel, emotion: str, level: int, rng: np.random.Generator | None = None) -> dict:
    """The model's shape weights for `emotion` at `level` (1-4), each jittered when `rng` is given."""
    strength = LEVEL_STRENGTH[level]
    weights = {name: weight * strength for name, weight in model.apex_weights[emotion].items()}
    if rng is not None:
        weights = {name: weight * float(np.clip(1 + WEIGHT_JITTER * rng.standard_normal(), 0.5, 1.5))
                   for name, weight in weights.items()}
    return weights


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """Yaw, pitch and roll in degrees, within 2.5 standard deviations."""
    return np.clip(rng.standard_normal(3), -2.5, 2.5) * POSE_DEGREES


def posed_face(rig: FaceRig, weights: dict, pose_degrees: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The rig's face with `weights`, turned about the neutral face's centre, plus vertex noise."""
    low, high = rig.neutral.min(axis=0), rig.neutral.max(axis=0)
    centre = (low + high) / 2
    vertices = (rig.pose(weights) - centre) @ head_rotation(pose_degrees).T + centre
    vertices += rng.normal(0.0, NOISE_FRACTION * np.linalg.norm(high - low), vertices.shape)
    return vertices.astype(np.float32)


def expression_envelope(frames: int) -> np.ndarray:
    """Expression strength per frame: neutral, smooth onset, apex, smooth offset, neutral (0 to 1)."""
    t = np.linspace(0.0, 1.0, frames)
    onset = np.clip((t - 0.1) / 0.3, 0, 1)
    offset = np.clip((0.9 - t) / 0.3, 0, 1)
    rise_and_fall = np.minimum(onset, offset)
    return rise_and_fall * rise_and_fall * (3 - 2 * rise_and_fall)


def subject_name(index: int) -> str:
    return f"S{index + 1:03d}"


def subject_identity(model: FaceModel, seed: int, index: int) -> tuple[Identity, np.random.Generator]:
    """Subject `index`'s identity, and the random stream for the rest of its data."""
    rng = np.random.default_rng([seed, index])
    return model.random_identity(rng), rng


def static_faces(model: FaceModel, rig: FaceRig, rng: np.random.Generator):
    """(emotion, level, vertices) for one neutral face and the six emotions at four levels (level 0: neutral)."""
    yield "neutral", 0, posed_face(rig, {}, random_pose(rng), rng)
    for emotion in BASIC_EMOTIONS:
        for level in LEVELS:
            yield emotion, level, posed_face(rig, expression_weights(model, emotion, level, rng), random_pose(rng), rng)


def sequence_faces(model: FaceModel, rig: FaceRig, emotion: str, frames: int, rng: np.random.Generator):
    """The frames of one neutral -> apex -> neutral sequence; the head drifts from one pose to another."""
    apex = expression_weights(model, emotion, SEQUENCE_LEVEL, rng)
    start_pose, end_pose = random_pose(rng), random_pose(rng)
    for frame, (strength, t) in enumerate(zip(expression_envelope(frames), np.linspace(0, 1, frames))):
        weights = {name: strength * weight for name, weight in apex.items()}
        yield frame, posed_face(rig, weights, (1 - t) * start_pose + t * end_pose, rng)


def meshes_per_subject(sequences: bool, frames: int) -> int:
    return len(BASIC_EMOTIONS) * frames if sequences else 1 + len(BASIC_EMOTIONS) * len(LEVELS)


def generate_dataset(out: str | Path, subjects: int, seed: int = 0, file_format: str = "obj",
                     sequences: bool = False, frames: int = DEFAULT_FRAMES, model: FaceModel | None = None,
                     on_mesh: Callable[[], None] | None = None) -> list[Sample]:
    """Write `subjects` synthetic subjects under `out` as meshes plus `out/labels.csv`; return the samples."""
    if file_format not in FORMATS:
        raise ValueError(f"unknown format '{file_format}' (choose from {', '.join(FORMATS)})")
    if subjects < 1 or (sequences and frames < 3):
        raise ValueError("need at least 1 subject, and at least 3 frames per sequence")
    model = model or ProceduralFaceModel()
    out = Path(out)
    samples = []
    for index in range(subjects):
        identity, rng = subject_identity(model, seed, index)
        rig = model.rig(identity)
        subject = subject_name(index)
        attributes = {key: value for key, value in (("sex", identity.sex), ("age", identity.age)) if value is not None}

        def write(relative: str, vertices: np.ndarray, **labels) -> None:
            path = out / subject / f"{relative}.{file_format}"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_mesh(path, Mesh(vertices, model.faces))
            samples.append(Sample(path, subject, attributes=attributes, **labels))
            if on_mesh is not None:
                on_mesh()

        if sequences:
            for emotion in BASIC_EMOTIONS:
                for frame, vertices in sequence_faces(model, rig, emotion, frames, rng):
                    write(f"{emotion}/{frame:03d}", vertices, emotion=emotion, intensity=SEQUENCE_LEVEL,
                          sequence=f"{subject}/{emotion}", frame=frame)
        else:
            for emotion, level, vertices in static_faces(model, rig, rng):
                write(f"{subject}_{emotion}_{level}", vertices, emotion=emotion, intensity=level)
    write_labels(out, samples)
    return samples
