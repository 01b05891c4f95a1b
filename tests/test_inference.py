"""Padding to the model's size multiple and the coarse-to-fine cascade (``stereo_exp.models.inference``).

The cascade's equality with torchvision's ``cascade_evaluation`` on CREStereo is checked against the prototype's
recorded outputs in ``test_crestereo.py`` (case ``eval_two_cascades``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stereo_exp.models.crestereo import crestereo_tiny
from stereo_exp.models.inference import Padding, predict_disparity
from stereo_exp.models.raft_stereo import raft_stereo_tiny


def _pair(height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    left = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    return left, torch.roll(left, shifts=-2, dims=-1)


class UpscaleAndAddIterations(nn.Module):
    """A stand-in that follows the model contract: its prediction is flow_init brought to the input grid (values
    scaled by the width ratio) plus ``num_iters`` pixels."""

    size_multiple = 4

    def forward(self, left: Tensor, right: Tensor, flow_init: Tensor | None = None, num_iters: int = 1) -> list[Tensor]:
        b, _, h, w = left.shape
        if flow_init is None:
            return [torch.full((b, 1, h, w), float(num_iters))]
        prior = F.interpolate(flow_init, size=(h, w), mode="bilinear", align_corners=True) * (w / flow_init.shape[-1])
        return [prior + num_iters]


# ----------------------------------------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------------------------------------


def test_padding_splits_the_missing_pixels_between_both_sides():
    # 37 -> 48 rows: 11 missing, 5 on top and 6 at the bottom; 53 -> 64 columns: 5 left, 6 right.
    assert Padding.to_multiple(37, 53, 16) == Padding(left=5, right=6, top=5, bottom=6)
    assert Padding.to_multiple(32, 48, 16) == Padding(left=0, right=0, top=0, bottom=0)


def test_padding_replicates_the_border_and_removing_it_restores_the_input():
    image = torch.arange(15.0).view(1, 1, 3, 5)  # rows [0..4], [5..9], [10..14]
    padding = Padding.to_multiple(3, 5, 4)  # -> 4 x 8: top 0, bottom 1, left 1, right 2
    padded = padding.apply(image)
    assert padded.shape == (1, 1, 4, 8)
    assert padded[0, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 4, 4]
    assert padded[0, 0, 3].tolist() == [10, 10, 11, 12, 13, 14, 14, 14]  # bottom row repeats the last one
    assert torch.equal(padding.remove(padded), image)


# ----------------------------------------------------------------------------------------------------------------
# predict_disparity
# ----------------------------------------------------------------------------------------------------------------


def test_each_cascade_level_starts_from_the_previous_one():
    # Three levels of 1 iteration each: 1 px at 1/4 scale; 2 * 1 + 1 = 3 px at 1/2; 2 * 3 + 1 = 7 px at full scale.
    left, right = _pair(13, 22)
    disparity = predict_disparity(UpscaleAndAddIterations(), left, right, num_iters=1, n_cascades=3)
    assert disparity.shape == (1, 1, 13, 22)
    torch.testing.assert_close(disparity, torch.full((1, 1, 13, 22), 7.0))


@pytest.mark.parametrize("n_cascades", [1, 2])
def test_odd_sizes_come_back_at_the_input_size(n_cascades):
    torch.manual_seed(0)
    model = crestereo_tiny().eval()
    left, right = _pair(37, 53)
    with torch.no_grad():
        disparity = predict_disparity(model, left, right, num_iters=2, n_cascades=n_cascades)
    assert disparity.shape == (1, 1, 37, 53)
    assert torch.isfinite(disparity).all()


def test_a_single_level_on_a_valid_size_is_the_models_last_prediction():
    torch.manual_seed(0)
    model = crestereo_tiny().eval()
    left, right = _pair(32, 48)
    with torch.no_grad():
        expected = model(left, right, num_iters=2)[-1]
        assert torch.equal(predict_disparity(model, left, right, num_iters=2), expected)


def test_the_cascade_pads_to_a_size_every_level_can_use():
    torch.manual_seed(0)
    model = crestereo_tiny().eval()
    sizes = []
    model.feature_encoder.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    left, right = _pair(37, 53)
    with torch.no_grad():
        predict_disparity(model, left, right, num_iters=1, n_cascades=3)
    assert sizes == [(16, 16), (32, 32), (64, 64)]  # padded to a multiple of 16 * 2**2, then halved twice


def test_the_cascade_passes_raft_stereo_its_coarse_disparity_as_flow_init():
    torch.manual_seed(0)
    model = raft_stereo_tiny().eval()
    calls: list[tuple[Tensor | None, Tensor]] = []  # (flow_init, last prediction) of every forward call

    def record(_module, _args, kwargs, out):
        calls.append((kwargs["flow_init"], out[-1]))

    model.register_forward_hook(record, with_kwargs=True)
    left, right = _pair(37, 53)
    with torch.no_grad():
        disparity = predict_disparity(model, left, right, num_iters=2, n_cascades=2)
    assert disparity.shape == (1, 1, 37, 53)
    (first_init, coarse), (second_init, fine) = calls
    assert first_init is None
    assert coarse.shape[-2:] == (fine.shape[-2] // 2, fine.shape[-1] // 2)
    assert torch.equal(second_init, coarse)


def test_bad_arguments_are_rejected():
    model = crestereo_tiny()
    left, right = _pair(32, 48)
    with pytest.raises(ValueError, match=r"same shape .* \(1, 3, 32, 48\) and \(1, 3, 32, 40\)"):
        predict_disparity(model, left, right[..., :40], num_iters=1)
    with pytest.raises(ValueError, match="n_cascades=0"):
        predict_disparity(model, left, right, num_iters=1, n_cascades=0)
    with pytest.raises(TypeError, match="size_multiple"):
        predict_disparity(nn.Identity(), left, right, num_iters=1)
