"""Disparity pictures (evaluation/visualize.py): colour ranges, invalid pixels, PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from stereo_exp.evaluation.visualize import (
    colorize_disparity,
    disparity_figure,
    disparity_range,
    error_map,
    figure_to_png,
    image_to_uint8,
    picture_grid_figure,
)


def _png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_the_colour_range_comes_from_valid_ground_truth_and_applies_to_the_prediction():
    gt = torch.tensor([[[5.0, 10.0, 99.0]]])  # 99 has no ground truth
    valid = torch.tensor([[[True, True, False]]])
    assert disparity_range(gt, valid) == (5.0, 10.0)
    vmin, vmax = disparity_range(gt, valid)
    # a prediction equal to the ground truth gets the same colours
    pred_rgb = colorize_disparity(torch.tensor([[[5.0, 10.0, 7.5]]]), vmin=vmin, vmax=vmax)
    gt_rgb = colorize_disparity(gt, vmin=vmin, vmax=vmax, valid=valid)
    assert (pred_rgb[0, :2] == gt_rgb[0, :2]).all()
    assert (gt_rgb[0, 2] == 0).all()  # invalid: black
    assert not (pred_rgb[0, 0] == pred_rgb[0, 1]).all()  # the range ends get different colours


def test_without_valid_ground_truth_the_range_comes_from_the_prediction():
    gt = torch.zeros(1, 2, 2)
    pred = torch.tensor([[[1.0, 2.0], [3.0, float("nan")]]])
    assert disparity_range(gt, gt > 0, pred) == (1.0, 3.0)
    assert disparity_range(None, None, torch.full((1, 2, 2), 4.0)) == (4.0, 5.0)  # flat map: a range of 1 px


def test_values_beyond_the_range_saturate_instead_of_wrapping():
    rgb = colorize_disparity(np.array([[0.0, 10.0, -5.0, 50.0]]), vmin=0.0, vmax=10.0)
    assert (rgb[0, 2] == rgb[0, 0]).all() and (rgb[0, 3] == rgb[0, 1]).all()


def test_the_error_map_is_black_without_ground_truth_and_saturates_at_max_error():
    gt = torch.tensor([[10.0, 10.0, 10.0, 0.0]])
    pred = torch.tensor([[10.0, 13.0, 30.0, 5.0]])  # errors 0, 3 (= max), 20 (beyond), invalid
    rgb = error_map(pred, gt, gt > 0, max_error=3.0)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 1] == rgb[0, 2]).all()  # 3 px and 20 px both saturate
    assert (rgb[0, 3] == 0).all()
    assert rgb[0, 0].sum() < rgb[0, 1].sum()  # inferno: no error is dark, large error is bright


def test_images_in_minus_one_to_one_map_to_full_uint8_range():
    image = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    assert image_to_uint8(image)[0, 0].tolist() == [0, 128, 255]


def test_the_picture_grid_is_a_png_of_five_panels_for_an_odd_sized_sample():
    torch.manual_seed(0)
    h, w = 31, 45
    left, right = torch.rand(3, h, w) * 2 - 1, torch.rand(3, h, w) * 2 - 1
    gt = torch.rand(1, h, w) * 20 + 1
    valid = torch.rand(1, h, w) > 0.2
    png = figure_to_png(picture_grid_figure(left, right, gt, gt + 1.0, valid, title="synthetic-val #0"))
    width, height = _png_size(png)
    assert width > 4 * height  # five panels side by side


def test_the_picture_grid_rejects_inputs_of_different_sizes():
    image, disparity, valid = torch.zeros(3, 4, 5), torch.ones(1, 4, 5), torch.ones(1, 4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="differ in size"):
        picture_grid_figure(image, image, disparity, torch.ones(1, 4, 6), valid)


def test_the_disparity_figure_has_a_colour_bar_beside_the_image():
    fig = disparity_figure(torch.arange(12.0).view(1, 3, 4).repeat(1, 20, 20))  # (1, 60, 80)
    assert len(fig.axes) == 2  # the image and its colour bar
    assert fig.axes[1].get_ylabel() == "disparity [px]"
    width, height = _png_size(figure_to_png(fig))
    assert width >= 80 and height >= 60
