"""`affectvlm evaluate` for real: k-fold cross-validation trained through the trainer (tiny model, one step per
fold), a checkpoint on a generated set, zero-shot open_clip weights from a local file on 4D sequences, the
BU-3DFE protocol on a tree of BU-3DFE-named scans, and the robustness harness on generated faces."""

import contextlib
import io
import json
import os
import shutil
from typing import NamedTuple

import numpy as np
import pytest
import torch

from affectvlm.cli import main
from affectvlm.data.cache import load_index
from affectvlm.data.datasets import index_dataset
from affectvlm.data.emotions import BASIC_EMOTIONS
from affectvlm.data.splits import bu3dfe_protocol
from affectvlm.data.synthetic import generate_dataset
from affectvlm.evaluate import perturb
from affectvlm.evaluate.evaluation import zero_shot_predictor
from affectvlm.evaluate.protocols import bu3dfe_dataset
from affectvlm.evaluate.robustness import EYE_HOLE_MM, MOUTH_HOLE_MM, SUITE, generated_faces, robustness_report
from affectvlm.geometry import save_mesh
from affectvlm.model.factory import create_clip
from affectvlm.predict import embed_meshes, load_predictor, predict

TINY_MODEL = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
              "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
PNG = b"\x89PNG\r\n\x1a\n"
REPORT_KEYS = {"samples", "accuracy", "macro_f1", "classes", "per_class", "confusion", "ece", "calibration",
               "subjects"}


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def evaluate_cli(*args, expect=0) -> Result:
    """`affectvlm evaluate ARGS` run in this process (the command line's own entry point, without paying for a
    fresh interpreter's imports each time)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["evaluate", *map(str, args)])
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
    result = Result(code, stdout.getvalue(), stderr.getvalue())
    assert result.returncode == expect, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def tiny_training(tiny, *extra):
    return ["--model", tiny, "--batch-size", "16", "--epochs", "1", "--max-steps", "1", "--warmup", "0",
            "--no-progress", *extra]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG, path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    generate_dataset(root / "faces", 3, seed=5, file_format="ply")
    (root / "tiny.json").write_text(json.dumps(TINY_MODEL))
    return root


@pytest.fixture(scope="module")
def kfold(setup):
    """Three folds of the three generated subjects, one training step each, through the command line."""
    out = setup / "kfold"
    result = evaluate_cli(setup / "faces", "--protocol", "kfold", "--folds", "3", "--out", out, "--json",
                          "--trace-samples", *tiny_training(setup / "tiny.json"))
    return out, json.loads(result.stdout)


def test_kfold_folds_never_share_a_subject(setup, kfold):
    out, document = kfold
    subjects = {sample.subject for sample in index_dataset(setup / "faces")}
    tests = [set(fold["test_subjects"]) for fold in document["folds"]]
    assert len(tests) == 3 and set().union(*tests) == subjects and sum(map(len, tests)) == len(subjects)
    for fold in document["folds"]:
        held_out = set(fold["test_subjects"])
        assert set(fold["train_subjects"]) == subjects - held_out
        assert set(fold["report"]["subjects"]) == held_out  # evaluated on its own held-out subjects only
        # What the trainer really trained on: the sample ids it logged, as subjects of its render cache.
        run = out / f"fold-{fold['fold']}"
        info = load_checkpoint_info(run / "last.safetensors")
        cache = load_index(info["data"]["source"]["path"])["samples"]
        trained = {cache[i]["subject"] for line in (run / "samples-rank0.jsonl").read_text().splitlines()
                   for i in json.loads(line)["sample_ids"]}
        assert trained and not trained & held_out
        # The fold's report is the trainer's own held-out evaluation, recomputed from the same views.
        final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert final["kind"] == "eval" and final["samples"] == fold["report"]["samples"]
        assert final["accuracy"] == pytest.approx(fold["report"]["accuracy"])


def load_checkpoint_info(path):
    from affectvlm.train.checkpoint import load_checkpoint

    return load_checkpoint(path).info


def test_kfold_summary_is_mean_and_std_over_folds(kfold):
    out, document = kfold
    accuracies = [fold["report"]["accuracy"] for fold in document["folds"]]
    summary = document["summary"]["accuracy"]
    assert summary["values"] == accuracies
    assert summary["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert document["pooled"]["samples"] == sum(fold["report"]["samples"] for fold in document["folds"]) == 75
    pooled = np.array(document["pooled"]["confusion"])
    assert (pooled == sum(np.array(fold["report"]["confusion"]) for fold in document["folds"])).all()
    assert set(document["summary"]) >= {"accuracy", "macro_f1", "ece", "accuracy_intensity_3"}
    assert (out / "evaluation.json").is_file() and json.loads((out / "evaluation.json").read_text()) == document
    assert_png(out / "figures" / document["figures"]["confusion"])


def test_a_finished_fold_is_evaluated_not_trained_again(setup, kfold):
    out, document = kfold
    stamp = (out / "fold-1" / "last.safetensors").stat().st_mtime_ns
    result = evaluate_cli(setup / "faces", "--protocol", "kfold", "--folds", "3", "--fold", "1", "--out", out,
                          "--trace-samples", *tiny_training(setup / "tiny.json"))
    assert "using the finished run" in result.stdout
    assert (out / "fold-1" / "last.safetensors").stat().st_mtime_ns == stamp
    assert "fold 1:" in result.stdout and "accuracy" in result.stdout


def test_a_stored_fold_counts_as_the_same_training_only_when_it_is():
    from affectvlm.evaluate.protocols import same_training
    from affectvlm.train.config import TrainConfig

    wanted = TrainConfig(epochs=3, seed=4).as_dict()
    assert same_training(dict(wanted), wanted)
    assert same_training({**wanted, "out": "elsewhere", "device": "cuda", "progress": False}, wanted)  # how, not what
    assert not same_training({**wanted, "seed": 5}, wanted)
    older = {key: value for key, value in wanted.items() if key != "eye_holes"}   # stored before the option existed
    assert same_training(older, wanted)
    assert not same_training(older, {**wanted, "eye_holes": 0.5})
    # Configs stored before pose normalisation existed were trained unregistered, whatever the default is now.
    before_poses = {key: value for key, value in wanted.items() if key != "pose"}
    assert wanted["pose"] == "template" and not same_training(before_poses, wanted)
    assert same_training(before_poses, {**wanted, "pose": "none"})


def test_evaluate_a_checkpoint_end_to_end(setup, kfold, tmp_path):
    checkpoint = kfold[0] / "fold-0" / "last.safetensors"
    held_out = set(kfold[1]["folds"][0]["test_subjects"])
    result = evaluate_cli(checkpoint, setup / "faces", "--out", tmp_path, "--json")
    document = json.loads(result.stdout)
    assert document["mode"] == "checkpoint" and document["split"] == "test"
    report = document["report"]
    assert REPORT_KEYS <= report.keys() and set(report["subjects"]) == held_out
    assert set(report["accuracy_by_intensity"]) == {"0", "1", "2", "3", "4"}
    assert len(document["predictions"]) == report["samples"] == 25 * len(held_out)
    for name in ("confusion", "reliability"):
        assert_png(tmp_path / "figures" / document["figures"][name])
    # Every probability is what `affectvlm predict` gives for that file.
    predictor = load_predictor(checkpoint)
    records = document["predictions"][:4]
    for record, prediction in zip(records, predict(predictor, [r["file"] for r in records])):
        assert record["probabilities"] == pytest.approx([prediction.probabilities[c] for c in predictor.classes],
                                                        abs=1e-5)
    # The table for people.
    table = evaluate_cli(checkpoint, setup / "faces", "--out", tmp_path / "table", "--split", "all").stdout
    assert "macro F1" in table and "confusion" in table and "accuracy by intensity" in table


def test_evaluate_usage_errors_are_one_line(setup, tmp_path):
    for args, message in [(["only-one-path"], "takes CKPT DATA"),
                          (["--protocol", "bu3dfe"], "needs the BU-3DFE folder"),
                          (["a", "b", "--protocol", "kfold"], "one DATA folder"),
                          (["a", "--zero-shot", "x", "--robustness"], "exclude each other")]:
        result = evaluate_cli(*args, expect=2)
        assert message in result.stderr
    missing = evaluate_cli(tmp_path / "none.safetensors", setup / "faces", "--out", tmp_path, expect=1)
    assert missing.stderr.startswith("affectvlm evaluate: error:") and len(missing.stderr.splitlines()) == 1


@pytest.fixture(scope="module")
def sequences(setup):
    """Two subjects of 4D sequences (6 emotions x 4 frames), and two local weights files of the tiny model."""
    generate_dataset(setup / "sequences", 2, seed=8, file_format="ply", sequences=True, frames=4)
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = setup / f"weights-{seed}.pt"
        torch.save({"state_dict": create_clip(setup / "tiny.json").clip.state_dict()}, path)
        weights.append(path)
    return setup / "sequences", weights


def test_zero_shot_with_local_weights_on_sequences(setup, sequences, tmp_path):
    data, (weights, other_weights) = sequences
    document = json.loads(evaluate_cli("--zero-shot", setup / "tiny.json", "--pretrained", weights, data,
                                       "--out", tmp_path, "--json").stdout)
    assert document["mode"] == "zero-shot" and document["pretrained"] == str(weights)
    report = document["report"]
    assert report["samples"] == 48 and report["classes"] == sorted(BASIC_EMOTIONS)
    assert report["sequences"]["samples"] == 12 and "frame fusion" in report["sequences"]["fusion"]
    figures = document["figures"]
    assert len(figures["frame_curves"]) == 6  # the first sequence of each emotion
    for name in [figures["confusion"], figures["sequence_confusion"], figures["sequence_reliability"],
                 *figures["frame_curves"]]:
        assert_png(tmp_path / "figures" / name)
    # Per sequence, the model's frame fusion of the frames' embeddings, recomputed here from the frame files.
    predictor = zero_shot_predictor(str(setup / "tiny.json"), str(weights), report["classes"],
                                    ("frontal", "left", "right"))
    record = document["sequence_predictions"][0]
    frames = sorted((data / record["sequence"]).glob("*.ply"))
    with torch.no_grad():
        fused = predictor.model.fuse_frames(embed_meshes(predictor, frames)[None])
        expected = predictor.model.logits(fused, predictor.bank).softmax(dim=-1)[0]
    assert len(frames) == 4 and record["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
    (prediction,) = predict(predictor, [data / record["sequence"]])  # `affectvlm predict` on the sequence folder
    assert record["probabilities"] == pytest.approx([prediction.probabilities[c] for c in report["classes"]],
                                                    abs=1e-5)
    # The weights file is really what classifies.
    other = json.loads(evaluate_cli("--zero-shot", setup / "tiny.json", "--pretrained", other_weights, data,
                                    "--out", tmp_path / "other", "--json").stdout)
    assert other["predictions"][0]["probabilities"] != document["predictions"][0]["probabilities"]
    bad = evaluate_cli("--zero-shot", setup / "tiny.json", "--pretrained", setup / "tiny.json", data,
                       "--out", tmp_path / "bad", expect=1)
    assert "cannot load as weights" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.fixture(scope="module")
def bu3dfe_tree(tmp_path_factory):
    """62 subjects named as BU-3DFE names them: a neutral scan and six expressions at intensities 1-4, as F3D
    and RAW .wrl files (small re-scanned generated faces, one file per expression linked under every subject)."""
    root = tmp_path_factory.mktemp("bu3dfe")
    codes = {"anger": "AN", "disgust": "DI", "fear": "FE", "happiness": "HA", "sadness": "SA", "surprise": "SU"}
    masters = {}
    for face in generated_faces(1, seed=4, levels=(1, 2, 3, 4), emotions=(*BASIC_EMOTIONS, "neutral")):
        code = "NE00" if face.emotion == "neutral" else f"{codes[face.emotion]}{face.intensity:02d}"
        masters[code] = root / f"{code}.wrl"
        save_mesh(masters[code], perturb.rescan(face.mesh, 300))
    subjects = [f"F{n:04d}" for n in range(1, 32)] + [f"M{n:04d}" for n in range(1, 32)]
    for subject in subjects:
        folder = root / "data" / subject
        folder.mkdir(parents=True)
        for code, master in masters.items():
            for kind in ("F3D", "RAW"):
                os.link(master, folder / f"{subject}_{code}WH_{kind}.wrl")
    return root / "data", sorted(subjects)[:60]


def test_bu3dfe_protocol_picks_the_right_samples(bu3dfe_tree, tmp_path):
    data, first_sixty = bu3dfe_tree
    folder, folds = bu3dfe_dataset(data, tmp_path, seed=0)
    samples = index_dataset(folder)
    assert len(samples) == 720 and sorted({s.subject for s in samples}) == first_sixty
    assert {(s.emotion, s.intensity) for s in samples} == {(e, i) for e in BASIC_EMOTIONS for i in (3, 4)}
    assert all(s.path.name.endswith("_F3D.wrl") and s.path.name.startswith(s.subject) for s in samples)
    assert len(folds) == 10 and all(len(fold.test_subjects) == 6 and len(fold.test) == 72 for fold in folds)
    assert sorted(sum((list(fold.test_subjects) for fold in folds), [])) == first_sixty


def test_bu3dfe_protocol_trains_a_fold_on_the_protocol_split(bu3dfe_tree, setup, tmp_path):
    data, _ = bu3dfe_tree
    document = json.loads(evaluate_cli(data, "--protocol", "bu3dfe", "--fold", "3", "--out", tmp_path, "--json",
                                       *tiny_training(setup / "tiny.json", "--views", "frontal")).stdout)
    _, folds = bu3dfe_protocol(index_dataset(data), fold_seed=0)
    (fold,) = document["folds"]
    assert document["folds_total"] == 10 and fold["fold"] == 3
    assert tuple(fold["test_subjects"]) == folds[3].test_subjects
    assert fold["report"]["samples"] == 72 and set(fold["report"]["accuracy_by_intensity"]) == {"3", "4"}
    assert len(fold["train_subjects"]) == 54
    wrong = evaluate_cli(data, "--protocol", "bu3dfe", "--folds", "5", "--out", tmp_path, expect=1)
    assert "has 10 folds" in wrong.stderr


def test_bu3dfe_protocol_needs_sixty_subjects(bu3dfe_tree, tmp_path):
    data, _ = bu3dfe_tree
    few = tmp_path / "few"
    for subject in sorted(p.name for p in data.iterdir())[:5]:
        shutil.copytree(data / subject, few / subject)
    result = evaluate_cli(few, "--protocol", "bu3dfe", "--out", tmp_path, expect=1)
    assert "needs 60 subjects" in result.stderr and len(result.stderr.splitlines()) == 1


def test_holes_are_cut_at_the_eyes_and_the_mouth():
    faces = generated_faces(2, levels=(4,))
    assert len(faces) == 12
    for face in faces:
        right, left, mouth = (face.landmarks[n] for n in ("right_eye", "left_eye", "mouth"))
        # Anatomy: the eyes about mirror each other across the mouth (pose and asymmetry skew them a little),
        # 30-65 mm apart, 45-95 mm above the mouth.
        assert 30 < left[0] - right[0] < 65 and abs(left[0] + right[0] - 2 * mouth[0]) < 12
        assert 45 < (left[1] + right[1]) / 2 - mouth[1] < 95
        for name, radius, centres in [("holes-eyes", EYE_HOLE_MM, [right, left]), ("holes-mouth", MOUTH_HOLE_MM,
                                                                                   [mouth])]:
            holed = SUITE[name][1](face, 0)
            before = face.mesh.vertices[face.mesh.faces].mean(axis=1)
            after = holed.vertices[holed.faces].mean(axis=1)
            for centre in centres:
                near_before = np.linalg.norm(before - centre, axis=1) < radius
                assert near_before.sum() > 100  # a hole the size of an eye or a mouth
                assert (np.linalg.norm(after - centre, axis=1) >= radius).all()
            removed = face.mesh.num_faces - holed.num_faces
            assert removed == sum((np.linalg.norm(before - c, axis=1) < radius) for c in centres).astype(bool).sum()


def test_robustness_reports_one_accuracy_per_perturbation(setup, sequences, tmp_path):
    _, (weights, _) = sequences
    predictor = zero_shot_predictor(str(setup / "tiny.json"), str(weights), BASIC_EMOTIONS, ("frontal",))
    faces = generated_faces(1, levels=(4,))
    names = ["units-m", "vertex-order", "holes-mouth", "rescan-5k", "winding", "pose-random"]
    report = robustness_report(predictor, faces, names)
    results = report["perturbations"]
    assert list(results) == ["none", *names] and report["faces"] == 6
    for result in results.values():
        assert 0 <= result["accuracy"] <= 1 and len(result["predicted"]) == 6
        assert result["drop"] == pytest.approx(results["none"]["accuracy"] - result["accuracy"])
    assert results["rescan-5k"]["triangles"] == pytest.approx(5000, rel=0.1)
    assert results["holes-mouth"]["triangles"] < results["none"]["triangles"]
    # Unperturbed, the harness predicts what `affectvlm predict` predicts from the saved faces.
    paths = [tmp_path / f"{i}.ply" for i in range(len(faces))]
    for path, face in zip(paths, faces):
        save_mesh(path, face.mesh)
    assert results["none"]["predicted"] == [p.predicted for p in predict(predictor, paths)]
    with pytest.raises(ValueError, match="unknown perturbation"):
        robustness_report(predictor, faces, ["units-furlong"])


def test_robustness_from_the_command_line(kfold, tmp_path):
    checkpoint = kfold[0] / "fold-0" / "last.safetensors"
    result = evaluate_cli(checkpoint, "--robustness", "--robustness-subjects", "1", "--perturbations",
                          "units-cm,off-centre", "--out", tmp_path)
    assert "units-cm" in result.stdout and "off-centre" in result.stdout
    document = json.loads((tmp_path / "evaluation.json").read_text())
    assert list(document["perturbations"]) == ["none", "units-cm", "off-centre"] and document["faces"] == 12
