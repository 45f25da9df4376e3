"""The training loop's pure helpers, against hand-computed values."""

import math

import pytest

import torch

from affectvlm.train.loop import accuracy_over_levels, clip_gradients, learning_rate


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


def random_gradients(generator: torch.Generator) -> list[torch.nn.Parameter]:
    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((3, 4), (5,), (2, 2, 2))]
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    return parameters


def global_norm(parameters) -> float:
    return math.sqrt(sum(float((parameter.grad ** 2).sum()) for parameter in parameters))


@pytest.mark.parametrize("seed", range(3))
def test_clip_gradients_scales_the_global_norm_down_to_the_limit_and_returns_the_norm_before(seed):
    parameters = random_gradients(torch.Generator().manual_seed(seed))
    before = [parameter.grad.clone() for parameter in parameters]
    norm = global_norm(parameters)
    assert clip_gradients(parameters, norm / 4) == pytest.approx(norm, rel=1e-6)
    assert global_norm(parameters) == pytest.approx(norm / 4, rel=1e-5)
    for parameter, old in zip(parameters, before):  # one factor for all: directions kept
        torch.testing.assert_close(parameter.grad, old / 4, rtol=1e-5, atol=0)


@pytest.mark.parametrize("limit", [0.0, 1e9])
def test_clip_gradients_leaves_gradients_under_the_limit_or_without_one_untouched(limit):
    parameters = random_gradients(torch.Generator().manual_seed(11))
    before = [parameter.grad.clone() for parameter in parameters]
    assert clip_gradients(parameters, limit) == pytest.approx(global_norm(parameters), rel=1e-6)
    for parameter, old in zip(parameters, before):
        assert torch.equal(parameter.grad, old)
