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


# torchvision's reference (references/depth/stereo, utils/losses.py and train.py): the model's predictions and the
# ground truth made 2-channel for CREStereo (vertical target 0), |prediction - target| times the valid mask, averaged
# over batch, channels and every pixel, then summed with weights gamma**(N-1-i). The expectations below are that
# formula worked out by hand on four pixels (B=1, H=1, W=4, the last pixel invalid).
GT = torch.tensor([[[[1.0, 2.0, 3.0, 0.0]]]])
VALID = torch.tensor([[[[True, True, True, False]]]])
FIRST = torch.tensor([[[[2.0, 2.0, 3.0, 50.0]], [[1.0, 0.0, -2.0, 7.0]]]])  # channel 0 disparity, 1 vertical flow
LAST = torch.tensor([[[[1.0, 2.0, 6.0, 50.0]], [[0.0, 0.5, 0.0, 9.0]]]])


def test_reference_loss_of_a_two_channel_model_equals_the_hand_computed_reference_formula():
    # first: horizontal |2-1| + 0 + 0, vertical 1 + 0 + 2 -> 4 / (2 channels x 4 pixels) = 0.5
    # last:  horizontal 0 + 0 + |6-3|, vertical 0 + 0.5 + 0 -> 3.5 / 8 = 0.4375;  0.5 * 0.5 + 1.0 * 0.4375
    loss = sequence_loss([FIRST, LAST], GT, VALID, gamma=0.5, normalization="all")
    assert loss.item() == pytest.approx(0.6875)
    # ours on the same predictions: the same sums over the 3 valid pixels x 2 channels
    ours = sequence_loss([FIRST, LAST], GT, VALID, gamma=0.5, normalization="valid")
    assert ours.item() == pytest.approx(0.5 * 4 / 6 + 3.5 / 6)


def test_reference_loss_of_a_disparity_model_averages_one_channel_over_all_pixels():
    # RAFT-Stereo has one output channel in the reference too: 1 / 4 and 3 / 4
    loss = sequence_loss([FIRST[:, :1], LAST[:, :1]], GT, VALID, gamma=0.5, normalization="all")
    assert loss.item() == pytest.approx(0.5 * 0.25 + 0.75)


def test_reference_exclude_large_leaves_pixels_out_of_the_sum_but_not_out_of_the_mean():
    # --flow-loss-exclude-large --max-disparity 256: the 300 px pixel is masked; the mean still has 2 x 2 terms
    gt = torch.tensor([[[[10.0, 300.0]]]])
    valid = torch.ones_like(gt, dtype=torch.bool)
    prediction = torch.tensor([[[[12.0, 0.0]], [[0.0, 1.0]]]])
    excluded = sequence_loss([prediction], gt, valid, gamma=0.8, max_disparity=256, normalization="all")
    assert excluded.item() == pytest.approx((2.0 + 0.0) / 4)
    assert sequence_loss([prediction], gt, valid, gamma=0.8, normalization="all").item() == pytest.approx(303 / 4)


def test_vertical_supervision_asks_crestereo_for_its_two_channel_flow_and_leaves_raft_stereo_alone():
    from stereo_exp.engine.loss import LossConfig, forward_options
    from stereo_exp.models import build_model
    from tests.test_config import compose_plain

    left, right = torch.rand(1, 3, 32, 48) * 2 - 1, torch.rand(1, 3, 32, 48) * 2 - 1
    for name, channels in (("crestereo_tiny", 2), ("raft_stereo_tiny", 1)):
        model = build_model(compose_plain(f"model={name}").model).eval()
        options = forward_options(model, LossConfig(vertical=True))
        with torch.no_grad():
            predictions = model(left, right, num_iters=2, **options)
            assert all(p.shape == (1, channels, 32, 48) for p in predictions)
            assert forward_options(model, LossConfig()) == {}  # loss=sequence: disparity only
            if channels == 2:  # the vertical channel is forward_flow's, the first one forward's
                assert torch.equal(predictions[-1], model.forward_flow(left, right, num_iters=2)[-1])
                assert torch.equal(predictions[-1][:, :1], model(left, right, num_iters=2)[-1])
