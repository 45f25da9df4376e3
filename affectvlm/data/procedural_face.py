"""A procedural human face: a frontal surface patch with forehead, brows, eyes, nose, cheeks, lips, chin
and jaw built from smooth bumps and creases, and action-unit-like displacement fields for expressions.

Every face is one fixed grid inside an elliptic outline, parameterised by (u, v) in the unit disc
(u to the viewer's right, v up), so all identities, expressions and frames share one topology.
Lengths are millimetres; the face looks along +z.
"""

from __future__ import annotations

import functools

import numpy as np

from affectvlm.data.face_rig import FaceRig, Identity

GRID_COLUMNS, GRID_ROWS = 100, 140  # ~21k triangles inside the outline

SHAPE_PARAMETERS = (
    "face_width", "face_length", "face_depth", "forehead_slope", "brow_ridge", "brow_height", "eye_spacing",
    "eye_size", "eye_depth", "nose_length", "nose_width", "nose_protrusion", "nose_bridge", "nose_tip_lift",
    "cheekbones", "cheek_fullness", "mouth_width", "mouth_height", "upper_lip", "lower_lip", "chin_prominence",
    "chin_width", "jaw_width", "nasolabial_depth", "asymmetry",
)

# Action units (FACS names) as displacement fields; each emotion mixes several, and emotions share some
# (fear and surprise both raise the brows and upper lids and drop the jaw), which keeps the task honest.
APEX_WEIGHTS = {
    "neutral": {},
    "happiness": {"AU6": 1.0, "AU12": 1.0, "AU25": 0.3},
    "sadness": {"AU1": 1.0, "AU4": 0.6, "AU15": 1.0, "AU17": 0.4},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0},
    "fear": {"AU1": 1.0, "AU2": 0.6, "AU4": 0.7, "AU5": 1.0, "AU7": 0.4, "AU20": 1.0, "AU26": 0.4},
    "anger": {"AU4": 1.0, "AU5": 0.5, "AU7": 1.0, "AU17": 0.5, "AU23": 1.0},
    "disgust": {"AU4": 0.3, "AU9": 1.0, "AU10": 1.0, "AU15": 0.5, "AU17": 0.5},
}


