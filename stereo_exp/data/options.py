"""Per-dataset options of the catalog (``datasets.*`` in the top-level config).

Every option of torchvision's stereo dataset classes is a key here, plus the switches of the corrections the
catalog makes on top of them (docs/DATASETS.md lists them). Defaults reproduce the dataset settings of the
published recipes (torchvision's ``references/depth/stereo/parsing.py``), which differ from the class defaults in
places: ``middlebury2014-other`` uses both calibrations and the ambient views, SceneFlow and FallingThings use
both passes / variants. Two defaults are corrections instead: InStereo2k's scale (the recipe's torchvision divided
by 1024) and FlyingThings3D's TRAIN subset only. A user writes e.g. ``datasets.middlebury2014.train.calibration=both``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from stereo_exp.data.synthetic import SyntheticConfig


class Calibration(str, Enum):
    perfect = "perfect"
    imperfect = "imperfect"
    both = "both"


class RenderPass(str, Enum):
    clean = "clean"
    final = "final"
    both = "both"


class FallingThingsVariant(str, Enum):
    single = "single"
    mixed = "mixed"
    both = "both"


class FlyingThingsSubset(str, Enum):
    train = "train"
    test = "test"
    both = "both"


@dataclass
class MiddleburySplitOptions:
    calibration: Calibration = Calibration.perfect  # perfect | imperfect | both: rectification(s) of each scene
    use_ambient_views: bool = False  # right image drawn uniformly from im1.png, im1E.png (exposure), im1L.png (light)


def _middlebury_other() -> MiddleburySplitOptions:
    # The published CREStereo recipes train on the additional scenes with both calibrations and ambient views.
    return MiddleburySplitOptions(calibration=Calibration.both, use_ambient_views=True)


@dataclass
class Middlebury2014Options:
    train: MiddleburySplitOptions = field(default_factory=MiddleburySplitOptions)  # middlebury2014-train
    other: MiddleburySplitOptions = field(default_factory=_middlebury_other)  # middlebury2014-other ("additional")
    test_use_ambient_views: bool = False  # middlebury2014-test (its scenes have no calibration variants)


@dataclass
class ETH3DOptions:
    non_occluded_only: bool = False  # valid = mask0nocc.png == 255 (benchmark "noc"); false: mask != 0 as torchvision


@dataclass
class InStereo2kOptions:
    # Official README: disparity x 100 in a 16-bit PNG. torchvision <= 0.29 divides by 1024 (pytorch/vision#7129);
    # set 1024 to reproduce torchvision-trained weights.
    disparity_scale: float = 100.0  # PNG value / disparity_scale = disparity in px

    def __post_init__(self) -> None:
        if not self.disparity_scale > 0:
            raise ValueError(f"datasets.instereo2k.disparity_scale must be > 0; got {self.disparity_scale}.")


@dataclass
class FallingThingsOptions:
    variant: FallingThingsVariant = FallingThingsVariant.both  # single | mixed | both: one object, 2-10 objects


@dataclass
class SceneFlowOptions:
    pass_name: RenderPass = RenderPass.both  # clean | final | both: rendering pass(es); both doubles the pairs
    # torchvision globs TRAIN and TEST of FlyingThings3D together; TEST is the set others evaluate on.
    flyingthings_subset: FlyingThingsSubset = FlyingThingsSubset.train  # train | test | both (sceneflow-flyingthings)


@dataclass
class SintelOptions:
    pass_name: RenderPass = RenderPass.final  # clean | final | both: rendering pass(es); both doubles the pairs


@dataclass
class DatasetOptions:
    """Options of every catalog dataset; names without options (crestereo, carla-highres, kitti*) have none."""

    middlebury2014: Middlebury2014Options = field(default_factory=Middlebury2014Options)  # train / other / test
    eth3d: ETH3DOptions = field(default_factory=ETH3DOptions)  # eth3d-train, eth3d-test
    instereo2k: InStereo2kOptions = field(default_factory=InStereo2kOptions)  # instereo2k, instereo2k-test
    fallingthings: FallingThingsOptions = field(default_factory=FallingThingsOptions)  # fallingthings
    sceneflow: SceneFlowOptions = field(default_factory=SceneFlowOptions)  # monkaa, driving, flyingthings
    sintel: SintelOptions = field(default_factory=SintelOptions)  # sintel
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic and synthetic-val
