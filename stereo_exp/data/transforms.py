"""Stereo augmentation for training and the evaluation transform: raw samples in, contract samples out.

A raw sample (catalog output) holds ``left``, ``right`` uint8 (H, W, 3); ``disparity`` float32 (H, W) with anything
at invalid pixels; ``valid`` bool (H, W); optionally ``disparity_right`` / ``valid_right``. A contract sample
(docs/ARCHITECTURE.md) holds ``left``, ``right`` float32 (3, h, w) in [-1, 1]; ``disparity`` float32 (1, h, w), 0 where
invalid; ``valid`` bool (1, h, w); ``dataset`` int.

Training, in this order (every probability is the chance that the step is applied):

1. geometry, one bilinear resampling per view straight from the source image (only the crop's pixels are
   computed, so a 3000 px Middlebury frame costs no more than a small one):
   random rescale (disparity multiplied by the width scale), crop to ``crop_size``, horizontal flip with view swap
   (only when the sample has a right-view disparity: the new left view is the flipped right view and its disparity
   the flipped right disparity, which keeps disparity positive), and the right-view spatial shift (rotation about a
   random centre plus a vertical shift: calibration errors). Images are resampled without antialias, as in the
   published recipe and the published evaluation at 384x512. Disparity is resampled either bilinearly among valid
   pixels only (an output pixel is valid only if every source pixel it blends is valid: no blending with the
   unknown values) or, for sparse ground truth, by scattering every valid source pixel to its nearest output pixel
   (values are never invented; collisions keep the nearest surface, i.e. the largest disparity);
2. colour jitter (brightness, contrast, saturation, hue in random order, then gamma), per view or shared;
3. an occlusion patch on the right view, filled with its mean colour;
4. erase: the same rectangles blanked in both views and marked invalid;
5. normalisation to [-1, 1] and the valid mask: finite, > 0, below ``max_disparity``.

The published reference applies colour before geometry on the full frame; here it runs on the crop (same
pointwise operations; contrast uses the crop's mean grey, not the frame's). Its right-view shift runs before the
rescale, in source pixels; here ``max_shift`` is in crop pixels.

Randomness: every draw comes from the ``torch.Generator`` passed in; the loader seeds it from (seed, global sample
number) with ``sample_generator``, so an augmentation never depends on worker processes or on resuming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

from stereo_exp.data.config import AugmentationConfig, GtResize, check_augmentation_config
from stereo_exp.random_streams import Stream, torch_seed

# Contract: images reach the models normalised to [-1, 1] = (x - 0.5) / 0.5 for x in [0, 1].
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5
_ALL_VALID = 1.0 - 1e-4  # bilinear weight of valid neighbours above which every blended source pixel was valid
_TINY_WEIGHT = 1e-6  # guards a division where the weight of valid neighbours is positive but tiny


def sample_generator(seed: int, sample_number: int) -> torch.Generator:
    """The generator of one sample's augmentation: a pure function of (seed, global sample number)."""
    return torch.Generator().manual_seed(torch_seed(seed, Stream.AUGMENTATION, sample_number))


# ----------------------------------------------------------------------------------------------------------------
# Raw-sample checks and conversions
# ----------------------------------------------------------------------------------------------------------------


def _where(raw: dict[str, Any]) -> str:
    return f"sample {raw.get('index', '?')} of {raw.get('dataset', '?')} ({raw.get('path', '?')})"


