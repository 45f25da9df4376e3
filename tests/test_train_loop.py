"""The training loop's pure helpers, against hand-computed values."""

import math

import pytest

from affectvlm.train.loop import accuracy_over_levels, learning_rate


def test_accuracy_over_levels_weights_each_level_by_its_samples():
    by_intensity = {0: [1.0, 12], 3: [0.5, 10], 4: [1.0, 30]}
    assert accuracy_over_levels(by_intensity, (3, 4)) == pytest.approx(((5 + 30) / 40, 40))
    assert accuracy_over_levels({"3": [0.5, 10], "4": [1.0, 30]}) == pytest.approx((35 / 40, 40))  # JSON keys
    assert accuracy_over_levels(by_intensity, (1, 2)) is None


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    assert learning_rate(1.0, 0, 10, 110) == pytest.approx(0.1)
    assert learning_rate(1.0, 9, 10, 110) == pytest.approx(1.0)
    assert learning_rate(1.0, 10, 10, 110) == pytest.approx(1.0)
    assert learning_rate(1.0, 60, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(1.0, 110, 10, 110) == pytest.approx(0.0, abs=1e-12)
