"""Evaluation metrics against values worked out by hand on small fixed predictions."""

import numpy as np
import pytest

from affectvlm.evaluate.metrics import (calibration_bins, classification_report, confusion_matrix,
                                        expected_calibration_error, macro_f1, per_class_scores)

LABELS = np.array([0, 0, 0, 1, 1, 2])
PREDICTIONS = np.array([0, 0, 1, 1, 2, 2])


def one_hot_probabilities(predictions, num_classes, top=0.8):
    rest = (1 - top) / (num_classes - 1)
    probabilities = np.full((len(predictions), num_classes), rest)
    probabilities[np.arange(len(predictions)), predictions] = top
    return probabilities


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(LABELS, PREDICTIONS, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_precision_recall_f1_by_hand():
    scores = per_class_scores(confusion_matrix(LABELS, PREDICTIONS, 3))
    np.testing.assert_allclose(scores["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(scores["recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(scores["f1"], [0.8, 0.5, 2 / 3])
    assert scores["support"].tolist() == [3, 2, 1]
    assert macro_f1(confusion_matrix(LABELS, PREDICTIONS, 3)) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_scores_zero_and_an_absent_class_is_left_out_of_macro_f1():
    confusion = confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    scores = per_class_scores(confusion)
    assert scores["precision"][1] == 0 and scores["f1"][1] == 0 and scores["support"][2] == 0
    # F1 of class 0: precision 2/3, recall 1 -> 0.8; class 1: 0; class 2 absent.
    assert macro_f1(confusion) == pytest.approx(0.4)


def test_expected_calibration_error_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 0, 0])
    # Two bins: (0, 0.5] holds the last sample (confidence 0.5, correct); (0.5, 1] the other four (mean
    # confidence 0.75, half correct). ECE = 1/5 * |1 - 0.5| + 4/5 * |0.5 - 0.75| = 0.3.
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(0.3)
    table = calibration_bins(probabilities, labels, bins=2)
    assert table["count"].tolist() == [1, 4]
    np.testing.assert_allclose(table["confidence"], [0.5, 0.75])
    np.testing.assert_allclose(table["accuracy"], [1.0, 0.5])


def test_perfectly_calibrated_predictions_have_no_calibration_error():
    rng = np.random.default_rng(0)
    # In each bin, the share of correct answers equals the confidence: 8 of 10 right at 0.8.
    probabilities = one_hot_probabilities(np.zeros(10, dtype=int), 2, top=0.8)
    labels = np.array([0] * 8 + [1] * 2)
    rng.shuffle(labels)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


def test_report_on_random_predictions_is_consistent():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 7))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 7, 200)
    intensity = rng.integers(-1, 5, 200)
    names = [f"c{i}" for i in range(7)]
    report = classification_report(probabilities, labels, names, intensity)
    confusion = np.array(report["confusion"])
    correct = probabilities.argmax(axis=1) == labels
    assert confusion.sum() == 200 and report["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    assert report["accuracy"] == pytest.approx(correct.mean())
    for level in range(5):
        assert report["accuracy_by_intensity"][str(level)] == pytest.approx(correct[intensity == level].mean())
    assert "-1" not in report["accuracy_by_intensity"]
    assert sum(report["calibration"]["count"]) == 200
    assert [report["per_class"][name]["support"] for name in names] == np.bincount(labels, minlength=7).tolist()


@pytest.mark.parametrize("probabilities, labels, message", [
    (np.array([[0.5, 0.6]]), np.array([0]), "sum to 1"),
    (np.array([[np.nan, 1.0]]), np.array([0]), "finite"),
    (np.array([0.5, 0.5]), np.array([0]), "shape"),
    (np.array([[0.5, 0.5]]), np.array([2]), r"\[0, 2\)"),
    (np.array([[0.5, 0.5]]), np.array([0.0]), "integer"),
])
def test_bad_inputs_are_refused_with_the_reason(probabilities, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_report(probabilities, labels, ["a", "b"])


def test_figures_are_written_as_pictures(tmp_path):
    import matplotlib.image

    from affectvlm.evaluate.figures import confusion_figure, frame_curves_figure, reliability_figure

    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, 40)
    report = classification_report(probabilities, labels, ["a", "b", "c"])
    paths = [confusion_figure(report["confusion"], report["classes"], tmp_path / "confusion.png"),
             reliability_figure(report["calibration"], tmp_path / "reliability.png", report["ece"]),
             frame_curves_figure(probabilities[:12], report["classes"], tmp_path / "frames.png")]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        assert image[..., :3].std() > 0.05  # drawn on, not blank