def check_raw_sample(raw: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the sample's file when the raw arrays break the raw-sample contract."""
    left, right = raw.get("left"), raw.get("right")
    for key, image in (("left", left), ("right", right)):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{_where(raw)}: {key!r} must be a uint8 (H, W, 3) RGB array, got {got}")
    if left.shape != right.shape:
        raise ValueError(f"{_where(raw)}: left {left.shape} and right {right.shape} images differ in size")
    height, width = left.shape[:2]
    for key in ("disparity", "valid", "disparity_right", "valid_right"):
        array = raw.get(key)
        if array is None and key in ("disparity_right", "valid_right"):
            continue
        if not isinstance(array, np.ndarray) or array.shape != (height, width):
            got = array.shape if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"{_where(raw)}: {key!r} must be an ({height}, {width}) array like the images, got {got}")
    if (raw.get("disparity_right") is None) != (raw.get("valid_right") is None):
        raise ValueError(f"{_where(raw)}: 'disparity_right' and 'valid_right' must both be set or both be None")


def _ground_truth(disparity: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(disparity with 0 at invalid pixels, valid) where valid = given mask & finite & > 0."""
    with np.errstate(invalid="ignore"):
        valid = valid.astype(bool) & np.isfinite(disparity) & (disparity > 0)
    return np.where(valid, disparity, 0.0).astype(np.float32), valid


def image_to_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]. A read-only array (a decoded file may be one) is copied
    first: torch warns on wrapping it, although the conversion to float32 only reads it."""
    return torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1).float().div_(255.0)


def normalize(image: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1] (the contract's input range)."""
    return (image - IMAGE_MEAN) / IMAGE_STD


# ----------------------------------------------------------------------------------------------------------------
# Parameters of one training augmentation
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColourParams:
    brightness: float  # factor
    contrast: float  # factor
    saturation: float  # factor
    hue: float  # shift in [-0.5, 0.5]
    gamma: float  # exponent
    order: tuple[int, ...]  # application order of (brightness, contrast, saturation, hue); gamma comes last


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one training sample; ``apply_augmentation`` is deterministic given these."""

    scale_x: float  # rescaled width / source width (disparity is multiplied by it)
    scale_y: float  # rescaled height / source height
    crop_y: int  # top of the crop in the rescaled image, px
    crop_x: int  # left of the crop in the rescaled image, px
    flip: bool  # flip both views horizontally and swap them
    shift: tuple[float, float, float, float] | None  # right view: angle (deg), down (px), centre x, y (crop px)
    colour: tuple[ColourParams, ColourParams] | None  # left, right view (the same object when shared)
    occlusion: tuple[int, int, int, int] | None  # right-view patch: y, x, h, w (crop px)
    erase: tuple[tuple[int, int, int, int], ...]  # rectangles y, x, h, w blanked in both views


class _Draws:
    """Uniform draws from one generator, in call order (the order is part of the reproducible stream)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator, dtype=torch.float64).item()

    def integer(self, low: int, high: int) -> int:
        """Uniform in low..high inclusive."""
        return int(torch.randint(low, high + 1, (), generator=self.generator).item())

    def coin(self, probability: float) -> bool:
        return torch.rand((), generator=self.generator, dtype=torch.float64).item() < probability

    def permutation(self, n: int) -> tuple[int, ...]:
        return tuple(torch.randperm(n, generator=self.generator).tolist())


def _draw_colour(cfg: AugmentationConfig, draws: _Draws) -> ColourParams:
    return ColourParams(
        brightness=draws.uniform(*cfg.brightness),
        contrast=draws.uniform(*cfg.contrast),
        saturation=draws.uniform(*cfg.saturation),
        hue=draws.uniform(*cfg.hue),
        gamma=draws.uniform(*cfg.gamma),
        order=draws.permutation(4),
    )


def _draw_rectangle(size_range: list[int], crop_h: int, crop_w: int, draws: _Draws) -> tuple[int, int, int, int]:
    """A rectangle y, x, h, w inside the crop; sides drawn in size_range and clipped to the crop."""
    h = min(draws.integer(*size_range), crop_h)
    w = min(draws.integer(*size_range), crop_w)
    return draws.integer(0, crop_h - h), draws.integer(0, crop_w - w), h, w


