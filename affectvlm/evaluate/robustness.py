"""Robustness to real scans: a named suite of perturbations of generated faces, and the accuracy a predictor
keeps under each, beside its accuracy on the same faces unperturbed.

The faces are the built-in generator's (`affectvlm.data.synthetic`, the same faces `affectvlm generate` writes
for a seed), in millimetres. All share the procedural model's topology, so the eyes and the mouth are found
on every face as the vertices nearest the anatomy's (u, v) of the eye centres and the mouth centre; holes are
cut there. Every perturbed face goes through `affectvlm predict`'s path: normalised, rendered at the predictor's
settings, classified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from affectvlm.data.emotions import BASIC_EMOTIONS
from affectvlm.data.face_template import EYE_HOLE_MM
from affectvlm.evaluate import perturb
from affectvlm.evaluate.metrics import classification_report
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.normalise import normalise

ROBUSTNESS_SEED = 9001  # generator seed of the default faces: subjects no default training run generates
MOUTH_HOLE_MM = 12.0  # radius of the hole at the mouth (the mouth is about 28 mm wide)
STRUCTURED_LIGHT_MM = 0.3  # depth noise of a structured-light face scanner
CONSUMER_DEPTH_MM = 1.5  # depth noise of a consumer depth camera at arm's length
POSE_DEGREES = 15.0
OFF_CENTRE_MM = (250.0, -180.0, 600.0)  # a head placed away from the scanner's origin
BATCH = 16


@dataclass(frozen=True)
class GeneratedFace:
    mesh: Mesh  # millimetres, posed as the generator poses it
    subject: str
    emotion: str
    intensity: int
    landmarks: dict  # "right_eye", "left_eye", "mouth" -> (3,) float positions on the mesh


def generated_faces(subjects: int, seed: int = ROBUSTNESS_SEED, levels=(3, 4),
                    emotions=BASIC_EMOTIONS) -> list[GeneratedFace]:
    """The generator's static faces of `subjects` subjects for `seed` (the emotions at the given intensity
    levels; "neutral" at level 0 when listed), with their eye and mouth landmarks."""
    from affectvlm.data.procedural_face import Anatomy, ProceduralFaceModel
    from affectvlm.data.synthetic import static_faces, subject_identity, subject_name

    model = ProceduralFaceModel()
    faces = []
    for index in range(subjects):
        identity, rng = subject_identity(model, seed, index)
        nearest = model.feature_vertices(Anatomy(identity))
        for emotion, level, vertices in static_faces(model, model.rig(identity), rng):
            if emotion in emotions and (level in levels or emotion == "neutral"):
                faces.append(GeneratedFace(Mesh(vertices, model.faces), subject_name(index), emotion, level,
                                           {name: vertices[i].astype(np.float64) for name, i in nearest.items()}))
    return faces


def _holes(face: GeneratedFace, names, radius: float) -> Mesh:
    return perturb.cut_holes(face.mesh, [face.landmarks[name] for name in names], radius)


def _random_pose(face: GeneratedFace, seed: int) -> Mesh:
    angles = np.random.default_rng([seed, 1]).uniform(-POSE_DEGREES, POSE_DEGREES, 3)
    return perturb.rigid_motion(face.mesh, angles)


def _scan_like(face: GeneratedFace, seed: int) -> Mesh:
    """Several at once, as one real scan might show them: holes at the eyes and mouth, cut at the neck and the
    forehead, scanned again at 20k triangles, turned, placed off centre, noisy, in metres."""
    mesh = _holes(face, ("right_eye", "left_eye"), EYE_HOLE_MM)
    mesh = perturb.cut_holes(mesh, [face.landmarks["mouth"]], MOUTH_HOLE_MM)
    mesh = perturb.rescan(perturb.crop_height(mesh, 0.08, 0.9), 20_000)
    angles = np.random.default_rng([seed, 2]).uniform(-POSE_DEGREES, POSE_DEGREES, 3)
    mesh = perturb.scanner_noise(perturb.rigid_motion(mesh, angles, OFF_CENTRE_MM), STRUCTURED_LIGHT_MM, seed)
    return perturb.rescale(perturb.shuffle_order(mesh, seed), 0.001)


# name -> (what it does, function of (face, seed) -> Mesh)
SUITE: dict[str, tuple[str, Callable[[GeneratedFace, int], Mesh]]] = {
    "none": ("the generated face as it is (mm)", lambda face, seed: face.mesh),
    "units-cm": ("coordinates in centimetres", lambda face, seed: perturb.rescale(face.mesh, 0.1)),
    "units-m": ("coordinates in metres", lambda face, seed: perturb.rescale(face.mesh, 0.001)),
    "rescan-5k": ("scanned again from the front, re-triangulated, ~5k triangles",
                  lambda face, seed: perturb.rescan(face.mesh, 5_000)),
    "rescan-100k": ("scanned again from the front, re-triangulated, ~100k triangles",
                    lambda face, seed: perturb.rescan(face.mesh, 100_000)),
    "holes-eyes": (f"holes of radius {EYE_HOLE_MM:g} mm at both eyes",
                   lambda face, seed: _holes(face, ("right_eye", "left_eye"), EYE_HOLE_MM)),
    "holes-mouth": (f"a hole of radius {MOUTH_HOLE_MM:g} mm at the mouth",
                    lambda face, seed: _holes(face, ("mouth",), MOUTH_HOLE_MM)),
    "open-neck-forehead": ("cut below 8% and above 90% of the height: open boundaries at neck and forehead",
                           lambda face, seed: perturb.crop_height(face.mesh, 0.08, 0.9)),
    **{f"pose-{axis}{sign}{POSE_DEGREES:g}": (
        f"head turned {sign}{POSE_DEGREES:g} degrees in {axis}",
        lambda face, seed, k=k, s=s: perturb.rigid_motion(face.mesh, np.eye(3)[k] * s * POSE_DEGREES))
       for k, axis in enumerate(("yaw", "pitch", "roll")) for sign, s in (("+", 1.0), ("-", -1.0))},
    "pose-random": (f"yaw, pitch and roll each uniform in ±{POSE_DEGREES:g} degrees", _random_pose),
    "off-centre": (f"moved by {OFF_CENTRE_MM} mm", lambda face, seed: perturb.rigid_motion(face.mesh, (0, 0, 0),
                                                                                             OFF_CENTRE_MM)),
    "noise-structured-light": (f"depth noise of {STRUCTURED_LIGHT_MM:g} mm (structured-light scanner)",
                               lambda face, seed: perturb.scanner_noise(face.mesh, STRUCTURED_LIGHT_MM, seed)),
    "noise-consumer-depth": (f"depth noise of {CONSUMER_DEPTH_MM:g} mm (consumer depth camera)",
                             lambda face, seed: perturb.scanner_noise(face.mesh, CONSUMER_DEPTH_MM, seed)),
    "vertex-order": ("vertices and faces listed in a random order", lambda face, seed: perturb.shuffle_order(
        face.mesh, seed)),
    "winding": ("every face wound the other way round", lambda face, seed: perturb.reverse_winding(face.mesh)),
    "scan-like": ("all at once: holes, open boundaries, rescan 20k, random pose, off centre, noise, metres",
                  _scan_like),
}


def robustness_report(predictor, faces: list[GeneratedFace], names=None, seed: int = 0) -> dict:
    """Accuracy of `predictor` on `faces` under each perturbation of the suite (`names`, default all; "none" is
    always measured first), with the drop from the unperturbed accuracy. Perturbations draw from (seed, face)."""
    names = list(dict.fromkeys(["none", *(names if names is not None else SUITE)]))
    unknown = [name for name in names if name not in SUITE]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {', '.join(unknown)} (choose from {', '.join(SUITE)})")
    if not faces:
        raise ValueError("no faces to perturb")
    missing = sorted({face.emotion for face in faces} - set(predictor.classes))
    if missing:
        raise ValueError(f"the model does not know the emotion(s) {', '.join(missing)} of the faces")
    labels = np.array([predictor.classes.index(face.emotion) for face in faces])
    results = {}
    for name in names:
        description, apply = SUITE[name]
        meshes = [apply(face, seed * 1_000_003 + i) for i, face in enumerate(faces)]
        probabilities = _probabilities(predictor, meshes)
        report = classification_report(probabilities, labels, predictor.classes)
        results[name] = {"description": description, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                         "triangles": float(np.mean([mesh.num_faces for mesh in meshes])),
                         "predicted": [predictor.classes[i] for i in probabilities.argmax(axis=1)]}
    baseline = results["none"]["accuracy"]
    for result in results.values():
        result["drop"] = baseline - result["accuracy"]
    return {"faces": len(faces), "subjects": sorted({face.subject for face in faces}),
            "emotions": sorted({face.emotion for face in faces}),
            "intensities": sorted({face.intensity for face in faces}), "seed": seed, "perturbations": results}


@torch.no_grad()
def _probabilities(predictor, meshes: list[Mesh]) -> np.ndarray:
    from affectvlm.predict import embed_vertices

    rows = []
    for start in range(0, len(meshes), BATCH):
        canonical = [normalise(mesh, predictor.pose) for mesh in meshes[start:start + BATCH]]
        embeddings = embed_vertices(predictor, [torch.from_numpy(m.vertices) for m in canonical],
                                    [torch.from_numpy(m.faces) for m in canonical])
        rows.append(predictor.model.logits(embeddings, predictor.bank).softmax(dim=-1).cpu().double())
    return torch.cat(rows).numpy()


def format_robustness(report: dict) -> str:
    lines = [f"robustness on {report['faces']} generated faces of {len(report['subjects'])} subject(s) "
             f"(intensities {', '.join(map(str, report['intensities']))})",
             f"{'perturbation':<24}{'accuracy':>9}{'drop':>8}{'triangles':>11}  what"]
    for name, result in report["perturbations"].items():
        lines.append(f"{name:<24}{result['accuracy']:9.1%}{-result['drop']:+8.1%}{result['triangles']:11.0f}  "
                     f"{result['description']}")
    return "\n".join(lines)
