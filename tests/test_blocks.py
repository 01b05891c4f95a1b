"""Shared RAFT-family blocks: known answers for the geometric helpers, contracts and key layouts of the modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stereo_exp.models.blocks import (
    BaseEncoder,
    ConvexMaskPredictor,
    ConvGRU,
    FeatureEncoder,
    MaskPredictor,
    ResidualBlock,
    convex_upsample,
    coords_grid,
    grid_sample_pixels,
    upsample_flow,
)


def test_coords_grid_holds_x_then_y_pixel_indices():
    grid = coords_grid(2, 2, 3)
    assert grid.shape == (2, 2, 2, 3)
    assert grid[1, 0].tolist() == [[0, 1, 2], [0, 1, 2]]  # x: column index
    assert grid[1, 1].tolist() == [[0, 0, 0], [1, 1, 1]]  # y: row index


def test_grid_sample_pixels_interpolates_between_pixel_centres_and_reads_zero_outside():
    image = torch.tensor([[[[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]]]])  # (1, 1, 2, 3)
    coords = torch.tensor([[[[0.5, 0.0], [2.0, 0.5], [3.0, 1.0]]]])  # (x, y) pixels
    # (0.5, 0): between 0 and 10; (2, 0.5): between 20 and 50; (3, 1): half a pixel right of the last column -> 0
    assert grid_sample_pixels(image, coords).flatten().tolist() == pytest.approx([5.0, 35.0, 0.0])


def test_grid_sample_pixels_on_a_single_row_ignores_y():
    row = torch.tensor([[[[0.0, 10.0, 20.0, 30.0]]]])  # (1, 1, 1, 4)
    coords = torch.tensor([[[[1.25, 0.0], [1.25, 7.0]]]])
    assert grid_sample_pixels(row, coords).flatten().tolist() == pytest.approx([12.5, 12.5])


def test_convex_upsampling_of_a_constant_flow_multiplies_it_by_the_factor_inside_the_image():
    flow = torch.full((1, 2, 3, 4), 1.5)
    mask = torch.randn(1, 9 * 4 * 4, 3, 4)  # any weights: they are normalised to a convex combination
    up = convex_upsample(flow, mask, factor=4)
    assert up.shape == (1, 2, 12, 16)
    # Pixels whose 3x3 coarse neighbourhood lies inside the image: coarse row 1, columns 1-2.
    torch.testing.assert_close(up[:, :, 4:8, 4:12], torch.full((1, 2, 4, 8), 6.0))


def test_convex_upsampling_rejects_a_mask_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"mask shape \(1, 144, 3, 4\) != expected \(1, 576, 3, 4\)"):
        convex_upsample(torch.zeros(1, 2, 3, 4), torch.zeros(1, 144, 3, 4), factor=8)


def test_bilinear_upsampling_scales_values_by_the_factor_and_keeps_corners():
    flow = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    up = upsample_flow(flow, None, factor=2)
    assert up.shape == (1, 1, 4, 4)
    assert up[0, 0, 0, 0] == 2.0 and up[0, 0, -1, -1] == 8.0  # align_corners=True keeps the corner pixels


def test_residual_block_projects_its_shortcut_only_when_the_shape_changes():
    same = ResidualBlock(8, 8, norm_layer=nn.BatchNorm2d)
    strided = ResidualBlock(8, 16, norm_layer=nn.BatchNorm2d, stride=2)
    always = ResidualBlock(8, 8, norm_layer=None, always_project=True)
    assert isinstance(same.downsample, nn.Identity)
    assert strided(torch.randn(1, 8, 6, 10)).shape == (1, 16, 3, 5)
    # Keys of the published layouts: conv at index 0, norm at index 1 of each conv-norm-ReLU.
    assert "convnormrelu1.1.running_mean" in same.state_dict()
    assert "downsample.1.weight" in strided.state_dict()
    assert sorted(k for k in always.state_dict() if k.startswith("downsample")) == [
        "downsample.0.bias",
        "downsample.0.weight",
    ]


@pytest.mark.parametrize(("strides", "factor"), [((2, 1, 2, 2), 8), ((1, 1, 2, 2), 4), ((2, 1, 2, 1), 4)])
def test_encoders_downsample_by_the_product_of_their_strides(strides, factor):
    base = BaseEncoder(layers=(8, 8, 12, 16), strides=strides, norm_layer=nn.InstanceNorm2d)
    features = FeatureEncoder(layers=(8, 8, 12, 16, 24), strides=strides, norm_layer=None)
    image = torch.randn(1, 3, 32, 64)
    assert base.downsampling_factor == features.downsampling_factor == factor
    assert base(image).shape == (1, 16, 32 // factor, 64 // factor)
    assert features(image).shape == (1, 24, 32 // factor, 64 // factor)


def test_a_closed_update_gate_keeps_the_gru_hidden_state():
    gru = ConvGRU(input_size=3, hidden_size=4)
    nn.init.zeros_(gru.convz.weight)
    nn.init.constant_(gru.convz.bias, -50.0)  # z = sigmoid(-50) ~ 0: keep h
    h, x = torch.randn(1, 4, 5, 5), torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(gru(h, x), h)
    # A precomputed context opens it again: z = sigmoid(-50 + 100) ~ 1, h becomes the candidate q in (-1, 1).
    opened = gru(h, x, context=(torch.full((1, 4, 5, 5), 100.0), torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 5)))
    assert not torch.allclose(opened, h) and opened.abs().max() < 1


def test_both_mask_predictor_layouts_compute_the_same_mask():
    raft = MaskPredictor(in_channels=8, hidden_size=16, upsample_factor=4)
    crestereo = ConvexMaskPredictor(in_channels=8, hidden_size=16, upsample_factor=4)
    renamed = {
        k.replace("convrelu.", "mask_head.0.").replace("conv.", "mask_head.1."): v for k, v in raft.state_dict().items()
    }
    crestereo.load_state_dict(renamed, strict=True)  # RAFT-Stereo keys: convrelu.0, conv; CREStereo: mask_head.0.0, .1
    x = torch.randn(1, 8, 3, 5)
    assert raft(x).shape == (1, 9 * 16, 3, 5)
    torch.testing.assert_close(raft(x), crestereo(x))
