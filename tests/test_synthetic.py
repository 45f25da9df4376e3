"""The built-in synthetic 3D/4D face generator: topology, labels, determinism, and a task that is not trivial."""

import itertools
from collections import Counter

import numpy as np
import pytest

from affectvlm.data import BASIC_EMOTIONS, EMOTIONS, index_dataset
from affectvlm.data.face_rig import Identity
from affectvlm.data.procedural_face import APEX_WEIGHTS, SHAPE_PARAMETERS, Anatomy, ProceduralFaceModel
from affectvlm.data.synthetic import expression_envelope, expression_weights, generate_dataset, posed_face
from affectvlm.geometry import load_mesh

MODEL = ProceduralFaceModel()


def rms(a, b):
    return float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))


def identities(count, seed=0):
    rng = np.random.default_rng(seed)
    return [MODEL.random_identity(rng) for _ in range(count)]


def test_one_topology_of_a_plausible_size():
    assert 10_000 <= len(MODEL.faces) <= 40_000
    assert len(SHAPE_PARAMETERS) >= 20
    rig = MODEL.rig(identities(1)[0])
    used = np.unique(MODEL.faces)
    assert used[0] == 0 and used[-1] == len(rig.neutral) - 1 and len(used) == len(rig.neutral)
    # A face: about 14 cm wide, 19 cm from hairline to chin, the nose tip the frontmost point near the centre.
    width, height, _ = np.ptp(rig.neutral, axis=0)
    assert 110 < width < 170 and 150 < height < 230
    front = rig.neutral[np.argmax(rig.neutral[:, 2])]
    assert abs(front[0]) < 10 and -40 < front[1] < 0


def test_static_dataset_labels_are_balanced_and_files_share_the_topology(tmp_path):
    generate_dataset(tmp_path, subjects=2, seed=5)
    samples = index_dataset(tmp_path)  # read back through labels.csv, as a user would
    assert len(samples) == 2 * 25
    for subject in ("S001", "S002"):
        mine = [s for s in samples if s.subject == subject]
        counts = Counter(s.emotion for s in mine)
        assert counts == {**{e: 4 for e in BASIC_EMOTIONS}, "neutral": 1}
        assert Counter((s.emotion, s.intensity) for s in mine if s.emotion != "neutral") == \
               {(e, level): 1 for e in BASIC_EMOTIONS for level in (1, 2, 3, 4)}
        assert len({(s.attributes["sex"], s.attributes["age"]) for s in mine}) == 1
    for sample in samples[::7]:
        mesh = load_mesh(sample.path)
        assert np.array_equal(mesh.faces, MODEL.faces)


def test_samples_load_in_the_canonical_frame_with_their_labels(tmp_path):
    from affectvlm.data import load_sample

    generate_dataset(tmp_path, subjects=1, seed=8, file_format="wrl")
    sample = next(s for s in index_dataset(tmp_path) if s.emotion == "surprise" and s.intensity == 2)
    assert load_sample(sample).metadata["normalise_registered"]  # registered to the template by default
    mesh = load_sample(sample, pose="none")
    assert np.isclose(np.linalg.norm(mesh.vertices, axis=1).max(), 1.0, atol=1e-5)
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    assert np.allclose(low + high, 0, atol=1e-5)
    assert (mesh.metadata["subject"], mesh.metadata["emotion"], mesh.metadata["intensity"]) == ("S001", "surprise", 2)
    assert mesh.metadata["sex"] == sample.attributes["sex"]


def test_same_seed_same_bytes_and_subjects_do_not_depend_on_the_count(tmp_path):
    generate_dataset(tmp_path / "a", subjects=2, seed=11, file_format="ply")
    generate_dataset(tmp_path / "b", subjects=2, seed=11, file_format="ply")
    generate_dataset(tmp_path / "c", subjects=1, seed=11, file_format="ply")
    generate_dataset(tmp_path / "d", subjects=1, seed=12, file_format="ply")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 51
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    first = tmp_path / "a" / "S001" / "S001_happiness_4.ply"
    assert first.read_bytes() == (tmp_path / "c" / "S001" / "S001_happiness_4.ply").read_bytes()
    assert first.read_bytes() != (tmp_path / "d" / "S001" / "S001_happiness_4.ply").read_bytes()


def test_weak_expressions_change_a_face_less_than_identity_and_strong_ones_far_more_than_noise():
    people = identities(12, seed=1)
    rigs = [MODEL.rig(person) for person in people]
    identity_differences = [rms(a.neutral, b.neutral) for a, b in itertools.combinations(rigs, 2)]
    median_identity = float(np.median(identity_differences))

    level = {n: [rms(rig.pose(expression_weights(MODEL, emotion, n)), rig.neutral)
                 for rig in rigs for emotion in BASIC_EMOTIONS] for n in (1, 4)}
    rng = np.random.default_rng(0)
    noise = np.mean([rms(posed_face(rig, {}, np.zeros(3), rng), rig.neutral) for rig in rigs])

    print(f"\nmedian inter-identity RMS {median_identity:.2f} mm; level-1 expression RMS max {max(level[1]):.2f}"
          f" (mean {np.mean(level[1]):.2f}); level-4 min {min(level[4]):.2f} (mean {np.mean(level[4]):.2f});"
          f" vertex noise RMS {noise:.3f} mm")
    assert max(level[1]) < median_identity
    assert min(level[4]) > 8 * noise


