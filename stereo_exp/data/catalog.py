"""Dataset catalog: the dataset names of the published recipes -> torchvision.datasets' stereo classes.

The file readers stay torchvision's. Around them the catalog adds what a training run needs:

- one raw-sample format for every set (below), including the right view's disparity where the data has it
  (read through torchvision's ``transforms=`` hook, which sees both views' disparities);
- checks before training (``check_dataset_root``): a missing or incomplete root, files paired across folders
  by sort order only (pytorch/vision#7128), missing masks or camera files; every message shows the expected
  layout under ``paths.data`` and the official download page;
- errors that name the file: a corrupt or truncated image / PFM / PNG, left and right views of different sizes;
- corrections of torchvision's readers, each one an option or a documented rule: KITTI 2015 keeps the ``*_10``
  frames only and does not take ``disp_occ_1`` (frame t+1) for the right view; InStereo2k's scale
  (pytorch/vision#7129); FlyingThings3D TRAIN / TEST; a reproducible Middlebury ambient-view draw.

Raw sample (every catalog dataset returns this dict; ``stereo_exp.data.transforms`` consumes it):

    left, right       np.uint8 (H, W, 3) RGB (grey and RGBA files are converted)
    disparity         np.float32 (H, W), positive px of the left view (x_right = x_left - d); invalid pixels keep
                      the file's value (0, inf or nan); None only for sets without ground truth opened with
                      ``require_disparity=False``
    valid             np.bool_ (H, W): the dataset's own mask & finite & > 0; None when disparity is None
    disparity_right   np.float32 (H, W) or None: the right view's disparity, when the dataset provides it
    valid_right       np.bool_ (H, W) or None
    dataset           str, the catalog name;  index: int;  path: str, the left image file (for messages)

Arrays are fresh, writable and C-contiguous: transforms may modify them in place.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.datasets as tvd
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset

from stereo_exp.data.config import as_schema
from stereo_exp.data.embedded import MotorcycleStereo
from stereo_exp.data.options import (
    Calibration,
    DatasetOptions,
    FallingThingsVariant,
    FlyingThingsSubset,
    RenderPass,
)
from stereo_exp.data.synthetic import SyntheticStereo

log = logging.getLogger(__name__)

RawSample = dict[str, Any]

DOCS = "docs/DATASETS.md"
# torchvision <= 0.29.1 decodes InStereo2k as PNG / 1024 (pytorch/vision#7129); tests pin this assumption.
TORCHVISION_INSTEREO2K_DIVISOR = 1024.0


class DatasetRootError(FileNotFoundError):
    """A dataset root is missing or incomplete; the message shows the expected layout and the download page."""


class DatasetFileError(OSError):
    """A file of a sample cannot be read (corrupt, truncated, missing); the message names the file."""


# --------------------------------------------------------------------------------------------------------------
# torchvision hooks
# --------------------------------------------------------------------------------------------------------------


def _keep_both_views(images: tuple, disparities: tuple, masks: tuple) -> tuple:
    """torchvision ``transforms=`` callable that hands the right view's disparity and mask through.

    ``StereoMatchingDataset.__getitem__`` passes both views' disparities and masks to this callable but returns
    only element 0 of each; packing the pairs into element 0 keeps both. Module-level so DataLoader workers can
    pickle it.
    """
    return images, (disparities, None), (masks, None)


class _Middlebury2014(tvd.Middlebury2014Stereo):
    """torchvision's Middlebury 2014 reader whose ambient-view draw can come from the caller's generator.

    torchvision draws the right view (im1E / im1L / im1, uniformly among those present) from Python's global
    ``random``: the draw then depends on whatever else used that stream and on DataLoader worker seeding, so a
    resumed run draws differently. ``CatalogDataset.load(index, rng=...)`` sets ``rng`` for one read (same
    candidates, same uniform choice); with ``rng`` None torchvision's own draw is used.
    """

    rng: np.random.Generator | None = None

    @staticmethod
    def ambient_views(right: Path) -> list[Path]:
        """The ambient views beside the right view ``im1.png`` that exist: im1E.png (exposure), im1L.png (light)."""
        return [p for p in (right.with_name("im1E.png"), right.with_name("im1L.png")) if p.exists()]

    def _read_img(self, file_path: str | Path) -> Image.Image:
        path = Path(file_path)
        if self.rng is None or not self.use_ambient_views or path.name != "im1.png":
            return super()._read_img(file_path)
        views = [*self.ambient_views(path), path]
        chosen = views[int(self.rng.integers(len(views)))]
        # Skip Middlebury2014Stereo._read_img (the global-random draw); the base class reads and converts to RGB.
        return super(tvd.Middlebury2014Stereo, self)._read_img(chosen)


# --------------------------------------------------------------------------------------------------------------
# Catalog entries
# --------------------------------------------------------------------------------------------------------------

Opener = Callable[[Path, DatasetOptions], tvd.VisionDataset]


@dataclass(frozen=True)
class _Entry:
    """How one catalog name maps onto a torchvision class and what its root must look like."""

    source: str  # torchvision class and arguments, for messages and docs
    layout: str  # expected layout under paths.data (message text)
    download: str  # official download page
    open: Opener  # builds the torchvision dataset (transforms=_keep_both_views)
    required: Callable[[DatasetOptions], list[str]]  # folders (relative to paths.data) that must exist
    has_disparity: bool = True  # ground truth exists (False: test splits)
    right_disparity: bool = False  # expose the right view's disparity that torchvision reads
    # Pairing check: the files of one sample must agree on their last `key_folders` folder names (view folders
    # "left"/"right" skipped) and, when `key_name` is set, on its first group matched against the file name.
    key_folders: int = 1
    key_name: str | None = None
    aux: Callable[[str], list[Path]] | None = None  # files read beside each disparity file (masks, camera json)
    options: str = ""  # the datasets.* keys that choose which folders are read (message text)


def _enum(value: Any, kind: type[Enum], key: str) -> str:
    """The option's string value, or a ValueError naming the config key and the accepted values."""
    try:
        return kind(value).value
    except ValueError:
        accepted = " | ".join(member.value for member in kind)
        raise ValueError(f"datasets.{key}={value!r} is not one of {accepted}.") from None


