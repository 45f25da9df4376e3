"""Driving the generator from a linear blendshape model that the tests write in ICT-FaceKit's layout."""

import json
import subprocess

import numpy as np
import pytest
import trimesh

from affectvlm.data import index_dataset
from affectvlm.data.blendshapes import BlendshapeFaceModel, FaceModelError
from affectvlm.data.synthetic import expression_weights, generate_dataset
from affectvlm.geometry import load_mesh

EXPRESSIONS = {  # shape name -> (vertex selection rule, offset per selected vertex)
    "jawOpen": (lambda p: p[:, 1] < -0.3, [0.0, -0.2, 0.0]),
    "mouthSmile_L": (lambda p: (p[:, 0] > 0.2) & (p[:, 1] < 0), [0.05, 0.1, 0.0]),
    "mouthSmile_R": (lambda p: (p[:, 0] < -0.2) & (p[:, 1] < 0), [-0.05, 0.1, 0.0]),
    "browInnerUp": (lambda p: p[:, 1] > 0.5, [0.0, 0.1, 0.0]),
    "noseSneer_L": (lambda p: p[:, 2] > 0.8, [0.0, 0.05, 0.02]),
}
RECIPE = {
    "happiness": {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0},
    "surprise": {"browInnerUp": 1.0, "jawOpen": 0.8},
    "fear": {"browInnerUp": 0.7, "jawOpen": 0.3},
    "sadness": {"browInnerUp": 0.5},
    "anger": {"noseSneer_L": 0.5},
    "disgust": {"noseSneer_L": 1.0},
}


def write_obj(path, vertices, faces):
    lines = [f"v {x:.7f} {y:.7f} {z:.7f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def model_dir(tmp_path):
    """neutral + 3 identity shapes + 5 expression shapes, one topology, offsets known to the test."""
    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    sphere = trimesh.creation.icosphere(subdivisions=2)
    neutral, faces = sphere.vertices, sphere.faces
    write_obj(folder / "generic_neutral_mesh.obj", neutral, faces)
    rng = np.random.default_rng(0)
    identity_offsets = [0.05 * rng.standard_normal(neutral.shape) for _ in range(3)]
    for index, offset in enumerate(identity_offsets):
        write_obj(folder / f"identity{index:03d}.obj", neutral + offset, faces)
    expression_offsets = {}
    for name, (select, offset) in EXPRESSIONS.items():
        expression_offsets[name] = np.where(select(neutral)[:, None], np.array(offset), 0.0)
        write_obj(folder / f"{name}.obj", neutral + expression_offsets[name], faces)
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
    return folder, neutral, faces, identity_offsets, expression_offsets


def test_rig_is_the_linear_model_written(model_dir, tmp_path):
    folder, neutral, faces, identity_offsets, expression_offsets = model_dir
    model = BlendshapeFaceModel.from_folder(folder, tmp_path / "recipe.json")
    assert np.array_equal(model.faces, faces)
    identity = model.random_identity(np.random.default_rng(3))
    assert len(identity.coefficients) == 3 and identity.sex is None
    weights = expression_weights(model, "surprise", 2)
    assert weights == {"browInnerUp": 0.5, "jawOpen": 0.4}
    expected = neutral + sum(c * o for c, o in zip(identity.coefficients, identity_offsets)) \
        + 0.5 * expression_offsets["browInnerUp"] + 0.4 * expression_offsets["jawOpen"]
    assert np.allclose(model.rig(identity).pose(weights), expected, atol=1e-5)


def test_dataset_from_a_blendshape_model(model_dir, tmp_path):
    folder, neutral, faces, _, _ = model_dir
    model = BlendshapeFaceModel.from_folder(folder, tmp_path / "recipe.json")
    generate_dataset(tmp_path / "out", subjects=2, seed=1, model=model)
    samples = index_dataset(tmp_path / "out")
    assert len(samples) == 50 and all("sex" not in s.attributes for s in samples)
    mesh = load_mesh(samples[-1].path)
    assert np.array_equal(mesh.faces, faces)
    assert 0.5 < np.linalg.norm(mesh.vertices, axis=1).mean() < 1.5  # the model's scale, a unit sphere


def test_generate_command_with_blendshapes(model_dir, tmp_path):
    folder = model_dir[0]
    out = tmp_path / "cli"
    result = subprocess.run(["affectvlm", "generate", "--out", str(out), "--subjects", "1", "--blendshapes",
                             str(folder), "--recipe", str(tmp_path / "recipe.json"), "--sequences", "--frames", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(index_dataset(out)) == 6 * 4


@pytest.mark.parametrize("damage, message", [
    (lambda folder, recipe: (folder / "jawOpen.obj").unlink(), "expression shapes not in .*: jawOpen"),
    (lambda folder, recipe: (folder / "generic_neutral_mesh.obj").unlink(), "no neutral mesh"),
    (lambda folder, recipe: [p.unlink() for p in folder.glob("identity*.obj")], "no identity shapes"),
    (lambda folder, recipe: (folder / "identity001.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"),
     "identity001.obj: topology differs"),
    (lambda folder, recipe: (folder / "browInnerUp.obj").write_bytes(b"\x00\xff" * 50), "browInnerUp.obj"),
    (lambda folder, recipe: recipe.write_text("{not json"), "recipe.json: cannot read recipe"),
    (lambda folder, recipe: recipe.write_text(json.dumps({"happiness": {"jawOpen": 1}})),
     "no weights for anger, disgust, fear, sadness, surprise"),
    (lambda folder, recipe: recipe.write_text(json.dumps({**RECIPE, "boredom": {}})), "unknown emotion 'boredom'"),
    (lambda folder, recipe: recipe.write_text(json.dumps({**RECIPE, "fear": {"jawOpen": "lots"}})),
     "'fear' must map shape names to finite numbers"),
    (lambda folder, recipe: recipe.write_text("[1, 2]"), "a recipe is a JSON object"),
])
def test_broken_models_and_recipes_are_one_line_cli_errors(model_dir, tmp_path, damage, message):
    folder = model_dir[0]
    recipe = tmp_path / "recipe.json"
    damage(folder, recipe)
    with pytest.raises(FaceModelError, match=message):
        BlendshapeFaceModel.from_folder(folder, recipe)
    result = subprocess.run(["affectvlm", "generate", "--out", str(tmp_path / "out"), "--subjects", "1",
                             "--blendshapes", str(folder), "--recipe", str(recipe)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("affectvlm generate: error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
