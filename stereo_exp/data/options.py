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

# Photos bundled with scikit-image (no download). Not the motorcycle pair: it is the embedded default's validation.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
)


@dataclass
class SyntheticConfig:
    height: int = 160  # image height in px
    width: int = 208  # image width in px
    train_samples: int = 4000  # length of the "train" split (catalog name synthetic)
    val_samples: int = 32  # length of the "val" split (catalog name synthetic-val)
    seed: int = 0  # scene seed, independent of the run seed so that every run sees the same data set
    num_layers: list[int] = field(default_factory=lambda: [2, 6])  # min, max layers in front of the background
    disparity_range: list[float] = field(default_factory=lambda: [2.0, 40.0])  # min, max disparity of any surface, px
    background_share: float = 0.5  # the background's disparity lies in the lowest this share of disparity_range
    max_slant: float = 0.1  # max |b|, |c| of a plane d = a + b x + c y (px of disparity per px); < 1
    layer_size: list[float] = field(default_factory=lambda: [0.1, 0.35])  # min, max layer radius, share of the width
    layer_aspect: list[float] = field(default_factory=lambda: [0.5, 2.0])  # min, max width/height ratio of a layer
    noise_spacings: list[float] = field(default_factory=lambda: [32.0, 16.0, 8.0, 4.0, 2.0])  # octave grid steps, px
    noise_persistence: float = 0.7  # amplitude ratio of each finer octave to the next coarser one
    noise_amplitude: float = 0.3  # peak colour amplitude of the summed noise (images in [0, 1])
    patch_spacing: float = 12.0  # grid step of the field whose threshold cuts the two-colour patches, px
    patch_share: float = 0.5  # about this share of each surface takes its second colour (sharp edges inside layers)
    colour_range: list[float] = field(default_factory=lambda: [0.15, 0.85])  # min, max of each base colour channel
    photo_share: float = 0.5  # chance that a surface carries a photo instead of the procedural texture
    photos: list[str] = field(default_factory=lambda: list(PHOTOS))  # skimage.data images that photo textures use
    photo_zoom: list[float] = field(default_factory=lambda: [0.5, 2.0])  # min, max scene px per photo px (log-uniform)
    photo_tint: float = 0.3  # each colour channel of a photo is scaled by a factor in [1 - tint, 1 + tint]
    occluded_valid: bool = True  # keep occluded / out-of-frame pixels valid (dense truth); false marks them invalid

    def __post_init__(self) -> None:
        check_synthetic_config(self)


def check_synthetic_config(cfg: SyntheticConfig) -> None:
    """Raise ``ValueError`` naming the key when a value of ``cfg`` cannot generate scenes."""
    problems = []
    if cfg.height < 8 or cfg.width < 8:
        problems.append(f"height, width must be >= 8 px, got {cfg.height}, {cfg.width}")
    if len(cfg.num_layers) != 2 or not 0 <= cfg.num_layers[0] <= cfg.num_layers[1]:
        problems.append(f"num_layers must be [min, max] with 0 <= min <= max, got {list(cfg.num_layers)}")
    if len(cfg.disparity_range) != 2 or not 0 < cfg.disparity_range[0] < cfg.disparity_range[1]:
        problems.append(f"disparity_range must be [min, max] with 0 < min < max, got {list(cfg.disparity_range)}")
    if not 0 <= cfg.background_share <= 1:
        problems.append(f"background_share must be in [0, 1], got {cfg.background_share}")
    if not 0 <= cfg.max_slant < 1:
        problems.append(f"max_slant must be in [0, 1) (a view would fold over), got {cfg.max_slant}")
    if len(cfg.layer_size) != 2 or not 0 < cfg.layer_size[0] <= cfg.layer_size[1]:
        problems.append(f"layer_size must be [min, max] with 0 < min <= max, got {list(cfg.layer_size)}")
    if len(cfg.layer_aspect) != 2 or not 0 < cfg.layer_aspect[0] <= cfg.layer_aspect[1]:
        problems.append(f"layer_aspect must be [min, max] with 0 < min <= max, got {list(cfg.layer_aspect)}")
    if not cfg.noise_spacings or min(cfg.noise_spacings) <= 0 or cfg.patch_spacing <= 0:
        problems.append(
            f"noise_spacings and patch_spacing must be > 0, got {list(cfg.noise_spacings)}, {cfg.patch_spacing}"
        )
    if not 0 <= cfg.patch_share <= 1:
        problems.append(f"patch_share must be in [0, 1], got {cfg.patch_share}")
    if len(cfg.colour_range) != 2 or not 0 <= cfg.colour_range[0] <= cfg.colour_range[1] <= 1:
        problems.append(f"colour_range must be [min, max] within [0, 1], got {list(cfg.colour_range)}")
    if not 0 <= cfg.photo_share <= 1:
        problems.append(f"photo_share must be in [0, 1], got {cfg.photo_share}")
    unknown = [name for name in cfg.photos if name not in PHOTOS]
    if unknown or (cfg.photo_share > 0 and not cfg.photos):
        problems.append(f"photos must be a non-empty subset of {list(PHOTOS)}, got {list(cfg.photos)}")
    if len(cfg.photo_zoom) != 2 or not 0 < cfg.photo_zoom[0] <= cfg.photo_zoom[1]:
        problems.append(f"photo_zoom must be [min, max] with 0 < min <= max, got {list(cfg.photo_zoom)}")
    if not 0 <= cfg.photo_tint < 1:
        problems.append(f"photo_tint must be in [0, 1), got {cfg.photo_tint}")
    if cfg.train_samples < 0 or cfg.val_samples < 0:
        problems.append(f"train_samples, val_samples must be >= 0, got {cfg.train_samples}, {cfg.val_samples}")
    if problems:
        raise ValueError("invalid synthetic config (datasets.synthetic): " + "; ".join(problems))


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
