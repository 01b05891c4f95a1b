"""Stereo augmentation and the evaluation transform.

The geometric checks run on the procedural set, whose ground truth is exact: with ``occluded_valid=False`` its
valid mask holds the left pixels visible in the right view, so warping the right view by the disparity must give
back the left view there, before and after every spatial transform.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereo_exp.data.config import AugmentationConfig
from stereo_exp.data.synthetic import SyntheticConfig, SyntheticStereo
from stereo_exp.data.transforms import (
    AugmentParams,
    EvalTransform,
    TrainTransform,
    apply_augmentation,
    draw_params,
    sample_generator,
    scatter_disparity,
    source_coordinates,
    source_window,
)

CROP = [48, 64]
# Geometry only: no colour, no shift, unless a test asks for it.
GEOMETRY = AugmentationConfig(crop_size=CROP, scale_range=[0.5, 1.5], spatial_shift_prob=0.0, jitter_prob=0.0)


@pytest.fixture(scope="module")
def exact_pairs() -> list[dict]:
    """Procedural pairs whose valid mask is "visible in the other view" (64x96 px; procedural textures only: the
    scenes the thresholds below were measured on)."""
    cfg = SyntheticConfig(height=64, width=96, train_samples=4, occluded_valid=False, photo_share=0.0)
    dataset = SyntheticStereo(cfg, split="train")
    return [dataset[i] for i in range(4)]


def params(**changes) -> AugmentParams:
    """Identity geometry (scale 1, crop at the origin), nothing else; ``changes`` set fields."""
    base = AugmentParams(
        scale_x=1.0, scale_y=1.0, crop_y=0, crop_x=0, flip=False, shift=None, colour=None, occlusion=None, erase=()
    )
    return dataclasses.replace(base, **changes)


def raw_as_sample(raw: dict) -> dict:
    """A raw pair in the contract's layout, untransformed (the "before" of every check)."""

    def image(array):
        return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1

    return {
        "left": image(raw["left"]),
        "right": image(raw["right"]),
        "disparity": torch.from_numpy(raw["disparity"])[None],
        "valid": torch.from_numpy(raw["valid"])[None],
    }


def reconstruction_error(sample: dict, *, disparity_offset: float = 0.0, dy: float = 0.0) -> float:
    """Mean |left - right warped to the left| in grey levels over valid pixels away from depth edges.

    The right view is sampled at (x - d, y + dy). Pixels within 1 px of a depth edge are left out: there a
    resampled disparity blends two surfaces (the image does too), which says nothing about the geometry.
    """
    left = (sample["left"] + 1) * 127.5
    right = (sample["right"] + 1) * 127.5
    disparity = sample["disparity"][0].double() + disparity_offset
    height, width = disparity.shape
    x = torch.arange(width, dtype=torch.float64)[None] - disparity
    y = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width) + dy
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)[None].float()
    warped = F.grid_sample(right[None], grid, align_corners=False)[0]
    valid = sample["valid"][0]
    d = sample["disparity"][None]
    # max - min of the valid disparities in each 3x3 neighbourhood (sparse outputs have few neighbours)
    highest = F.max_pool2d(torch.where(sample["valid"], d, -torch.inf), 3, 1, 1)[0, 0]
    lowest = -F.max_pool2d(torch.where(sample["valid"], -d, -torch.inf), 3, 1, 1)[0, 0]
    keep = valid & (highest - lowest < 1.0) & (x > 1) & (y > 1) & (y < height - 2)
    assert keep.sum() > 200, "too few pixels to judge the geometry"
    return (warped - left).abs().mean(0)[keep].mean().item()


