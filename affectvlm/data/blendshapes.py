"""Drive the synthetic generator from a linear blendshape face model a user has on disk.

The model folder holds meshes of one topology: a neutral face (`generic_neutral_mesh.obj`, as in
ICT-FaceKit, or `neutral.obj`), identity shapes `identity*.obj` and expression shapes named freely
(ICT-FaceKit uses ARKit names such as `jawOpen.obj`, `mouthSmile_L.obj`). Shapes are stored as whole
meshes; the model uses their offsets from the neutral face. A recipe (JSON) gives each basic emotion's
expression weights at its apex, e.g. {"happiness": {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}, ...}.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from affectvlm.data.emotions import BASIC_EMOTIONS, parse_emotion
from affectvlm.data.face_rig import FaceRig, Identity
from affectvlm.geometry.io import load_mesh
from affectvlm.geometry.mesh import MeshError

NEUTRAL_NAMES = ("generic_neutral_mesh.obj", "neutral.obj")
IDENTITY_PATTERN = "identity*.obj"
IDENTITY_LIMIT = 2.0  # identity coefficients are standard normal, clipped to this many standard deviations


class FaceModelError(ValueError):
    """A blendshape model folder or recipe that cannot be used; the message names the file and the problem."""


class BlendshapeFaceModel:
    def __init__(self, neutral: np.ndarray, faces: np.ndarray, identity_offsets: np.ndarray,
                 expression_offsets: dict[str, np.ndarray], apex_weights: dict[str, dict[str, float]]):
        self.neutral = neutral
        self.faces = faces
        self.identity_offsets = identity_offsets  # (identities, V, 3)
        self.expression_offsets = expression_offsets
        self.apex_weights = apex_weights

    @classmethod
    def from_folder(cls, folder: str | Path, recipe: str | Path) -> BlendshapeFaceModel:
        folder = Path(folder)
        apex_weights = read_recipe(recipe)
        neutral_path = next((folder / name for name in NEUTRAL_NAMES if (folder / name).is_file()), None)
        if neutral_path is None:
            raise FaceModelError(f"{folder}: no neutral mesh ({' or '.join(NEUTRAL_NAMES)})")
        neutral = _load(neutral_path)
        identity_paths = sorted(folder.glob(IDENTITY_PATTERN))
        if not identity_paths:
            raise FaceModelError(f"{folder}: no identity shapes ({IDENTITY_PATTERN})")
        identities = np.stack([_offsets(path, neutral) for path in identity_paths])
        names = sorted({name for weights in apex_weights.values() for name in weights})
        missing = [name for name in names if not (folder / f"{name}.obj").is_file()]
        if missing:
            raise FaceModelError(f"{recipe}: expression shapes not in {folder}: {', '.join(missing)}")
        expressions = {name: _offsets(folder / f"{name}.obj", neutral) for name in names}
        return cls(neutral.vertices.astype(np.float64), neutral.faces, identities, expressions, apex_weights)

    def random_identity(self, rng: np.random.Generator) -> Identity:
        coefficients = np.clip(rng.standard_normal(len(self.identity_offsets)), -IDENTITY_LIMIT, IDENTITY_LIMIT)
        return Identity(coefficients)

    def rig(self, identity: Identity) -> FaceRig:
        neutral = self.neutral + np.tensordot(identity.coefficients, self.identity_offsets, axes=1)
        return FaceRig(neutral, self.expression_offsets)


def read_recipe(path: str | Path) -> dict[str, dict[str, float]]:
    """Emotion -> {expression shape: apex weight}; all six basic emotions are required, neutral is empty."""
    try:
        recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FaceModelError(f"{path}: cannot read recipe ({error})") from None
    if not isinstance(recipe, dict):
        raise FaceModelError(f"{path}: a recipe is a JSON object mapping emotions to shape weights")
    apex_weights = {"neutral": {}}
    for emotion_name, weights in recipe.items():
        try:
            emotion = parse_emotion(emotion_name)
        except ValueError as error:
            raise FaceModelError(f"{path}: {error}") from None
        if not isinstance(weights, dict) or not all(
                isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                for weight in weights.values()):
            raise FaceModelError(f"{path}: '{emotion_name}' must map shape names to finite numbers")
        apex_weights[emotion] = {str(name): float(weight) for name, weight in weights.items()}
    missing = [emotion for emotion in BASIC_EMOTIONS if emotion not in apex_weights]
    if missing:
        raise FaceModelError(f"{path}: no weights for {', '.join(missing)}")
    return apex_weights


def _load(path: Path):
    try:
        return load_mesh(path)
    except MeshError as error:
        raise FaceModelError(str(error)) from None


def _offsets(path: Path, neutral) -> np.ndarray:
    mesh = _load(path)
    if mesh.vertices.shape != neutral.vertices.shape or not np.array_equal(mesh.faces, neutral.faces):
        raise FaceModelError(f"{path}: topology differs from the neutral mesh "
                             f"({mesh.num_vertices} vertices, {mesh.num_faces} faces; "
                             f"neutral has {neutral.num_vertices}, {neutral.num_faces})")
    return mesh.vertices.astype(np.float64) - neutral.vertices