def test_emotions_share_action_units_but_no_two_are_alike():
    units = {emotion: set(weights) for emotion, weights in APEX_WEIGHTS.items()}
    assert set(units) == set(EMOTIONS) and units["neutral"] == set()
    assert units["fear"] & units["surprise"]
    for first, second in itertools.combinations(BASIC_EMOTIONS, 2):
        assert units[first] != units[second]
    assert sum(len(units[e] & units[o]) > 0 for e, o in itertools.combinations(BASIC_EMOTIONS, 2)) >= 5


def region(anatomy, u_centre, v_centre, radius=0.05):
    """Vertices within `radius` (in u, v) of a point, mirrored to both sides of the face."""
    return np.hypot(np.abs(MODEL.u) - u_centre, MODEL.v - v_centre) < radius


@pytest.mark.parametrize("emotion, place, axis, sign", [
    ("happiness", "mouth_corner", 1, +1),   # lip-corner puller raises the corners
    ("sadness", "mouth_corner", 1, -1),     # lip-corner depressor lowers them
    ("surprise", "brow", 1, +1),            # brow raisers
    ("anger", "brow", 1, -1),               # brow lowerer
    ("surprise", "chin", 1, -1),            # jaw drop
    ("disgust", "upper_lip", 1, +1),        # upper-lip raiser
])
def test_expressions_move_the_right_regions(emotion, place, axis, sign):
    person = identities(1, seed=4)[0]
    anatomy = Anatomy(person)
    centres = {"mouth_corner": (anatomy.mouth_half_width, anatomy.mouth_v), "brow": (anatomy.eye_u, anatomy.brow_v),
               "chin": (0.0, anatomy.chin_v), "upper_lip": (0.0, anatomy.mouth_v + 0.05)}
    rig = MODEL.rig(person)
    moved = rig.pose(expression_weights(MODEL, emotion, 4)) - rig.neutral
    near = region(anatomy, *centres[place])
    assert near.sum() >= 4
    assert sign * moved[near, axis].mean() > 1.5  # millimetres


def flipped_triangles(vertices, reference):
    """Triangles whose normal turns more than 90 degrees away from their normal on `reference`: folded skin."""
    def normals(points):
        corners = points[MODEL.faces]
        return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])

    return int(((normals(vertices) * normals(reference)).sum(axis=1) <= 0).sum())


def test_no_expression_folds_the_skin_at_any_intensity():
    # The strongest face the generator makes: every weight of the level at the top of its jitter (x 1.5).
    strongest = 1.5
    for identity in identities(20, seed=5):
        rig = MODEL.rig(identity)
        for emotion, level in itertools.product(BASIC_EMOTIONS, (1, 2, 3, 4)):
            weights = {name: strongest * weight for name, weight in expression_weights(MODEL, emotion, level).items()}
            assert flipped_triangles(rig.pose(weights), rig.neutral) == 0, (emotion, level)
        for unit in rig.shapes:
            assert flipped_triangles(rig.pose({unit: strongest}), rig.neutral) == 0, unit


def test_sex_and_age_change_the_geometry():
    coefficients = np.zeros(len(SHAPE_PARAMETERS))
    faces = {(sex, age): MODEL.rig(Identity(coefficients, sex, age)).neutral
             for sex in ("female", "male") for age in (20, 40, 65)}
    assert rms(faces["female", 40], faces["male", 40]) > 1.0
    assert rms(faces["female", 20], faces["female", 40]) > 0.2
    assert rms(faces["female", 40], faces["female", 65]) > 0.5
    same_group = MODEL.rig(Identity(coefficients, "female", 45)).neutral
    assert rms(faces["female", 40], same_group) == 0  # the age group, not the exact age, shapes the face


def test_sequences_go_from_neutral_to_apex_and_back(tmp_path):
    frames = 11
    envelope = expression_envelope(frames)
    assert envelope[0] == envelope[-1] == 0 and envelope.max() == 1
    assert np.all(np.abs(np.diff(expression_envelope(41))) < 0.2)  # smooth: no jumps between frames

    generate_dataset(tmp_path, subjects=1, seed=2, sequences=True, frames=frames)
    samples = index_dataset(tmp_path)
    assert len(samples) == len(BASIC_EMOTIONS) * frames
    happy = sorted((s for s in samples if s.sequence == "S001/happiness"), key=lambda s: s.frame)
    assert [s.frame for s in happy] == list(range(frames))
    meshes = [load_mesh(s.path) for s in happy]
    assert all(np.array_equal(m.faces, meshes[0].faces) for m in meshes)
    # The mouth corners rise to the apex and come back down (pose drift moves every vertex a little).
    anatomy = Anatomy(MODEL.random_identity(np.random.default_rng([2, 0])))
    corners = region(anatomy, anatomy.mouth_half_width, anatomy.mouth_v)
    lift = np.array([m.vertices[corners, 1].mean() - meshes[0].vertices[corners, 1].mean() for m in meshes])
    apex = int(np.argmax(envelope))
    assert lift[apex] > 2.0 and abs(lift[-1]) < 1.0


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="unknown format 'stl'"):
        generate_dataset("unused", 1, file_format="stl")
    with pytest.raises(ValueError, match="at least 3 frames"):
        generate_dataset("unused", 1, sequences=True, frames=2)