# ---------------------------------------------------------------------------------------------------------------
# Geometric consistency of every spatial transform
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bilinear", "scatter"])
@pytest.mark.parametrize("scale", [0.6, 1.0, 1.45])
def test_rescale_and_crop_keep_the_views_consistent(exact_pairs, scale, mode):
    cfg = dataclasses.replace(GEOMETRY, disparity_resize=mode)
    for raw in exact_pairs:
        before = reconstruction_error(raw_as_sample(raw))
        new_h, new_w = round(64 * scale), round(96 * scale)
        p = params(scale_x=new_w / 96, scale_y=new_h / 64, crop_y=(new_h - 48) // 2, crop_x=new_w - 64)
        sample = apply_augmentation(raw, p, cfg)
        after = reconstruction_error(sample)
        wrong = reconstruction_error(sample, disparity_offset=1.0)
        # Resampling blurs and aliases the texture a little; a one-pixel error in disparity costs far more.
        assert after < max(2 * before, 2.5), (before, after)
        assert wrong > 2 * after, (after, wrong)


def test_flip_with_view_swap_mirrors_the_right_view_into_the_left_one(exact_pairs):
    for raw in exact_pairs:
        sample = apply_augmentation(raw, params(flip=True, crop_x=16, crop_y=8), GEOMETRY)

        # Scale 1 and an integer crop resample nothing: the new left view is exactly the mirrored right view, its
        # disparity the mirrored right disparity, the new right view the mirrored left view.
        def mirrored(array):
            return torch.from_numpy(array[8:56, 16:80][:, ::-1].copy())

        torch.testing.assert_close(sample["left"], mirrored(raw["right"]).permute(2, 0, 1).float() / 127.5 - 1)
        torch.testing.assert_close(sample["right"], mirrored(raw["left"]).permute(2, 0, 1).float() / 127.5 - 1)
        torch.testing.assert_close(sample["valid"][0], mirrored(raw["valid_right"]))
        valid = sample["valid"][0]
        torch.testing.assert_close(
            sample["disparity"][0][valid], mirrored(raw["disparity_right"])[valid], atol=1e-4, rtol=0
        )
        assert (sample["disparity"][sample["valid"]] > 0).all()  # still positive: x_right = x_left - d holds


@pytest.mark.parametrize("scale", [0.7, 1.0, 1.3])
def test_flip_with_view_swap_keeps_the_views_consistent(exact_pairs, scale):
    for raw in exact_pairs:
        new_h, new_w = round(64 * scale), round(96 * scale)
        p = params(flip=True, scale_x=new_w / 96, scale_y=new_h / 64, crop_y=new_h - 48, crop_x=(new_w - 64) // 2)
        sample = apply_augmentation(raw, p, GEOMETRY)
        # Measured: 1.4-2.9 grey levels at the disparity, 5-9 one pixel off.
        assert reconstruction_error(sample) < 3.5
        assert reconstruction_error(sample, disparity_offset=1.0) > 2 * reconstruction_error(sample)


def test_a_vertical_right_view_shift_is_undone_by_looking_that_far_down(exact_pairs):
    for raw in exact_pairs:
        # shift by exactly 2 px (integer: no resampling blur), no rotation
        sample = apply_augmentation(raw, params(shift=(0.0, 2.0, 30.0, 20.0), crop_y=8), GEOMETRY)
        assert reconstruction_error(sample, dy=2.0) < 2.5
        assert reconstruction_error(sample) > 2 * reconstruction_error(sample, dy=2.0)
        left_untouched = apply_augmentation(raw, params(crop_y=8), GEOMETRY)["left"]
        torch.testing.assert_close(sample["left"], left_untouched)


def test_a_right_view_rotation_turns_the_content_about_the_drawn_centre(exact_pairs):
    angle, cx, cy = 2.0, 30.0, 20.0
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for raw in exact_pairs:
        sample = apply_augmentation(raw, params(shift=(angle, 0.0, cx, cy)), GEOMETRY)
        disparity = sample["disparity"][0].double()
        height, width = disparity.shape
        # The rotated view shows the unrotated one at q = c + M (p - c), M = [[cos, sin], [-sin, cos]]; the match
        # q = (x - d, y) of left pixel (x, y) therefore sits at p = c + M^T (q - c).
        qx = torch.arange(width, dtype=torch.float64)[None] - disparity - cx
        qy = torch.arange(height, dtype=torch.float64)[:, None] - cy
        px, py = cx + cos * qx - sin * qy, cy + sin * qx + cos * qy
        grid = torch.stack(((2 * px + 1) / width - 1, (2 * py + 1) / height - 1), dim=-1)[None].float()
        warped = F.grid_sample((sample["right"][None] + 1) * 127.5, grid, align_corners=False)[0]
        naive = dict(sample, valid=sample["valid"] & (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2))
        keep = naive["valid"][0]
        error = (warped - (sample["left"] + 1) * 127.5).abs().mean(0)[keep]
        assert error.median() < 1.5
        # the same pixels compared as if the view were not rotated: a 2 degree turn shifts rows by up to 1 px
        assert reconstruction_error(naive) > 1.5 * error.median().item()


# ---------------------------------------------------------------------------------------------------------------
# Disparity resampling never invents values
# ---------------------------------------------------------------------------------------------------------------


def raw_sample(image: np.ndarray, disparity: np.ndarray, valid: np.ndarray) -> dict:
    """A raw sample (catalog format) of one image seen by both views, left disparity only."""
    return {
        "left": image,
        "right": image.copy(),
        "disparity": disparity,
        "valid": valid,
        "disparity_right": None,
        "valid_right": None,
        "dataset": "memory",
        "index": 0,
        "path": "memory://test",
    }


def sparse_raw(seed: int = 0, density: float = 0.2) -> dict:
    """A 40x60 raw pair with LiDAR-like ground truth: ``density`` of the pixels valid, distinct values."""
    rng = np.random.default_rng(seed)
    disparity = rng.uniform(1.0, 30.0, size=(40, 60)).astype(np.float32)
    valid = rng.random((40, 60)) < density
    disparity[~valid] = 0.0
    return raw_sample(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8), disparity, valid)


@pytest.mark.parametrize("scale", [0.55, 1.0, 1.7])
def test_sparse_ground_truth_is_resized_without_inventing_values(scale):
    raw = sparse_raw()
    cfg = dataclasses.replace(GEOMETRY, crop_size=[16, 24], disparity_resize="auto")  # density 0.2 < 0.5: scatter
    new_h, new_w = round(40 * scale), round(60 * scale)
    p = params(scale_x=new_w / 60, scale_y=new_h / 40, crop_y=3, crop_x=5)
    sample = apply_augmentation(raw, p, cfg)
    out = sample["disparity"][sample["valid"]].double()
    source = torch.from_numpy(raw["disparity"][raw["valid"]]).double() * (new_w / 60)
    assert out.numel() > 0
    # every output value is some source value times the width scale
    distance = (out[:, None] - source[None, :]).abs().min(dim=1).values
    assert distance.max() < 1e-4
    assert (sample["disparity"][~sample["valid"]] == 0).all()


def test_scattering_from_the_crops_source_window_equals_scattering_from_the_whole_map():
    # apply_augmentation only reads the source window of the crop; it must hold every pixel that lands in it.
    rng = np.random.default_rng(0)
    disparity = rng.uniform(1, 30, size=(50, 70)).astype(np.float32)
    valid = rng.random((50, 70)) < 0.5
    for _ in range(100):
        scale = rng.uniform(0.3, 2.5)
        new_h, new_w = round(50 * scale), round(70 * scale)
        crop = (min(new_h, int(rng.integers(4, 20))), min(new_w, int(rng.integers(4, 20))))
        p = params(
            scale_x=new_w / 70,
            scale_y=new_h / 50,
            crop_y=int(rng.integers(0, new_h - crop[0] + 1)),
            crop_x=int(rng.integers(0, new_w - crop[1] + 1)),
            flip=bool(rng.random() < 0.5),
        )
        y0, y1, x0, x1 = source_window(*source_coordinates(p, crop, "left"), 50, 70)
        windowed = scatter_disparity(disparity[y0:y1, x0:x1], valid[y0:y1, x0:x1], (y0, x0), p, crop)
        whole = scatter_disparity(disparity, valid, (0, 0), p, crop)
        assert torch.equal(windowed[0], whole[0]) and torch.equal(windowed[1], whole[1])


def test_upscaled_sparse_ground_truth_stays_sparse():
    raw = sparse_raw(density=0.2)
    cfg = dataclasses.replace(GEOMETRY, crop_size=[40, 60], disparity_resize="scatter")
    sample = apply_augmentation(raw, params(scale_x=2.0, scale_y=2.0, crop_y=10, crop_x=20), cfg)
    # Each source pixel lands on one output pixel: doubling both axes divides the density by 4 (0.2 -> ~0.05).
    assert 0.03 < sample["valid"].float().mean().item() < 0.07


def test_bilinear_resizing_never_blends_in_unknown_pixels():
    rng = np.random.default_rng(1)
    disparity = np.full((40, 60), 10.0, dtype=np.float32)  # one fronto-parallel plane at 10 px
    holes = rng.random((40, 60)) < 0.1
    disparity[holes] = rng.choice([0.0, np.inf, np.nan], size=int(holes.sum())).astype(np.float32)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    raw = raw_sample(image, disparity, np.ones((40, 60), bool))
    cfg = dataclasses.replace(GEOMETRY, crop_size=[20, 30], disparity_resize="bilinear")
    sample = apply_augmentation(raw, params(scale_x=0.7, scale_y=0.7, crop_y=2, crop_x=3), cfg)
    values = sample["disparity"][sample["valid"]]
    # blending a 0 (or inf/nan) in would give something other than 10 px x 0.7
    torch.testing.assert_close(values, torch.full_like(values, 7.0), atol=1e-4, rtol=0)
    assert 0.3 < sample["valid"].float().mean().item() < 0.95  # holes grow by their bilinear footprint, no more


# ---------------------------------------------------------------------------------------------------------------
# Flip, probabilities, photometric steps
# ---------------------------------------------------------------------------------------------------------------


def test_flip_happens_only_when_the_right_disparity_exists(exact_pairs):
    cfg = dataclasses.replace(GEOMETRY, flip_prob=1.0)
    for seed in range(10):
        assert draw_params(cfg, (64, 96), True, sample_generator(0, seed)).flip
        assert not draw_params(cfg, (64, 96), False, sample_generator(0, seed)).flip
    raw = dict(exact_pairs[0], disparity_right=None, valid_right=None)
    flipped = TrainTransform(cfg)(raw, sample_generator(0, 3), dataset=0)
    unflipped = TrainTransform(dataclasses.replace(cfg, flip_prob=0.0))(raw, sample_generator(0, 3), dataset=0)
    torch.testing.assert_close(flipped["left"], unflipped["left"])  # the coin is drawn, its answer ignored


@pytest.mark.parametrize(
    ("key", "field", "empty"),
    [
        ("occlusion_prob", "occlusion", None),
        ("erase_prob", "erase", ()),
        ("jitter_prob", "colour", None),
        ("spatial_shift_prob", "shift", None),
    ],
)
def test_a_probability_is_the_chance_that_the_step_is_applied(key, field, empty):
    never = dataclasses.replace(GEOMETRY, **{key: 0.0})
    always = dataclasses.replace(GEOMETRY, **{key: 1.0})
    half = dataclasses.replace(GEOMETRY, **{key: 0.5})
    seeds = range(200)
    assert all(getattr(draw_params(never, (64, 96), True, sample_generator(0, s)), field) == empty for s in seeds)
    assert all(getattr(draw_params(always, (64, 96), True, sample_generator(0, s)), field) != empty for s in seeds)
    applied = sum(getattr(draw_params(half, (64, 96), True, sample_generator(0, s)), field) != empty for s in seeds)
    assert 70 < applied < 130  # binomial(200, 0.5): mean 100, sd 7


def test_shared_colour_jitter_gives_both_views_the_same_factors():
    shared = dataclasses.replace(GEOMETRY, jitter_prob=1.0, asymmetric_prob=0.0)
    asymmetric = dataclasses.replace(GEOMETRY, jitter_prob=1.0, asymmetric_prob=1.0)
    left, right = draw_params(shared, (64, 96), True, sample_generator(0, 1)).colour
    assert left == right
    left, right = draw_params(asymmetric, (64, 96), True, sample_generator(0, 1)).colour
    assert left.brightness != right.brightness and left.gamma != right.gamma


def test_erase_blanks_both_views_and_invalidates_the_mask(exact_pairs):
    sample = apply_augmentation(exact_pairs[0], params(erase=((5, 7, 10, 12),)), GEOMETRY)
    for view in ("left", "right"):
        assert (sample[view][:, 5:15, 7:19] == -1.0).all()  # erase_value 0 -> -1 after normalisation
    assert not sample["valid"][:, 5:15, 7:19].any()
    assert (sample["disparity"][:, 5:15, 7:19] == 0).all()


def test_the_occlusion_patch_fills_the_right_view_with_its_mean_colour(exact_pairs):
    plain = apply_augmentation(exact_pairs[0], params(), GEOMETRY)
    occluded = apply_augmentation(exact_pairs[0], params(occlusion=(4, 6, 8, 10)), GEOMETRY)
    patch = occluded["right"][:, 4:12, 6:16]
    mean = plain["right"][:, 4:12, 6:16].mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(patch, mean.expand_as(patch), atol=1e-5, rtol=0)
    torch.testing.assert_close(occluded["left"], plain["left"])
    torch.testing.assert_close(occluded["valid"], plain["valid"])  # the left view's ground truth is untouched


def test_training_samples_follow_the_contract_and_cap_the_disparity(exact_pairs):
    cfg = dataclasses.replace(GEOMETRY, max_disparity=12.0, jitter_prob=1.0, spatial_shift_prob=1.0)
    for number in range(4):
        sample = TrainTransform(cfg)(exact_pairs[number], sample_generator(0, number), dataset=2)
        assert sample["left"].shape == sample["right"].shape == (3, 48, 64)
        assert sample["left"].dtype == torch.float32 and sample["disparity"].shape == (1, 48, 64)
        assert sample["valid"].dtype == torch.bool and sample["valid"].shape == (1, 48, 64)
        assert sample["left"].min() >= -1 and sample["left"].max() <= 1 and sample["dataset"] == 2
        assert (sample["disparity"][sample["valid"]] < 12.0).all() and (sample["disparity"][sample["valid"]] > 0).all()
        assert (sample["disparity"][~sample["valid"]] == 0).all()


def test_an_augmentation_is_a_pure_function_of_seed_and_sample_number(exact_pairs):
    cfg = dataclasses.replace(GEOMETRY, jitter_prob=1.0, spatial_shift_prob=1.0, occlusion_prob=0.5)
    transform = TrainTransform(cfg)
    first = transform(exact_pairs[0], sample_generator(7, 1234), dataset=0)
    again = transform(exact_pairs[0], sample_generator(7, 1234), dataset=0)
    other = transform(exact_pairs[0], sample_generator(7, 1235), dataset=0)
    for key in ("left", "right", "disparity", "valid"):
        torch.testing.assert_close(first[key], again[key], atol=0, rtol=0)
    assert not torch.equal(first["left"], other["left"])


def test_a_raw_sample_with_mismatched_arrays_names_its_file(exact_pairs):
    raw = dict(exact_pairs[0], disparity=np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="synthetic://train/0"):
        TrainTransform(GEOMETRY)(raw, sample_generator(0, 0), dataset=0)


def test_bad_augmentation_values_name_the_key():
    with pytest.raises(ValueError, match=r"augmentation\.flip_prob"):
        AugmentationConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match=r"augmentation\.scale_range"):
        AugmentationConfig(scale_range=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"augmentation\.disparity_resize"):
        AugmentationConfig(disparity_resize="nearest")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation transform