@functools.cache
def face_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters u, v of the vertices inside the unit disc, and the triangles between them, wound
    counter-clockwise seen from the front (+z)."""
    u, v = np.meshgrid(np.linspace(-1, 1, GRID_COLUMNS), np.linspace(-1, 1, GRID_ROWS))
    inside = u ** 2 + v ** 2 <= 1.0
    index = np.arange(u.size).reshape(u.shape)
    low_left, low_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    up_left, up_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    triangles = np.concatenate([np.stack([low_left, low_right, up_left], axis=1),
                                np.stack([low_right, up_right, up_left], axis=1)])
    triangles = triangles[inside.ravel()[triangles].all(axis=1)]
    new_index = np.cumsum(inside.ravel()) - 1
    return u[inside], v[inside], new_index[triangles].astype(np.int32)


def _bump(u, v, centre_u, centre_v, width_u, width_v):
    return np.exp(-0.5 * (((u - centre_u) / width_u) ** 2 + ((v - centre_v) / width_v) ** 2))


def _band(v, centre, width):
    return np.exp(-0.5 * ((v - centre) / width) ** 2)


def _sideways(u, width=0.08):
    """-1 on the right, +1 on the left, passing smoothly through 0 on the midline: fields that push the
    two halves of the face apart or together must not tear or fold the skin where the halves meet."""
    return np.tanh(u / width)


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class Anatomy:
    """Where an identity's features lie (in u, v) and how big they are (mm), from its shape parameters."""

    def __init__(self, identity: Identity):
        p = dict(zip(SHAPE_PARAMETERS, identity.coefficients))
        male = identity.sex == "male"
        group = identity.age_group or "adult"
        self.width = 68 * (1 + 0.06 * p["face_width"]) * (1.04 if male else 1.0)
        self.length = 96 * (1 + 0.05 * p["face_length"]) * (1.05 if male else 1.0)
        self.depth = 82 * (1 + 0.05 * p["face_depth"])
        self.forehead_slope = 8 * (1 + 0.4 * p["forehead_slope"])
        self.brow_ridge = (4.5 if male else 2.5) * (1 + 0.35 * p["brow_ridge"])
        self.brow_v = 0.37 + 0.025 * p["brow_height"] + (0.0 if male else 0.015)
        self.eye_u = 0.34 * (1 + 0.05 * p["eye_spacing"])
        self.eye_v = 0.21 + 0.01 * p["brow_height"]
        self.eye_size = (1 + 0.08 * p["eye_size"]) * (1.08 if group == "young" else 1.0)
        self.eye_depth = 11 * (1 + 0.15 * p["eye_depth"]) * (1.15 if group == "senior" else 1.0)
        nose_scale = (1.1 if male else 1.0) * (0.9 if group == "young" else 1.0)
        self.nose_root_v = self.eye_v + 0.05
        self.nose_tip_v = -0.19 - 0.04 * p["nose_length"] * nose_scale
        self.nose_width = (1 + 0.12 * p["nose_width"]) * nose_scale
        self.nose_height = 19 * (1 + 0.12 * p["nose_protrusion"]) * nose_scale
        self.nose_bridge = 0.25 + 0.08 * p["nose_bridge"]
        self.nose_tip_lift = 0.02 * p["nose_tip_lift"]
        self.cheekbones = 6 * (1 + 0.3 * p["cheekbones"])
        self.cheek_fullness = 4 * (1 + 0.3 * p["cheek_fullness"]) * (1.3 if group == "young" else 1.0)
        self.mouth_v = -0.5 - 0.03 * p["mouth_height"]
        self.mouth_half_width = 0.21 * (1 + 0.08 * p["mouth_width"])
        lip_scale = (0.85 if male else 1.1) * (0.75 if group == "senior" else 1.0)
        self.upper_lip = 4.5 * (1 + 0.25 * p["upper_lip"]) * lip_scale
        self.lower_lip = 5.5 * (1 + 0.25 * p["lower_lip"]) * lip_scale
        self.chin_v = -0.82
        self.chin = 6 * (1 + 0.3 * p["chin_prominence"])
        self.chin_width = 0.17 * (1 + 0.12 * p["chin_width"]) * (1.15 if male else 1.0)
        self.jaw_width = 0.06 * p["jaw_width"] + (0.05 if male else 0.0)
        self.nasolabial = {"young": 0.5, "adult": 1.5, "senior": 3.0}[group] * (1 + 0.3 * p["nasolabial_depth"])
        self.sag = 3.0 if group == "senior" else 0.0
        self.asymmetry = 1.5 * p["asymmetry"]