def _passes(value: Any, key: str) -> list[str]:
    name = _enum(value, RenderPass, key)
    return ["clean", "final"] if name == "both" else [name]


def _middlebury(split: str) -> Opener:
    def open_(root: Path, opts: DatasetOptions) -> tvd.VisionDataset:
        if split == "test":
            calibration, ambient = None, opts.middlebury2014.test_use_ambient_views
        else:
            group = "train" if split == "train" else "other"  # torchvision's "additional" is our "other"
            split_opts = getattr(opts.middlebury2014, group)
            key = f"middlebury2014.{group}.calibration"
            calibration, ambient = _enum(split_opts.calibration, Calibration, key), split_opts.use_ambient_views
        return _Middlebury2014(
            root, split=split, calibration=calibration, use_ambient_views=bool(ambient), transforms=_keep_both_views
        )

    return open_


def _kitti2015(split: str) -> Opener:
    def open_(root: Path, opts: DatasetOptions) -> tvd.VisionDataset:
        dataset = tvd.Kitti2015Stereo(root, split=split, transforms=_keep_both_views)
        # image_2 / image_3 hold frames t (*_10) and t+1 (*_11); ground truth exists for *_10 only, and torchvision
        # pairs the sorted lists by position (pytorch/vision#7128). Keep *_10, as the benchmark does.
        kept = [pair for pair in dataset._images if Path(pair[0]).name.endswith("_10.png")]
        dropped = len(dataset._images) - len(kept)
        if dropped:
            log.info("kitti2015-%s: %d *_11.png frames (t+1, no ground truth) left out", split, dropped)
        dataset._images = kept
        if split == "test":
            dataset._disparities = [(None, None)] * len(kept)
        return dataset

    return open_


def _sceneflow(variant: str) -> Opener:
    def open_(root: Path, opts: DatasetOptions) -> tvd.VisionDataset:
        pass_name = _enum(opts.sceneflow.pass_name, RenderPass, "sceneflow.pass_name")
        dataset = tvd.SceneFlowStereo(root, variant=variant, pass_name=pass_name, transforms=_keep_both_views)
        if variant == "FlyingThings3D":
            _select_flyingthings(dataset, root, opts.sceneflow.flyingthings_subset)
        return dataset

    return open_