def draw_params(
    cfg: AugmentationConfig, image_size: tuple[int, int], has_right_disparity: bool, generator: torch.Generator
) -> AugmentParams:
    """Draw the random parameters of one training augmentation of an image of ``image_size`` (H, W)."""
    height, width = image_size
    crop_h, crop_w = cfg.crop_size
    draws = _Draws(generator)

    scale = 1.0
    if draws.coin(cfg.rescale_prob):
        scale = draws.uniform(*cfg.scale_range)
        if cfg.scaling_type == "exponential":
            scale = 2.0**scale
    # Never smaller than the crop plus a margin (the published recipe's rule), whatever was drawn.
    scale = max(scale, (crop_h + cfg.min_size_margin) / height, (crop_w + cfg.min_size_margin) / width)
    new_h, new_w = round(height * scale), round(width * scale)
    crop_y, crop_x = draws.integer(0, new_h - crop_h), draws.integer(0, new_w - crop_w)

    flip = draws.coin(cfg.flip_prob) and has_right_disparity

    shift = None
    if draws.coin(cfg.spatial_shift_prob):
        shift = (
            draws.uniform(-cfg.max_angle, cfg.max_angle),
            draws.uniform(-cfg.max_shift, cfg.max_shift),
            draws.uniform(0, crop_w - 1),
            draws.uniform(0, crop_h - 1),
        )

    colour = None
    if draws.coin(cfg.jitter_prob):
        left = _draw_colour(cfg, draws)
        colour = (left, _draw_colour(cfg, draws)) if draws.coin(cfg.asymmetric_prob) else (left, left)

    occlusion = None
    if draws.coin(cfg.occlusion_prob):
        occlusion = _draw_rectangle(cfg.occlusion_size, crop_h, crop_w, draws)

    erase: tuple[tuple[int, int, int, int], ...] = ()
    if draws.coin(cfg.erase_prob):
        count = draws.integer(1, cfg.erase_max_count)
        erase = tuple(_draw_rectangle(cfg.erase_size, crop_h, crop_w, draws) for _ in range(count))

    return AugmentParams(
        scale_x=new_w / width,
        scale_y=new_h / height,
        crop_y=crop_y,
        crop_x=crop_x,
        flip=flip,
        shift=shift,
        colour=colour,
        occlusion=occlusion,
        erase=erase,
    )


# ----------------------------------------------------------------------------------------------------------------
# Geometry: one sampling grid per output view
# ----------------------------------------------------------------------------------------------------------------


def source_coordinates(params: AugmentParams, crop_size: tuple[int, int], view: str) -> tuple[Tensor, Tensor]:
    """Source-pixel coordinates (x, y), each float64 (h, w), that output ``view`` ("left" | "right") samples.

    Pixel centres are integers. The rescale follows ``F.interpolate(align_corners=False)``: output column u of the
    rescaled image samples source x = (u + 0.5) / scale_x - 0.5. The flip mirrors crop columns. The spatial shift
    moves the right view's content by ``shift`` px down and rotates it by ``angle`` degrees about its centre.
    """
    crop_h, crop_w = crop_size
    v, u = torch.meshgrid(
        torch.arange(crop_h, dtype=torch.float64), torch.arange(crop_w, dtype=torch.float64), indexing="ij"
    )
    if view == "right" and params.shift is not None:
        angle, shift, centre_x, centre_y = params.shift
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        du, dv = u - centre_x, v - centre_y
        # inverse mapping: where in the unshifted crop each shifted pixel comes from
        u, v = centre_x + cos * du + sin * dv, centre_y - sin * du + cos * dv - shift
    if params.flip:
        u = (crop_w - 1) - u
    x = (params.crop_x + u + 0.5) / params.scale_x - 0.5
    y = (params.crop_y + v + 0.5) / params.scale_y - 0.5
    return x, y