class ProceduralFaceModel:
    """The built-in face model: 25 continuous shape parameters plus sex and age, 7 emotions from action units."""

    apex_weights = APEX_WEIGHTS

    def __init__(self):
        self.u, self.v, self.faces = face_grid()

    def random_identity(self, rng: np.random.Generator) -> Identity:
        coefficients = np.clip(rng.standard_normal(len(SHAPE_PARAMETERS)), -2.5, 2.5)
        sex = str(rng.choice(["female", "male"]))
        return Identity(coefficients, sex=sex, age=int(rng.integers(18, 76)))

    def feature_vertices(self, anatomy: Anatomy) -> dict[str, int]:
        """The vertex nearest each eye centre and the mouth centre of `anatomy`: "right_eye", "left_eye", "mouth"
        (the subject's right eye is on the viewer's left, u < 0)."""
        anchors = {"right_eye": (-anatomy.eye_u, anatomy.eye_v), "left_eye": (anatomy.eye_u, anatomy.eye_v),
                   "mouth": (0.0, anatomy.mouth_v)}
        return {name: int(np.argmin((self.u - u) ** 2 + (self.v - v) ** 2)) for name, (u, v) in anchors.items()}

    def rig(self, identity: Identity) -> FaceRig:
        anatomy = Anatomy(identity)
        neutral = self._neutral(anatomy)
        shapes = {name: action(self.u, self.v, anatomy) for name, action in ACTION_UNITS.items()}
        return FaceRig(neutral, shapes)

    def _neutral(self, a: Anatomy) -> np.ndarray:
        u, v = self.u, self.v
        side = np.abs(u)
        z = a.depth * (np.sqrt(np.clip(1 - 0.8 * u ** 2 - 0.3 * v ** 2, 0.02, None)) - 1)
        z -= a.forehead_slope * _smoothstep(0.45, 1.0, v) ** 2
        z += a.brow_ridge * _bump(side, v, a.eye_u, a.brow_v, 0.2, 0.06)
        z += 0.6 * a.brow_ridge * _bump(u, v, 0, a.brow_v - 0.03, 0.09, 0.06)
        z += self._eyes(side, v, a)
        z += self._nose(u, side, v, a)
        z += a.cheekbones * _bump(side, v, 0.47, a.eye_v - 0.17, 0.16, 0.11)
        z += a.cheek_fullness * _bump(side, v, 0.37, a.mouth_v + 0.13, 0.17, 0.14)
        z -= a.nasolabial * self._nasolabial_fold(side, v, a)
        z += self._mouth(u, v, a)
        z += a.chin * _bump(u, v, 0, a.chin_v, a.chin_width, 0.09)
        jaw = 1 + a.jaw_width * _smoothstep(-0.1, -0.7, v)
        x = a.width * u * jaw + a.asymmetry * v
        y = a.length * v - a.sag * _smoothstep(a.mouth_v + 0.15, a.mouth_v - 0.2, v) * side
        return np.stack([x, y, z], axis=1)

    @staticmethod
    def _eyes(side, v, a: Anatomy):
        size = a.eye_size
        socket = -a.eye_depth * _bump(side, v, a.eye_u, a.eye_v, 0.15 * size, 0.09 * size)
        eyeball = 0.8 * a.eye_depth * _bump(side, v, a.eye_u, a.eye_v, 0.085 * size, 0.04 * size)
        upper_lid = 2.0 * _bump(side, v, a.eye_u, a.eye_v + 0.045 * size, 0.08 * size, 0.013)
        lower_lid = 1.0 * _bump(side, v, a.eye_u, a.eye_v - 0.042 * size, 0.07 * size, 0.011)
        return socket + eyeball + upper_lid + lower_lid

    @staticmethod
    def _nose(u, side, v, a: Anatomy):
        along = np.clip((a.nose_root_v - v) / (a.nose_root_v - a.nose_tip_v), 0, 1)  # 0 at the root, 1 at the tip
        half_width = a.nose_width * (0.03 + 0.05 * along ** 1.5)
        height = a.nose_height * (a.nose_bridge + (1 - a.nose_bridge) * along ** 1.6)
        below_tip = np.exp(-0.5 * (np.minimum(v - a.nose_tip_v - a.nose_tip_lift, 0) / 0.06) ** 2)
        above_root = np.exp(-0.5 * (np.maximum(v - a.nose_root_v, 0) / 0.05) ** 2)
        ridge = height * np.exp(-0.5 * (u / half_width) ** 2) * below_tip * above_root
        wings = 7 * _bump(side, v, 0.085 * a.nose_width, a.nose_tip_v + 0.01, 0.04, 0.035)
        nostrils = -3 * _bump(side, v, 0.035, a.nose_tip_v - 0.04, 0.02, 0.012)
        return ridge + wings + nostrils

    @staticmethod
    def _nasolabial_fold(side, v, a: Anatomy):
        """A crease along the line from beside the nose wing to beyond the mouth corner."""
        start = np.array([0.14 * a.nose_width, a.nose_tip_v + 0.02])
        end = np.array([a.mouth_half_width + 0.07, a.mouth_v - 0.1])
        direction = end - start
        t = np.clip(((side - start[0]) * direction[0] + (v - start[1]) * direction[1]) / (direction @ direction), 0, 1)
        distance = np.hypot(side - start[0] - t * direction[0], v - start[1] - t * direction[1])
        return np.exp(-0.5 * (distance / 0.02) ** 2)

    @staticmethod
    def _mouth(u, v, a: Anatomy):
        across = np.exp(-0.5 * (u / (0.75 * a.mouth_half_width)) ** 4)  # flat across the mouth, falling at corners
        lips = np.exp(-0.5 * (u / (0.6 * a.mouth_half_width)) ** 2)  # lips are fullest in the middle
        muzzle = 4 * _bump(u, v, 0, a.mouth_v, 0.32, 0.17)
        upper = a.upper_lip * lips * _band(v, a.mouth_v + 0.028, 0.012 + 0.016 * lips)
        lower = a.lower_lip * lips * _band(v, a.mouth_v - 0.035, 0.014 + 0.02 * lips)
        line = -2.5 * across * _band(v, a.mouth_v, 0.011)
        philtrum = -1.0 * _bump(u, v, 0, (a.nose_tip_v + a.mouth_v) / 2, 0.025, 0.05)
        chin_crease = -2.0 * lips * _band(v, a.mouth_v - 0.13, 0.03)
        return muzzle + upper + lower + line + philtrum + chin_crease