def _select_flyingthings(dataset: tvd.SceneFlowStereo, root: Path, subset_value: Any) -> None:
    """Keep the TRAIN or TEST pairs: torchvision's glob ``frames_*/*/*/*`` takes both (TEST is for evaluation)."""
    subset = _enum(subset_value, FlyingThingsSubset, "sceneflow.flyingthings_subset")
    if subset == "both":
        return
    base = root / "SceneFlow" / "FlyingThings3D"
    keep = [Path(left).relative_to(base).parts[1] == subset.upper() for left, _ in dataset._images]
    dataset._images = [pair for pair, k in zip(dataset._images, keep, strict=True) if k]
    dataset._disparities = [pair for pair, k in zip(dataset._disparities, keep, strict=True) if k]
    dropped = len(keep) - sum(keep)
    log.info("sceneflow-flyingthings: %d %s pairs kept, %d of the other subset left out", sum(keep), subset, dropped)


def _sintel_masks(disparity_path: str) -> list[Path]:
    path = Path(disparity_path)  # <root>/Sintel/training/disparities/<scene>/<frame>.png
    training = path.parent.parent.parent
    return [training / folder / path.parent.name / path.name for folder in ("occlusions", "outofframe")]


def _eth3d_mask(disparity_path: str) -> list[Path]:
    return [Path(disparity_path).parent / "mask0nocc.png"]


def _fallingthings_camera(disparity_path: str) -> list[Path]:
    return [Path(disparity_path).parent / "_camera_settings.json"]


_CRESTEREO_LAYOUT = """\
<paths.data>/CREStereo/
    hole/  reflective/  shapenet/  tree/          (all four)
        <id>_left.jpg  <id>_right.jpg  <id>_left.disp.png  <id>_right.disp.png"""

_ETH3D_LAYOUT = """\
<paths.data>/ETH3D/
    two_view_training/<scene>/im0.png  im1.png          (two_view_training.7z)
    two_view_training_gt/<scene>/disp0GT.pfm  mask0nocc.png  (two_view_training_gt.7z)
    two_view_test/<scene>/im0.png  im1.png              (two_view_test.7z; test split only)"""

_MIDDLEBURY_LAYOUT = """\
<paths.data>/Middlebury2014/
    train/<Scene>-perfect/  <Scene>-imperfect/        (Adirondack, Jadeplant, Motorcycle, Piano, ...)
        im0.png  im1.png  [im1E.png  im1L.png]  disp0.pfm  disp1.pfm  calib.txt
    additional/<Scene>-perfect/  <Scene>-imperfect/   (Backpack, Bicycle1, Cable, Classroom1, ...)
    test/<Scene>/im0.png  im1.png  calib.txt          (MiddEval3 testF: Australia, Bicycle2, ...)"""

_INSTEREO2K_LAYOUT = """\
<paths.data>/InStereo2k/
    train/<scene>/left.png  right.png  left_disp.png  right_disp.png   (scenes of part1..part5 moved here)
    test/<scene>/left.png  right.png  left_disp.png  right_disp.png"""

_FALLINGTHINGS_LAYOUT = """\
<paths.data>/FallingThings/
    single/<object>/<scene>/_camera_settings.json  <frame>.left.jpg  <frame>.right.jpg
                            <frame>.left.depth.png  <frame>.right.depth.png
    mixed/<scene>/...  (same files)"""

_CARLA_LAYOUT = """\
<paths.data>/carla-highres/
    trainingF/<scene>/im0.png  im1.png  disp0GT.pfm  disp1GT.pfm"""

_SINTEL_LAYOUT = """\
<paths.data>/Sintel/
    training/final_left/<scene>/frame_NNNN.png   final_right/...   clean_left/...   clean_right/...
    training/disparities/<scene>/frame_NNNN.png  occlusions/...    outofframe/..."""

_SCENEFLOW_LAYOUT = """\
<paths.data>/SceneFlow/
    Monkaa/frames_cleanpass/<scene>/left/NNNN.png  right/...   (frames_finalpass/ likewise)
    Monkaa/disparity/<scene>/left/NNNN.pfm  right/...
    Driving/frames_cleanpass/<focal>/<direction>/<speed>/left/NNNN.png ...   Driving/disparity/... likewise
    FlyingThings3D/frames_cleanpass/TRAIN|TEST/<A|B|C>/<seq>/left/NNNN.png ...  FlyingThings3D/disparity/..."""

_KITTI2012_LAYOUT = """\
<paths.data>/Kitti2012/            (data_stereo_flow.zip)
    training/colored_0/NNNNNN_10.png  colored_1/NNNNNN_10.png  disp_noc/NNNNNN_10.png
    testing/colored_0/NNNNNN_10.png   colored_1/NNNNNN_10.png"""

