"""Sequence loss: gamma weighting and averaging over valid pixels only."""

import pytest
import torch

from stereo_exp.engine.loss import sequence_loss


def test_loss_averages_over_valid_pixels_and_weights_later_predictions_more():
    gt = torch.tensor([[[[1.0, 2.0, 3.0, 0.0]]]])
    valid = torch.tensor([[[[True, True, True, False]]]])  # last pixel has no ground truth
    first = torch.tensor([[[[2.0, 2.0, 3.0, 50.0]]]])  # errors 1, 0, 0 -> mean 1/3
    last = torch.tensor([[[[1.0, 2.0, 6.0, 50.0]]]])  # errors 0, 0, 3 -> mean 1
    loss = sequence_loss([first, last], gt, valid, gamma=0.5)
    assert loss.item() == pytest.approx(0.5 * (1 / 3) + 1.0 * 1.0)


def test_max_disparity_excludes_large_ground_truth():
    gt = torch.tensor([[[[10.0, 300.0]]]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    prediction = torch.tensor([[[[12.0, 0.0]]]])
    assert sequence_loss([prediction], gt, valid, gamma=0.8, max_disparity=256).item() == pytest.approx(2.0)
    assert sequence_loss([prediction], gt, valid, gamma=0.8).item() == pytest.approx((2.0 + 300.0) / 2)


def test_non_finite_ground_truth_never_reaches_the_loss():
    gt = torch.tensor([[[[float("inf"), float("nan"), 4.0]]]])
    valid = torch.tensor([[[[True, True, True]]]])  # even if a mask wrongly marks them valid
    prediction = torch.tensor([[[[1.0, 1.0, 5.0]]]], requires_grad=True)
    loss = sequence_loss([prediction], gt, valid, gamma=0.8)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert torch.isfinite(prediction.grad).all()


def test_a_batch_without_valid_pixels_gives_zero_loss_with_a_graph():
    prediction = torch.ones(1, 1, 2, 2, requires_grad=True)
    loss = sequence_loss([prediction], torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool), gamma=0.8)
    loss.backward()  # DDP needs every rank to run backward
    assert loss.item() == 0.0
    assert prediction.grad is not None