# ---------------------------------------------------------------------------------------------------------------


def test_eval_resize_scales_disparity_by_the_width_ratio_and_keeps_holes_invalid():
    rng = np.random.default_rng(0)
    disparity = np.full((40, 60), 12.0, dtype=np.float32)
    disparity[10:20, 10:30] = np.inf  # no ground truth
    disparity[30:, 50:] = 500.0  # large disparities stay valid: no cap in evaluation
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    raw = raw_sample(image, disparity, np.isfinite(disparity))
    sample = EvalTransform((20, 45))(raw)
    assert sample["left"].shape == (3, 20, 45) and sample["disparity"].shape == (1, 20, 45)
    values = sample["disparity"][sample["valid"]]
    # 12 px x 45/60 = 9 px, 500 px x 0.75 = 375 px; nothing in between (no blending with the hole or the far plane
    # beyond bilinear's footprint at the 12 | 500 edge)
    assert ((values - 9.0).abs() < 1e-4).float().mean() > 0.8
    assert ((values - 375.0).abs() < 1e-3).any()
    assert not sample["valid"][0, 6:9, 9:21].any()  # the hole, scaled
    assert sample["dataset"] == 0


def test_eval_without_resize_only_normalises():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    disparity = rng.uniform(1, 5, size=(8, 12)).astype(np.float32)
    raw = raw_sample(image, disparity, np.ones((8, 12), bool))
    sample = EvalTransform()(raw)
    torch.testing.assert_close(sample["left"], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)
    torch.testing.assert_close(sample["disparity"][0], torch.from_numpy(disparity))