_KITTI2015_LAYOUT = """\
<paths.data>/Kitti2015/            (data_scene_flow.zip)
    training/image_2/NNNNNN_10.png  image_3/NNNNNN_10.png  disp_occ_0/NNNNNN_10.png
    testing/image_2/NNNNNN_10.png   image_3/NNNNNN_10.png"""


def _fallingthings_variants(opts: DatasetOptions) -> list[str]:
    variant = _enum(opts.fallingthings.variant, FallingThingsVariant, "fallingthings.variant")
    return ["single", "mixed"] if variant == "both" else [variant]


_ENTRIES: dict[str, _Entry] = {
    "crestereo": _Entry(
        source="torchvision.datasets.CREStereo",
        layout=_CRESTEREO_LAYOUT,
        download="https://github.com/megvii-research/CREStereo (dataset_download.sh)",
        open=lambda root, opts: tvd.CREStereo(root, transforms=_keep_both_views),
        required=lambda opts: [f"CREStereo/{d}" for d in ("hole", "reflective", "shapenet", "tree")],
        right_disparity=True,
        key_name=r"(.+)_(?:left|right)(?:\.disp)?\.\w+",
    ),
    "eth3d-train": _Entry(
        source='torchvision.datasets.ETH3DStereo(split="train")',
        layout=_ETH3D_LAYOUT,
        download="https://www.eth3d.net/datasets (low-res two-view)",
        open=lambda root, opts: tvd.ETH3DStereo(root, split="train", transforms=_keep_both_views),
        options="datasets.eth3d.non_occluded_only",
        required=lambda opts: ["ETH3D/two_view_training", "ETH3D/two_view_training_gt"],
        aux=_eth3d_mask,
    ),
    "eth3d-test": _Entry(
        source='torchvision.datasets.ETH3DStereo(split="test")',
        layout=_ETH3D_LAYOUT,
        download="https://www.eth3d.net/datasets (low-res two-view)",
        open=lambda root, opts: tvd.ETH3DStereo(root, split="test", transforms=_keep_both_views),
        required=lambda opts: ["ETH3D/two_view_test"],
        has_disparity=False,
    ),
    "middlebury2014-train": _Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="train")',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/data/scenes2014/",
        open=_middlebury("train"),
        options="datasets.middlebury2014.train.calibration (perfect | imperfect | both), .use_ambient_views",
        required=lambda opts: ["Middlebury2014/train"],
        right_disparity=True,
    ),
    "middlebury2014-other": _Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="additional")',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/data/scenes2014/",
        open=_middlebury("additional"),
        options="datasets.middlebury2014.other.calibration (perfect | imperfect | both), .use_ambient_views",
        required=lambda opts: ["Middlebury2014/additional"],
        right_disparity=True,
    ),
    "middlebury2014-test": _Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="test", calibration=None)',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/submit3/ (MiddEval3-data-F.zip, testF)",
        open=_middlebury("test"),
        required=lambda opts: ["Middlebury2014/test"],
        has_disparity=False,
    ),
    "instereo2k": _Entry(
        source='torchvision.datasets.InStereo2k(split="train")',
        layout=_INSTEREO2K_LAYOUT,
        download="https://github.com/YuhuaXu/StereoDataset",
        open=lambda root, opts: tvd.InStereo2k(root, split="train", transforms=_keep_both_views),
        options="datasets.instereo2k.disparity_scale",
        required=lambda opts: ["InStereo2k/train"],
        right_disparity=True,
    ),
    "instereo2k-test": _Entry(
        source='torchvision.datasets.InStereo2k(split="test")',
        layout=_INSTEREO2K_LAYOUT,
        download="https://github.com/YuhuaXu/StereoDataset",
        open=lambda root, opts: tvd.InStereo2k(root, split="test", transforms=_keep_both_views),
        options="datasets.instereo2k.disparity_scale",
        required=lambda opts: ["InStereo2k/test"],
        right_disparity=True,
    ),
    "fallingthings": _Entry(
        source="torchvision.datasets.FallingThingsStereo",
        layout=_FALLINGTHINGS_LAYOUT,
        download="https://research.nvidia.com/publication/2018-06_falling-things-synthetic-dataset-3d-object-detection-and-pose-estimation",
        open=lambda root, opts: tvd.FallingThingsStereo(
            root,
            variant=_enum(opts.fallingthings.variant, FallingThingsVariant, "fallingthings.variant"),
            transforms=_keep_both_views,
        ),
        required=lambda opts: [f"FallingThings/{v}" for v in _fallingthings_variants(opts)],
        right_disparity=True,
        key_folders=2,
        key_name=r"(.+?)\.(?:left|right)(?:\.depth)?\.\w+",
        aux=_fallingthings_camera,
        options="datasets.fallingthings.variant (single | mixed | both)",
    ),
    "carla-highres": _Entry(
        source="torchvision.datasets.CarlaStereo",
        layout=_CARLA_LAYOUT,
        download="https://github.com/gengshan-y/high-res-stereo (HR-VS data set)",
        open=lambda root, opts: tvd.CarlaStereo(root, transforms=_keep_both_views),
        required=lambda opts: ["carla-highres/trainingF"],
        right_disparity=True,
    ),
    "sintel": _Entry(
        source="torchvision.datasets.SintelStereo",
        layout=_SINTEL_LAYOUT,
        download="http://sintel.is.tue.mpg.de/stereo",
        open=lambda root, opts: tvd.SintelStereo(
            root, pass_name=_enum(opts.sintel.pass_name, RenderPass, "sintel.pass_name"), transforms=_keep_both_views
        ),
        required=lambda opts: (
            [
                f"Sintel/training/{folder}"
                for p in _passes(opts.sintel.pass_name, "sintel.pass_name")
                for folder in (f"{p}_left", f"{p}_right")
            ]
            + ["Sintel/training/disparities", "Sintel/training/occlusions", "Sintel/training/outofframe"]
        ),
        key_name=r"(.+)\.png",
        aux=_sintel_masks,
        options="datasets.sintel.pass_name (clean | final | both)",
    ),
    **{
        f"sceneflow-{short}": _Entry(
            source=f'torchvision.datasets.SceneFlowStereo(variant="{variant}")',
            layout=_SCENEFLOW_LAYOUT,
            download="https://lmb.informatik.uni-freiburg.de/resources/datasets/SceneFlowDatasets.en.html",
            open=_sceneflow(variant),
            options="datasets.sceneflow.pass_name (clean | final | both), .flyingthings_subset (train | test | both)",
            required=lambda opts, variant=variant: [
                f"SceneFlow/{variant}/{folder}"
                for folder in [f"frames_{p}pass" for p in _passes(opts.sceneflow.pass_name, "sceneflow.pass_name")]
                + ["disparity"]
            ],
            right_disparity=True,
            key_folders=1 if variant == "Monkaa" else 3,
            key_name=r"(.+)\.\w+",
        )
        for short, variant in (("monkaa", "Monkaa"), ("driving", "Driving"), ("flyingthings", "FlyingThings3D"))
    },
    "kitti2012-train": _Entry(
        source='torchvision.datasets.Kitti2012Stereo(split="train")',
        layout=_KITTI2012_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_stereo_flow.php?benchmark=stereo",
        open=lambda root, opts: tvd.Kitti2012Stereo(root, split="train", transforms=_keep_both_views),
        required=lambda opts: [f"Kitti2012/training/{d}" for d in ("colored_0", "colored_1", "disp_noc")],
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2012-test": _Entry(
        source='torchvision.datasets.Kitti2012Stereo(split="test")',
        layout=_KITTI2012_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_stereo_flow.php?benchmark=stereo",
        open=lambda root, opts: tvd.Kitti2012Stereo(root, split="test", transforms=_keep_both_views),
        required=lambda opts: [f"Kitti2012/testing/{d}" for d in ("colored_0", "colored_1")],
        has_disparity=False,
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2015-train": _Entry(
        source='torchvision.datasets.Kitti2015Stereo(split="train"), *_10 frames',
        layout=_KITTI2015_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_scene_flow.php?benchmark=stereo",
        open=_kitti2015("train"),
        required=lambda opts: [f"Kitti2015/training/{d}" for d in ("image_2", "image_3", "disp_occ_0")],
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2015-test": _Entry(
        source='torchvision.datasets.Kitti2015Stereo(split="test"), *_10 frames',
        layout=_KITTI2015_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_scene_flow.php?benchmark=stereo",
        open=_kitti2015("test"),
        required=lambda opts: [f"Kitti2015/testing/{d}" for d in ("image_2", "image_3")],
        has_disparity=False,
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
}

