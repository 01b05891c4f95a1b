"""Schemas of the ``mix`` and ``augmentation`` config groups (conf/mix/*.yaml, conf/augmentation/*.yaml) and of the
EDA app (conf/eda.yaml).

The defaults of ``AugmentationConfig`` are the published CREStereo stage-1 recipe of torchvision's
``references/depth/stereo`` (train.py arguments as passed through parsing.py into presets.py), so
``conf/augmentation/crestereo.yaml`` sets nothing and the other presets set only what differs. Where the reference
code differs from what its arguments say, the comment gives the value it effectively used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from omegaconf import MISSING

from stereo_exp.data.options import DatasetOptions
from stereo_exp.schemas import LoaderConfig, PathsConfig


@dataclass
class MixConfig:
    """Defaults: the embedded mix (conf/mix/embedded.yaml), procedural pairs generated on the fly, no download; its
    motorcycle mae still falls after 3000 steps (with the averaged weights, 2 threads: 3.96 px there, less at 3600)."""

    datasets: list[str] = field(default_factory=lambda: ["synthetic"])  # catalog names (catalog.list_datasets())
    dataset_steps: list[int] = field(default_factory=lambda: [3600])  # shares s_i / sum(s); total steps = sum(s)

    def __post_init__(self) -> None:
        check_mix_config(self)


def check_mix_config(cfg: MixConfig) -> None:
    """Raise ``ValueError`` naming the keys when ``mix.datasets`` and ``mix.dataset_steps`` do not form a mix."""
    datasets, steps = list(cfg.datasets), list(cfg.dataset_steps)
    if len(datasets) != len(steps):
        raise ValueError(
            f"mix.datasets ({len(datasets)} names: {datasets}) and mix.dataset_steps ({len(steps)} values: {steps}) "
            "must have the same length: one step count per dataset"
        )
    if not datasets:
        raise ValueError("mix.datasets is empty: name at least one catalog dataset")
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"mix.datasets names a dataset twice: {datasets}; add its steps together instead")
    if any(s < 0 for s in steps) or sum(steps) <= 0:
        raise ValueError(f"mix.dataset_steps must be >= 0 with a positive sum, got {steps}")


class ScalingType(StrEnum):
    """How ``augmentation.scale_range`` is sampled; Hydra rejects any other value at composition."""

    linear = "linear"  # scale ~ U(min, max)
    exponential = "exponential"  # scale = 2 ** U(min, max)


class DisparityResize(StrEnum):
    """How a rescaled ground-truth disparity is resampled; Hydra rejects any other value at composition."""

    auto = "auto"  # scatter when the valid share < augmentation.sparse_below, else bilinear
    bilinear = "bilinear"  # dense ground truth: interpolate, then scale by the resize factor
    scatter = "scatter"  # sparse ground truth (KITTI-like): move each valid pixel, never blend with invalid ones


@dataclass
class AugmentationConfig:
    # --- random rescale + crop (every training sample leaves at this size) ---
    crop_size: list[int] = field(default_factory=lambda: [384, 512])  # (H, W) of training crops, px
    scale_range: list[float] = field(default_factory=lambda: [0.6, 1.0])  # min, max image scale factor
    scaling_type: ScalingType = ScalingType.linear  # linear: scale ~ U(min, max) | exponential: 2 ** U(min, max)
    rescale_prob: float = 1.0  # chance of a random scale; otherwise scale 1 (raised if the image is too small)
    min_size_margin: int = 8  # the rescaled image is at least crop + this many px on each axis (room to crop)
    disparity_resize: DisparityResize = DisparityResize.auto  # bilinear | scatter | auto: by sparse_below
    sparse_below: float = 0.5  # auto: ground truth with a smaller valid share is sparse (KITTI-like), uses scatter
    # --- horizontal flip with view swap (only for samples that have a right-view disparity) ---
    flip_prob: float = 0.5  # chance of flipping both views and swapping them
    # --- right-view spatial shift: small calibration errors ---
    spatial_shift_prob: float = 1.0  # chance of rotating / shifting the right view
    max_angle: float = 0.1  # rotation about a random centre, uniform in [-max_angle, max_angle] degrees
    max_shift: float = 2.0  # vertical shift, uniform in [-max_shift, max_shift] px of the crop
    # --- colour: jitter and gamma, on the crop ---
    jitter_prob: float = 1.0  # chance of colour jitter + gamma
    asymmetric_prob: float = 1.0  # given jitter, chance that each view draws its own factors (else shared)
    brightness: list[float] = field(default_factory=lambda: [0.8, 1.2])  # brightness factor range
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])  # contrast factor range
    saturation: list[float] = field(default_factory=lambda: [1.0, 1.0])  # saturation factor range (published: none)
    hue: list[float] = field(default_factory=lambda: [0.0, 0.0])  # hue shift range in [-0.5, 0.5] (published: none)
    gamma: list[float] = field(default_factory=lambda: [0.8, 1.2])  # gamma range (image ** gamma)
    # --- occlusion patch on the right view (filled with its mean colour) ---
    occlusion_prob: float = 0.0  # chance of one patch (published run: 0; train.py's 0.5 never reached the preset)
    occlusion_size: list[int] = field(default_factory=lambda: [50, 100])  # min, max patch side, px of the crop
    # --- erase: the same rectangles blanked in both views, their pixels invalid ---
    erase_prob: float = 0.0  # chance of erasing (published run: 0)
    erase_size: list[int] = field(default_factory=lambda: [50, 100])  # min, max rectangle side, px of the crop
    erase_max_count: int = 1  # rectangles per erase: uniform in 1..erase_max_count
    erase_value: float = 0.0  # fill value in [0, 1] image units (0: black)
    # --- valid mask ---
    max_disparity: float | None = None  # disparities >= this (px, after rescale) are invalid; null: none (published)

    def __post_init__(self) -> None:
        check_augmentation_config(self)


def check_augmentation_config(cfg: AugmentationConfig) -> None:
    """Raise ``ValueError`` naming the key when a value of ``cfg`` is out of range. Hydra has already rejected
    other values of the closed choices; Python callers may pass strings, which become the enum members here."""
    problems = []
    for key, choices in (("scaling_type", ScalingType), ("disparity_resize", DisparityResize)):
        try:
            setattr(cfg, key, choices(getattr(cfg, key)))
        except ValueError:
            names = [choice.value for choice in choices]
            problems.append(f"augmentation.{key} must be one of {names}, got {getattr(cfg, key)!r}")

    def check_range(key: str, low: float | None = None, high: float | None = None) -> None:
        value = list(getattr(cfg, key))
        if len(value) != 2 or value[0] > value[1]:
            problems.append(f"augmentation.{key} must be [min, max] with min <= max, got {value}")
        elif (low is not None and value[0] < low) or (high is not None and value[1] > high):
            problems.append(f"augmentation.{key} must lie within [{low}, {high}], got {value}")

    if len(cfg.crop_size) != 2 or min(cfg.crop_size) < 1:
        problems.append(f"augmentation.crop_size must be [H, W] of positive px, got {list(cfg.crop_size)}")
    check_range("scale_range", low=1e-3 if cfg.scaling_type == "linear" else None)
    for key in (
        "rescale_prob",
        "flip_prob",
        "spatial_shift_prob",
        "jitter_prob",
        "asymmetric_prob",
        "occlusion_prob",
        "erase_prob",
        "sparse_below",
        "erase_value",
    ):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            problems.append(f"augmentation.{key} must be in [0, 1], got {getattr(cfg, key)}")
    if cfg.min_size_margin < 0 or cfg.max_angle < 0 or cfg.max_shift < 0:
        problems.append(
            "augmentation.min_size_margin, max_angle, max_shift must be >= 0, "
            f"got {cfg.min_size_margin}, {cfg.max_angle}, {cfg.max_shift}"
        )
    check_range("brightness", low=0.0)
    check_range("contrast", low=0.0)
    check_range("saturation", low=0.0)
    check_range("hue", low=-0.5, high=0.5)
    check_range("gamma", low=1e-3)
    check_range("occlusion_size", low=1)
    check_range("erase_size", low=1)
    if cfg.erase_max_count < 1:
        problems.append(f"augmentation.erase_max_count must be >= 1, got {cfg.erase_max_count}")
    if cfg.max_disparity is not None and cfg.max_disparity <= 0:
        problems.append(f"augmentation.max_disparity must be > 0 or null, got {cfg.max_disparity}")
    if problems:
        raise ValueError("; ".join(problems))


@dataclass
class EdaConfig:
    num_crops: int = 64  # training crops drawn per dataset of the mix (each dataset's first draws of the run)
    quantiles: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])  # reported
    thresholds: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0])  # px: share of valid px >= each
    bins: int = 64  # histogram bins (PNG and JSON) over [0, each dataset's largest disparity]
    log_scale: bool = True  # logarithmic share axis in the histogram PNG (long tails stay visible)
    resolution: float = 0.25  # px: bin width of the internal histogram that quantiles are read from
    hist_max: float = 2048.0  # px: larger disparities are counted (overflow), not binned

    def __post_init__(self) -> None:
        problems = []
        if self.num_crops < 1 or self.bins < 1:
            problems.append(f"eda.num_crops and eda.bins must be >= 1, got {self.num_crops}, {self.bins}")
        if not all(0.0 <= q <= 1.0 for q in self.quantiles):
            problems.append(f"eda.quantiles must lie in [0, 1], got {list(self.quantiles)}")
        if not all(t > 0 for t in self.thresholds):
            problems.append(f"eda.thresholds must be > 0 px, got {list(self.thresholds)}")
        if not 0 < self.resolution < self.hist_max:
            problems.append(f"eda.resolution must be in (0, eda.hist_max), got {self.resolution}, {self.hist_max}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class EdaAppConfig:
    """``python -m stereo_exp.eda``: the primary config of conf/eda.yaml (the training groups + ``eda``)."""

    mix: Any = MISSING  # conf/mix/*: the datasets to look at, and their shares (the "mix" row)
    augmentation: Any = MISSING  # conf/augmentation/*: crop size and scale range of the crops
    tracking: Any = MISSING  # conf/tracking/*: MLflow run of this analysis (or none)
    eda: EdaConfig = field(default_factory=EdaConfig)  # what to draw and report
    paths: PathsConfig = field(default_factory=PathsConfig)  # paths.data: dataset root; paths.output: the report
    loader: LoaderConfig = field(default_factory=LoaderConfig)  # worker processes reading the crops
    datasets: DatasetOptions = field(default_factory=DatasetOptions)  # per-dataset options, as training's datasets.*
    seed: int = 0  # the run seed whose crops are drawn (same seed as a training run: the same first crops)


class GtResize(str, Enum):
    """How evaluation resizes the ground-truth disparity to ``eval.size`` (images are resized the same way in all)."""

    valid = "valid"  # bilinear among valid pixels only: no value blended with an unknown pixel's
    reference_2022 = "reference_2022"  # bilinear, unknown pixels as 0, no antialias: the published tables' protocol
    reference_today = "reference_today"  # the same with antialias: torchvision's reference run with torchvision >= 0.17