def _displacement(dx=0.0, dy=0.0, dz=0.0):
    return np.stack(np.broadcast_arrays(dx, dy, dz), axis=1).astype(np.float64)


# Each action unit maps (u, v, anatomy) to a displacement (V, 3) in mm at full strength.

def _inner_brow_raiser(u, v, a):  # AU1
    return _displacement(dy=7 * _bump(np.abs(u), v, 0.12, a.brow_v, 0.12, 0.13))


def _outer_brow_raiser(u, v, a):  # AU2
    return _displacement(dy=7 * _bump(np.abs(u), v, a.eye_u + 0.12, a.brow_v, 0.14, 0.13))


def _brow_lowerer(u, v, a):  # AU4: brows down and together, a bulge between them
    weight = _bump(np.abs(u), v, 0.16, a.brow_v, 0.18, 0.1)
    return _displacement(dx=-2.5 * _sideways(u) * weight, dy=-5 * weight,
                         dz=2 * _bump(u, v, 0, a.brow_v - 0.03, 0.06, 0.05))


def _upper_lid_raiser(u, v, a):  # AU5: eyes wide, more eyeball shows
    side = np.abs(u)
    return _displacement(dy=3.5 * _bump(side, v, a.eye_u, a.eye_v + 0.045, 0.1, 0.035),
                         dz=1.5 * _bump(side, v, a.eye_u, a.eye_v, 0.06, 0.03))


def _cheek_raiser(u, v, a):  # AU6: cheeks up and forward, lower lids pushed up
    side = np.abs(u)
    cheek = _bump(side, v, 0.42, a.eye_v - 0.16, 0.16, 0.12)
    return _displacement(dy=4 * cheek + 1.5 * _bump(side, v, a.eye_u, a.eye_v - 0.05, 0.1, 0.03), dz=3 * cheek)


def _lid_tightener(u, v, a):  # AU7: narrowed eyes
    side = np.abs(u)
    return _displacement(dy=2 * _bump(side, v, a.eye_u, a.eye_v - 0.045, 0.1, 0.025)
                         - 1.5 * _bump(side, v, a.eye_u, a.eye_v + 0.045, 0.1, 0.025))