# Embedded sets: no files under paths.data.
_EMBEDDED = ("synthetic", "synthetic-val", "motorcycle")


def list_datasets() -> list[str]:
    """Every catalog name, sorted: the sets on disk under ``paths.data`` and the embedded ones."""
    return sorted([*_ENTRIES, *_EMBEDDED])


def has_ground_truth(name: str) -> bool:
    """Whether the set ships disparities (test splits of the benchmarks do not)."""
    _known(name)
    return name in _EMBEDDED or _ENTRIES[name].has_disparity


def _known(name: str) -> None:
    if name not in _ENTRIES and name not in _EMBEDDED:
        raise ValueError(f"Unknown dataset {name!r}; the catalog has: {', '.join(list_datasets())}.")


# --------------------------------------------------------------------------------------------------------------
# Root checks
# --------------------------------------------------------------------------------------------------------------


def describe_dataset(name: str, data_root: str | Path = "<paths.data>") -> str:
    """Where a catalog name comes from and how its root must look: torchvision class, layout, download page."""
    _known(name)
    if name in _EMBEDDED:
        source = "skimage.data.stereo_motorcycle()" if name == "motorcycle" else "stereo_exp.data.synthetic"
        return f"{name}: embedded ({source}); no files under paths.data."
    entry = _ENTRIES[name]
    layout = entry.layout.replace("<paths.data>", str(data_root))
    options = f"Options: {entry.options}\n" if entry.options else ""
    return f"{name}: {entry.source}. Expected layout:\n{layout}\n{options}Download: {entry.download}\nSee {DOCS}."