def source_window(x: Tensor, y: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Bounds (y0, y1, x0, x1) of the source pixels that bilinear sampling at (x, y) reads, inside the image."""
    x0 = min(max(math.floor(x.min().item()) - 1, 0), width - 1)
    y0 = min(max(math.floor(y.min().item()) - 1, 0), height - 1)
    x1 = max(min(math.ceil(x.max().item()) + 2, width), x0 + 1)
    y1 = max(min(math.ceil(y.max().item()) + 2, height), y0 + 1)
    return y0, y1, x0, x1


def _sample(source: Tensor, x: Tensor, y: Tensor, window: tuple[int, int, int, int], mode: str) -> Tensor:
    """Sample ``source`` (C, h, w), the window's pixels, at source coordinates (x, y); edge pixels repeat outside."""
    y0, y1, x0, x1 = window
    grid = torch.stack(((2 * (x - x0) + 1) / (x1 - x0) - 1, (2 * (y - y0) + 1) / (y1 - y0) - 1), dim=-1)
    out = F.grid_sample(source[None], grid[None].float(), mode=mode, padding_mode="border", align_corners=False)
    return out[0]


def resample_image(image: np.ndarray, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear samples (3, h, w) in [0, 1] of a uint8 (H, W, 3) image at source coordinates (x, y)."""
    window = source_window(x, y, image.shape[0], image.shape[1])
    y0, y1, x0, x1 = window
    return _sample(image_to_tensor(image[y0:y1, x0:x1]), x, y, window, "bilinear").clamp_(0.0, 1.0)


def resample_disparity_bilinear(
    disparity: np.ndarray, valid: np.ndarray, x: Tensor, y: Tensor, window: tuple[int, int, int, int]
) -> tuple[Tensor, Tensor]:
    """Bilinear resampling among valid pixels: (disparity (1, h, w) in source px, valid (1, h, w)).

    ``disparity`` / ``valid`` hold the source ``window`` (y0, y1, x0, x1) with 0 at invalid pixels; (x, y) are
    full-image source coordinates. An output pixel is valid only if every source pixel with a non-zero bilinear
    weight is valid, so unknown values (zeros, inf) are never blended in.
    """
    stacked = torch.from_numpy(np.stack((disparity, valid.astype(np.float32))))
    values, weight = _sample(stacked, x, y, window, "bilinear")
    out_valid = weight > _ALL_VALID
    out = torch.where(out_valid, values / weight.clamp(min=_ALL_VALID), torch.zeros(()))
    return out[None], out_valid[None]


def scatter_disparity(
    disparity: np.ndarray,
    valid: np.ndarray,
    origin: tuple[int, int],
    params: AugmentParams,
    crop_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Sparse resampling: every valid source pixel goes to its nearest output pixel (of the left output view).

    ``disparity`` / ``valid`` hold a source window whose top-left pixel is ``origin`` (y0, x0); it must contain every
    source pixel that lands in the crop (the bilinear window of the left view does). Returns (disparity (1, h, w) in
    source px, valid (1, h, w)). Output values are source values; where several land on one output pixel the
    largest (nearest surface) wins; output pixels nobody lands on are invalid.
    """
    crop_h, crop_w = crop_size
    rows, cols = np.nonzero(valid)
    values = torch.from_numpy(disparity[rows, cols])
    # inverse of the rescale: source pixel centre x -> rescaled (x + 0.5) * scale - 0.5 -> crop column
    u = torch.from_numpy((cols + origin[1] + 0.5) * params.scale_x - 0.5 - params.crop_x).round_()
    v = torch.from_numpy((rows + origin[0] + 0.5) * params.scale_y - 0.5 - params.crop_y).round_()
    if params.flip:
        u = (crop_w - 1) - u
    inside = (u >= 0) & (u < crop_w) & (v >= 0) & (v < crop_h)
    index = (v[inside] * crop_w + u[inside]).long()
    out = torch.zeros(crop_h * crop_w, dtype=torch.float32)
    out.scatter_reduce_(0, index, values[inside], reduce="amax")
    out_valid = torch.zeros(crop_h * crop_w, dtype=torch.bool)
    out_valid[index] = True
    return out.view(1, crop_h, crop_w), out_valid.view(1, crop_h, crop_w)


# ----------------------------------------------------------------------------------------------------------------
# Photometric steps on the crop
# ----------------------------------------------------------------------------------------------------------------

_JITTERS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def adjust_colour(image: Tensor, params: ColourParams) -> Tensor:
    """Colour jitter then gamma on a (3, h, w) image in [0, 1]; identity factors are skipped (exact no-ops)."""
    values = (params.brightness, params.contrast, params.saturation, params.hue)
    identity = (1.0, 1.0, 1.0, 0.0)
    for index in params.order:
        if values[index] != identity[index]:
            image = _JITTERS[index](image, values[index])
    if params.gamma != 1.0:
        image = TF.adjust_gamma(image, params.gamma)
    return image


def apply_augmentation(raw: dict[str, Any], params: AugmentParams, cfg: AugmentationConfig) -> dict[str, Tensor]:
    """The training augmentation of ``raw`` with fixed ``params``: the contract arrays, without ``dataset``."""
    crop_size = (cfg.crop_size[0], cfg.crop_size[1])
    if params.flip:
        if raw.get("disparity_right") is None:
            raise ValueError(f"{_where(raw)}: a flip needs the right-view disparity, which this sample lacks")
        sources = (raw["right"], raw["left"])
        disparity, valid = raw["disparity_right"], raw["valid_right"]
    else:
        sources = (raw["left"], raw["right"])
        disparity, valid = raw["disparity"], raw["valid"]

    x, y = source_coordinates(params, crop_size, "left")
    left = resample_image(sources[0], x, y)
    right = resample_image(sources[1], *source_coordinates(params, crop_size, "right"))

    # Ground truth of the source window only: a crop of a 3000 px frame never touches the whole map.
    window = source_window(x, y, disparity.shape[0], disparity.shape[1])
    y0, y1, x0, x1 = window
    disparity, valid = _ground_truth(disparity[y0:y1, x0:x1], valid[y0:y1, x0:x1])
    mode = cfg.disparity_resize
    if mode == "auto":
        mode = "scatter" if valid.mean() < cfg.sparse_below else "bilinear"
    if mode == "scatter":
        out_disparity, out_valid = scatter_disparity(disparity, valid, (y0, x0), params, crop_size)
    else:
        out_disparity, out_valid = resample_disparity_bilinear(disparity, valid, x, y, window)
    out_disparity = out_disparity * params.scale_x  # disparity is a horizontal length: it scales with the width

    if params.colour is not None:
        left = adjust_colour(left, params.colour[0])
        right = adjust_colour(right, params.colour[1])
    if params.occlusion is not None:
        top, col, h, w = params.occlusion
        patch = right[:, top : top + h, col : col + w]
        patch[...] = patch.mean(dim=(1, 2), keepdim=True)
    for top, col, h, w in params.erase:
        left[:, top : top + h, col : col + w] = cfg.erase_value
        right[:, top : top + h, col : col + w] = cfg.erase_value
        out_valid[:, top : top + h, col : col + w] = False
    return finish_sample(left, right, out_disparity, out_valid, cfg.max_disparity)


def finish_sample(
    left: Tensor, right: Tensor, disparity: Tensor, valid: Tensor, max_disparity: float | None
) -> dict[str, Tensor]:
    """Normalise the [0, 1] images and apply the valid mask: finite, > 0, below ``max_disparity`` (if set)."""
    valid = valid & torch.isfinite(disparity) & (disparity > 0)
    if max_disparity is not None:
        valid &= disparity < max_disparity
    return {
        "left": normalize(left),
        "right": normalize(right),
        "disparity": torch.where(valid, disparity, torch.zeros(())).float(),
        "valid": valid,
    }


class TrainTransform:
    """Training augmentation: ``transform(raw, generator, dataset=i)`` -> contract sample (see the module docstring)."""

    def __init__(self, cfg: AugmentationConfig) -> None:
        check_augmentation_config(cfg)
        self.cfg = cfg

    def __call__(self, raw: dict[str, Any], generator: torch.Generator, *, dataset: int) -> dict[str, Any]:
        check_raw_sample(raw)
        has_right = raw.get("disparity_right") is not None
        params = draw_params(self.cfg, raw["left"].shape[:2], has_right, generator)
        sample: dict[str, Any] = apply_augmentation(raw, params, self.cfg)
        sample["dataset"] = dataset
        return sample


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


GT_RESIZE_DESCRIPTIONS = {
    GtResize.valid: "bilinear among valid pixels only",
    GtResize.reference_2022: "bilinear with unknown pixels as 0, no antialias (torchvision's reference in 2022, the "
    "protocol of the published tables)",
    GtResize.reference_today: "bilinear with unknown pixels as 0, antialiased (torchvision's reference run with "
    "torchvision >= 0.17)",
}


class EvalTransform:
    """Evaluation transform: optional resize to ``size`` (H, W), normalisation; no augmentation, no disparity cap.

    The resize follows the published evaluation: images bilinear without antialias, the valid mask nearest
    (``F.interpolate`` "nearest", as torchvision's ``F.resize``), disparity multiplied by the width ratio. The
    disparity itself, by ``gt_resize``: ``valid`` (default) interpolates bilinearly among valid pixels only, so the
    valid pixels next to a hole keep their neighbours' value. The reference (``reference_2022``, ``reference_today``)
    interpolates the map with 0 at unknown pixels, so zeros bleed into every valid pixel next to a hole (their
    disparity shrinks towards 0), and keeps a pixel valid where the nearest source pixel was valid and the blend is
    above 0; since torchvision 0.17 its ``F.resize`` also antialiases (a wider blend when shrinking).
    """

    def __init__(self, size: tuple[int, int] | None = None, gt_resize: GtResize | str = GtResize.valid) -> None:
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"eval size must be (H, W) of positive px or None, got {size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.gt_resize = GtResize(gt_resize)

    def __call__(self, raw: dict[str, Any], *, dataset: int = 0) -> dict[str, Any]:
        check_raw_sample(raw)
        disparity, valid = _ground_truth(raw["disparity"], raw["valid"])
        left, right = image_to_tensor(raw["left"]), image_to_tensor(raw["right"])
        disparity_t, valid_t = torch.from_numpy(disparity)[None], torch.from_numpy(valid)[None]
        height, width = disparity.shape
        if self.size is not None and self.size != (height, width):
            images = F.interpolate(torch.stack((left, right)), size=self.size, mode="bilinear", align_corners=False)
            left, right = images.clamp_(0.0, 1.0).unbind(0)
            nearest = F.interpolate(valid_t[None].float(), size=self.size, mode="nearest")[0] > 0.5
            if self.gt_resize is GtResize.valid:
                stacked = torch.cat((disparity_t, valid_t.float()))[:, None]  # (2, 1, H, W): values, valid weight
                both = F.interpolate(stacked, size=self.size, mode="bilinear", align_corners=False)
                values, weight = both[0], both[1]
                valid_t = nearest & (weight > 0)
                disparity_t = torch.where(valid_t, values / weight.clamp(min=_TINY_WEIGHT), torch.zeros(()))
            else:  # disparity_t holds 0 at unknown pixels; finish_sample drops what the blend left at 0
                antialias = self.gt_resize is GtResize.reference_today
                disparity_t = F.interpolate(
                    disparity_t[None], size=self.size, mode="bilinear", align_corners=False, antialias=antialias
                )[0]
                valid_t = nearest
            disparity_t = disparity_t * (self.size[1] / width)
        sample: dict[str, Any] = finish_sample(left, right, disparity_t, valid_t, max_disparity=None)
        sample["dataset"] = dataset
        return sample