def _nose_wrinkler(u, v, a):  # AU9: nose sides up, wrinkled bridge, inner brows pulled down
    side = np.abs(u)
    return _displacement(dy=4.5 * _bump(side, v, 0.09, a.nose_tip_v + 0.08, 0.08, 0.1)
                         - 2.5 * _bump(side, v, 0.1, a.brow_v, 0.1, 0.08),
                         dz=2 * _bump(u, v, 0, (a.nose_root_v + a.nose_tip_v) / 2, 0.06, 0.05))


def _upper_lip_raiser(u, v, a):  # AU10
    weight = np.exp(-0.5 * (u / (0.7 * a.mouth_half_width)) ** 2) * _band(v, a.mouth_v + 0.05, 0.06)
    return _displacement(dy=6 * weight, dz=1.5 * weight)


def _lip_corner_puller(u, v, a):  # AU12: the smile, corners out, up and back
    corner = _bump(np.abs(u), v, a.mouth_half_width, a.mouth_v, 0.15, 0.09)
    return _displacement(dx=6 * _sideways(u) * corner, dy=5 * corner,
                         dz=-3 * corner + 2 * _bump(np.abs(u), v, a.mouth_half_width + 0.12, a.mouth_v + 0.1, 0.1, 0.1))


def _lip_corner_depressor(u, v, a):  # AU15
    corner = _bump(np.abs(u), v, a.mouth_half_width, a.mouth_v - 0.02, 0.1, 0.08)
    return _displacement(dx=1 * _sideways(u) * corner, dy=-6 * corner)


def _chin_raiser(u, v, a):  # AU17: chin boss and lower lip pushed up
    chin = _bump(u, v, 0, a.chin_v + 0.1, 0.2, 0.12)
    return _displacement(dy=3 * chin, dz=2 * chin)


def _lip_stretcher(u, v, a):  # AU20: corners pulled sideways
    corner = _bump(np.abs(u), v, a.mouth_half_width, a.mouth_v, 0.12, 0.08)
    return _displacement(dx=6 * _sideways(u) * corner, dy=-1 * corner, dz=-1 * corner)


def _lip_tightener(u, v, a):  # AU23: thin, narrowed lips
    across = np.exp(-0.5 * (u / a.mouth_half_width) ** 4) * _band(v, a.mouth_v, 0.05)
    corner = _bump(np.abs(u), v, a.mouth_half_width, a.mouth_v, 0.08, 0.06)
    return _displacement(dx=-2 * _sideways(u) * corner, dz=-2.5 * across)


def _lips_part(u, v, a):  # AU25
    lower = np.exp(-0.5 * (u / a.mouth_half_width) ** 4) * _band(v, a.mouth_v - 0.04, 0.04)
    return _displacement(dy=-3 * lower)


def _jaw_drop(u, v, a):  # AU26: everything below the lips moves down and back; the stretched band between
    below = _smoothstep(a.mouth_v + 0.02, a.mouth_v - 0.08, v) * (1 - 0.5 * u ** 2)
    mouth = np.exp(-0.5 * (u / a.mouth_half_width) ** 4)
    opening = 4 * below * (1 - below) * mouth  # the lips parting, pushed in like the mouth's inside
    return _displacement(dy=-14 * below, dz=-4 * below - 6 * opening)


ACTION_UNITS = {
    "AU1": _inner_brow_raiser, "AU2": _outer_brow_raiser, "AU4": _brow_lowerer, "AU5": _upper_lid_raiser,
    "AU6": _cheek_raiser, "AU7": _lid_tightener, "AU9": _nose_wrinkler, "AU10": _upper_lip_raiser,
    "AU12": _lip_corner_puller, "AU15": _lip_corner_depressor, "AU17": _chin_raiser, "AU20": _lip_stretcher,
    "AU23": _lip_tightener, "AU25": _lips_part, "AU26": _jaw_drop,
}