def _root_error(name: str, data_root: Path, problem: str) -> DatasetRootError:
    problem = problem.rstrip(".") + "."
    return DatasetRootError(
        f"Dataset {name!r} is missing or incomplete under paths.data={str(data_root)!r}: {problem}\n"
        + describe_dataset(name, data_root)
    )


def _pair_key(path: str, entry: _Entry) -> str:
    p = Path(path)
    folders = [q.name for q in p.parents if q.name not in ("left", "right")][: entry.key_folders]
    key = "/".join(reversed(folders))
    if entry.key_name is not None:
        match = re.fullmatch(entry.key_name, p.name)
        key += "/" + (match.group(1) if match else p.name)
    return key


def _check_pairs(name: str, dataset: tvd.VisionDataset, data_root: Path) -> None:
    """Every sample's files must belong to the same scene / frame; companions of disparity files must exist."""
    entry = _ENTRIES[name]
    images, disparities = dataset._images, dataset._disparities
    if not images:
        raise _root_error(name, data_root, "no image pairs found.")
    if len(images) != len(disparities):
        raise _root_error(
            name, data_root, f"{len(images)} image pairs but {len(disparities)} disparity files: some are missing."
        )
    mismatched = []
    for (left, right), (disp_left, disp_right) in zip(images, disparities, strict=True):
        files = [f for f in (left, right, disp_left, disp_right) if f is not None]
        if len({_pair_key(f, entry) for f in files}) > 1:
            mismatched.append(files)
    if mismatched:
        first = "\n    ".join(mismatched[0])
        raise _root_error(
            name,
            data_root,
            f"{len(mismatched)} of {len(images)} samples pair files of different scenes or frames (a file is "
            f"missing from one folder, or a folder holds extra files); the first:\n    {first}",
        )
    if entry.aux is not None:
        needed = {aux for pair in disparities for f in pair if f is not None for aux in entry.aux(f)}
        missing = sorted(str(p) for p in needed if not p.exists())
        if missing:
            shown = "\n    ".join(missing[:5])
            raise _root_error(name, data_root, f"{len(missing)} companion files are missing, e.g.:\n    {shown}")


def _open(name: str, data_root: Path, options: DatasetOptions) -> tvd.VisionDataset:
    """The checked torchvision dataset of a catalog name, or DatasetRootError."""
    entry = _ENTRIES[name]
    if not data_root.is_dir():
        raise _root_error(name, data_root, f"paths.data {str(data_root)!r} is not a folder.")
    missing = [rel for rel in entry.required(options) if not (data_root / rel).is_dir()]
    if missing:
        raise _root_error(name, data_root, "missing folder(s) " + ", ".join(str(data_root / m) for m in missing))
    try:
        dataset = entry.open(data_root, options)
    except (FileNotFoundError, ValueError) as exc:  # torchvision's scans: no files, or left/right counts differ
        raise _root_error(name, data_root, f"{type(exc).__name__}: {exc}".strip()) from exc
    _check_pairs(name, dataset, data_root)
    return dataset


