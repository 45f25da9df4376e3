"""What every face model offers the generator: a rig (a neutral face plus named displacement shapes in one
topology), identities to build rigs from, and each emotion's shape weights at its apex."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Identity:
    """One synthetic person: shape coefficients of the face model, plus sex and age where the model has them."""

    coefficients: np.ndarray
    sex: str | None = None  # "female" or "male"
    age: int | None = None  # years

    @property
    def age_group(self) -> str | None:
        if self.age is None:
            return None
        return "young" if self.age < 30 else "adult" if self.age < 50 else "senior"


@dataclass
class FaceRig:
    """A neutral face (V, 3) and named displacement fields (V, 3) that expressions mix linearly."""

    neutral: np.ndarray
    shapes: dict[str, np.ndarray] = field(default_factory=dict)

    def pose(self, weights: dict[str, float]) -> np.ndarray:
        vertices = self.neutral.copy()
        for name, weight in weights.items():
            vertices += weight * self.shapes[name]
        return vertices


class FaceModel(Protocol):
    faces: np.ndarray  # (F, 3) int32, shared by every identity, expression and frame
    apex_weights: dict[str, dict[str, float]]  # emotion -> shape weights at the expression's apex

    def random_identity(self, rng: np.random.Generator) -> Identity: ...

    def rig(self, identity: Identity) -> FaceRig: ...