def check_dataset_root(
    name: str, data_root: str | Path, options: DatasetOptions | DictConfig | dict | None = None
) -> int:
    """Fail fast before training: raise DatasetRootError unless ``name`` is complete under ``data_root``.

    Checks the folders, that every sample's files exist and belong together, and the files read beside the
    disparities (Sintel masks, ETH3D masks, FallingThings camera files). Returns the number of samples.
    Embedded sets need no files and return their length.
    """
    _known(name)
    opts = as_schema(options, DatasetOptions)
    if name in _EMBEDDED:
        return len(_build_embedded(name, opts))
    return len(_open(name, Path(data_root), opts)._images)


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


def _rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 copy; decoding happens here, so a truncated file fails here."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _hw(array: np.ndarray) -> str:
    return f"{array.shape[0]}x{array.shape[1]} (HxW)"


def _disparity_and_valid(
    disparity: np.ndarray | None, mask: np.ndarray | None, image: np.ndarray, files: tuple[str, str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(H, W) float32 disparity and its valid mask (dataset mask & finite & > 0); shapes checked against ``image``."""
    if disparity is None:
        return None, None
    disparity = np.array(disparity, dtype=np.float32).reshape(disparity.shape[-2:])  # (1, H, W) -> (H, W)
    if disparity.shape != image.shape[:2]:
        raise ValueError(
            f"disparity {files[1]} is {_hw(disparity)} but its image {files[0]} is {_hw(image)}; expected equal sizes."
        )
    with np.errstate(invalid="ignore"):  # nan > 0 is False, as wanted
        valid = np.isfinite(disparity) & (disparity > 0)
    if mask is not None:
        if mask.shape != disparity.shape:
            raise ValueError(f"the mask of {files[1]} is {_hw(mask)} but the disparity is {_hw(disparity)}.")
        valid &= mask.astype(bool)
    return disparity, valid


class CatalogDataset(Dataset):
    """Raw samples (module docstring) of one catalog name, read by its torchvision class ``source``.

    ``dataset[i]`` reads sample i; ``dataset.load(i, rng=generator)`` does the same with the sample's random
    choices (Middlebury ambient views) drawn from ``generator``, so a resumed run draws the same views.
    """

    def __init__(
        self,
        name: str,
        dataset: tvd.VisionDataset,
        *,
        disparity_scale: float | None = None,
        non_occluded_only: bool = False,
    ) -> None:
        self.name = name
        self.source = dataset
        self._disparity_scale = disparity_scale
        self._non_occluded_only = non_occluded_only

    def __len__(self) -> int:
        return len(self.source._images)

    def __getitem__(self, index: int) -> RawSample:
        return self.load(index)

    def __repr__(self) -> str:
        return f"CatalogDataset({self.name!r}, {len(self)} samples, root={str(self.source.root)!r})"

    def files(self, index: int) -> list[str]:
        """Every file sample ``index`` reads (images, ambient views, disparities, masks, camera files)."""
        entry = _ENTRIES[self.name]
        images = list(self.source._images[index])
        if isinstance(self.source, _Middlebury2014) and self.source.use_ambient_views:
            images += [str(p) for p in self.source.ambient_views(Path(images[1]))]
        disparities = [f for f in self.source._disparities[index] if f is not None]
        aux = [str(a) for f in disparities for a in (entry.aux(f) if entry.aux else [])]
        return images + aux + disparities

    def load(self, index: int, *, rng: np.random.Generator | None = None) -> RawSample:
        """Raw sample ``index``; DatasetFileError names an unreadable file, ValueError mismatched sizes."""
        left_file, right_file = self.source._images[index]  # IndexError for a bad index, as a Sequence should
        disparity_files = self.source._disparities[index]
        if isinstance(self.source, _Middlebury2014):
            self.source.rng = rng
        try:
            with np.errstate(divide="ignore"):  # FallingThings: depth 0 (no surface) -> inf disparity, invalid below
                left_image, right_image, (disparity, disparity_right), (mask, mask_right) = self.source[index]
            left, right = _rgb_array(left_image), _rgb_array(right_image)
        except Exception as exc:  # re-raised with the file named; nothing is swallowed
            raise DatasetFileError(self._unreadable(index, exc)) from exc
        finally:
            if isinstance(self.source, _Middlebury2014):
                self.source.rng = None

        if left.shape != right.shape:
            raise ValueError(
                f"{self.name} sample {index}: left image {left_file} is {_hw(left)} but right image {right_file} "
                f"is {_hw(right)}; a stereo pair needs equal sizes."
            )
        if not _ENTRIES[self.name].right_disparity:
            disparity_right, mask_right = None, None  # e.g. KITTI 2015's disp_occ_1 is frame t+1, not the right view
        if self._disparity_scale is not None:  # InStereo2k
            disparity, disparity_right = self._rescale(disparity), self._rescale(disparity_right)
        if self._non_occluded_only and mask is not None and disparity_files[0] is not None:
            mask = mask & self._non_occluded(disparity_files[0])

        disparity, valid = _disparity_and_valid(disparity, mask, left, (left_file, str(disparity_files[0])))
        disparity_right, valid_right = _disparity_and_valid(
            disparity_right, mask_right, right, (right_file, str(disparity_files[1]))
        )
        return {
            "left": left,
            "right": right,
            "disparity": disparity,
            "valid": valid,
            "disparity_right": disparity_right,
            "valid_right": valid_right,
            "dataset": self.name,
            "index": index,
            "path": str(left_file),
        }

    def _rescale(self, disparity: np.ndarray | None) -> np.ndarray | None:
        """torchvision's PNG / 1024 -> PNG / disparity_scale; ``* 1024`` restores the PNG integers exactly."""
        if disparity is None:
            return None
        return disparity * np.float32(TORCHVISION_INSTEREO2K_DIVISOR) / np.float32(self._disparity_scale)

    @staticmethod
    def _non_occluded(disparity_file: str) -> np.ndarray:
        """ETH3D benchmark "noc" pixels: mask0nocc.png is 255 there (128 occluded, 0 no ground truth)."""
        mask_file = _eth3d_mask(disparity_file)[0]
        try:
            with Image.open(mask_file) as image:
                return np.array(image) == 255
        except Exception as exc:
            raise DatasetFileError(f"cannot read {mask_file}: {type(exc).__name__}: {exc}") from exc

    def _unreadable(self, index: int, exc: Exception) -> str:
        """Message for a failed read: re-read each file of the sample alone to name the one that fails."""
        for path in self.files(index):
            try:
                if path.endswith(".json"):
                    with open(path) as f:
                        json.load(f)
                elif path in self.source._disparities[index]:
                    self.source._read_disparity(path)
                else:
                    with Image.open(path) as image:
                        image.load()
            except Exception as file_exc:
                return (
                    f"{self.name} sample {index}: cannot read {path}: {type(file_exc).__name__}: {file_exc} "
                    "(corrupt, truncated or missing file; re-download it)"
                )
        files = "\n    ".join(self.files(index))
        return f"{self.name} sample {index}: reading failed ({type(exc).__name__}: {exc}); its files:\n    {files}"


def _build_embedded(name: str, options: DatasetOptions) -> Dataset:
    if name == "motorcycle":
        return MotorcycleStereo()
    # SyntheticStereo's samples carry "synthetic" / "synthetic-val" as their dataset name.
    return SyntheticStereo(options.synthetic, split="val" if name == "synthetic-val" else "train")


def build_dataset(
    name: str,
    *,
    data_root: str | Path,
    options: DatasetOptions | DictConfig | dict | None = None,
    require_disparity: bool = True,
) -> Dataset:
    """The raw-sample dataset of catalog name ``name`` (see the module docstring for the sample format).

    ``data_root`` is ``paths.data``; embedded sets ignore it. ``options`` is ``cfg.datasets`` (schema object,
    DictConfig or dict of overrides; None = defaults). Sets without ground truth (the test splits) are refused
    unless ``require_disparity=False`` (prediction / benchmark submission), where disparity and valid are None.
    Raises DatasetRootError (missing or incomplete root) before any sample is read.
    """
    _known(name)
    opts = as_schema(options, DatasetOptions)
    if name in _EMBEDDED:
        return _build_embedded(name, opts)
    entry = _ENTRIES[name]
    if require_disparity and not entry.has_disparity:
        raise ValueError(
            f"Dataset {name!r} has no ground-truth disparity (a benchmark test split): it cannot be used for "
            "training or evaluation. For prediction only, build it with require_disparity=False."
        )
    return CatalogDataset(
        name,
        _open(name, Path(data_root), opts),
        disparity_scale=opts.instereo2k.disparity_scale if name.startswith("instereo2k") else None,
        non_occluded_only=name == "eth3d-train" and opts.eth3d.non_occluded_only,
    )
