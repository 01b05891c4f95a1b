"""The catalog's table: each dataset name -> its torchvision class, options, expected layout and download page.

``ENTRIES`` holds the sets read from files under ``paths.data``, ``EMBEDDED`` the ones that need no files. Each
entry opens its torchvision class with the adapter's ``keep_both_views`` hook and makes the catalog's corrections of
the file lists (KITTI 2015 keeps the ``*_10`` frames, FlyingThings3D's TRAIN / TEST subset) through
``stereo_exp.data.torchvision_adapter``. What a root must contain is checked in ``stereo_exp.data.checks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torchvision.datasets as tvd
from torch.utils.data import Dataset

from stereo_exp.data.embedded import MotorcycleStereo
from stereo_exp.data.options import (
    Calibration,
    DatasetOptions,
    FallingThingsVariant,
    FlyingThingsSubset,
    RenderPass,
)
from stereo_exp.data.synthetic import SyntheticStereo
from stereo_exp.data.torchvision_adapter import (
    Middlebury2014Stereo,
    disparity_files,
    image_files,
    keep_both_views,
    set_files,
)

log = logging.getLogger(__name__)

DOCS = "docs/DATASETS.md"

Opener = Callable[[Path, DatasetOptions], tvd.VisionDataset]


@dataclass(frozen=True)
class Entry:
    """How one catalog name maps onto a torchvision class and what its root must look like."""

    source: str  # torchvision class and arguments, for messages and docs
    layout: str  # expected layout under paths.data (message text)
    download: str  # official download page
    open: Opener  # builds the torchvision dataset (transforms=keep_both_views)
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
        return Middlebury2014Stereo(
            root, split=split, calibration=calibration, use_ambient_views=bool(ambient), transforms=keep_both_views
        )

    return open_


def _kitti2015(split: str) -> Opener:
    def open_(root: Path, opts: DatasetOptions) -> tvd.VisionDataset:
        dataset = tvd.Kitti2015Stereo(root, split=split, transforms=keep_both_views)
        # image_2 / image_3 hold frames t (*_10) and t+1 (*_11); ground truth exists for *_10 only, and torchvision
        # pairs the sorted lists by position (pytorch/vision#7128). Keep *_10, as the benchmark does.
        kept = [pair for pair in image_files(dataset) if Path(pair[0]).name.endswith("_10.png")]
        dropped = len(image_files(dataset)) - len(kept)
        if dropped:
            log.info("kitti2015-%s: %d *_11.png frames (t+1, no ground truth) left out", split, dropped)
        # The training split lists disparities of *_10 only; the test split lists (None, None) per image pair.
        set_files(dataset, kept, disparity_files(dataset) if split == "train" else [(None, None)] * len(kept))
        return dataset

    return open_


def _sceneflow(variant: str) -> Opener:
    def open_(root: Path, opts: DatasetOptions) -> tvd.VisionDataset:
        pass_name = _enum(opts.sceneflow.pass_name, RenderPass, "sceneflow.pass_name")
        dataset = tvd.SceneFlowStereo(root, variant=variant, pass_name=pass_name, transforms=keep_both_views)
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
    keep = [Path(left).relative_to(base).parts[1] == subset.upper() for left, _ in image_files(dataset)]
    set_files(
        dataset,
        [pair for pair, k in zip(image_files(dataset), keep, strict=True) if k],
        [pair for pair, k in zip(disparity_files(dataset), keep, strict=True) if k],
    )
    dropped = len(keep) - sum(keep)
    log.info("sceneflow-flyingthings: %d %s pairs kept, %d of the other subset left out", sum(keep), subset, dropped)


def _sintel_masks(disparity_path: str) -> list[Path]:
    path = Path(disparity_path)  # <root>/Sintel/training/disparities/<scene>/<frame>.png
    training = path.parent.parent.parent
    return [training / folder / path.parent.name / path.name for folder in ("occlusions", "outofframe")]


def eth3d_mask(disparity_path: str) -> list[Path]:
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


ENTRIES: dict[str, Entry] = {
    "crestereo": Entry(
        source="torchvision.datasets.CREStereo",
        layout=_CRESTEREO_LAYOUT,
        download="https://github.com/megvii-research/CREStereo (dataset_download.sh)",
        open=lambda root, opts: tvd.CREStereo(root, transforms=keep_both_views),
        required=lambda opts: [f"CREStereo/{d}" for d in ("hole", "reflective", "shapenet", "tree")],
        right_disparity=True,
        key_name=r"(.+)_(?:left|right)(?:\.disp)?\.\w+",
    ),
    "eth3d-train": Entry(
        source='torchvision.datasets.ETH3DStereo(split="train")',
        layout=_ETH3D_LAYOUT,
        download="https://www.eth3d.net/datasets (low-res two-view)",
        open=lambda root, opts: tvd.ETH3DStereo(root, split="train", transforms=keep_both_views),
        options="datasets.eth3d.non_occluded_only",
        required=lambda opts: ["ETH3D/two_view_training", "ETH3D/two_view_training_gt"],
        aux=eth3d_mask,
    ),
    "eth3d-test": Entry(
        source='torchvision.datasets.ETH3DStereo(split="test")',
        layout=_ETH3D_LAYOUT,
        download="https://www.eth3d.net/datasets (low-res two-view)",
        open=lambda root, opts: tvd.ETH3DStereo(root, split="test", transforms=keep_both_views),
        required=lambda opts: ["ETH3D/two_view_test"],
        has_disparity=False,
    ),
    "middlebury2014-train": Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="train")',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/data/scenes2014/",
        open=_middlebury("train"),
        options="datasets.middlebury2014.train.calibration (perfect | imperfect | both), .use_ambient_views",
        required=lambda opts: ["Middlebury2014/train"],
        right_disparity=True,
    ),
    "middlebury2014-other": Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="additional")',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/data/scenes2014/",
        open=_middlebury("additional"),
        options="datasets.middlebury2014.other.calibration (perfect | imperfect | both), .use_ambient_views",
        required=lambda opts: ["Middlebury2014/additional"],
        right_disparity=True,
    ),
    "middlebury2014-test": Entry(
        source='torchvision.datasets.Middlebury2014Stereo(split="test", calibration=None)',
        layout=_MIDDLEBURY_LAYOUT,
        download="https://vision.middlebury.edu/stereo/submit3/ (MiddEval3-data-F.zip, testF)",
        open=_middlebury("test"),
        required=lambda opts: ["Middlebury2014/test"],
        has_disparity=False,
    ),
    "instereo2k": Entry(
        source='torchvision.datasets.InStereo2k(split="train")',
        layout=_INSTEREO2K_LAYOUT,
        download="https://github.com/YuhuaXu/StereoDataset",
        open=lambda root, opts: tvd.InStereo2k(root, split="train", transforms=keep_both_views),
        options="datasets.instereo2k.disparity_scale",
        required=lambda opts: ["InStereo2k/train"],
        right_disparity=True,
    ),
    "instereo2k-test": Entry(
        source='torchvision.datasets.InStereo2k(split="test")',
        layout=_INSTEREO2K_LAYOUT,
        download="https://github.com/YuhuaXu/StereoDataset",
        open=lambda root, opts: tvd.InStereo2k(root, split="test", transforms=keep_both_views),
        options="datasets.instereo2k.disparity_scale",
        required=lambda opts: ["InStereo2k/test"],
        right_disparity=True,
    ),
    "fallingthings": Entry(
        source="torchvision.datasets.FallingThingsStereo",
        layout=_FALLINGTHINGS_LAYOUT,
        download="https://research.nvidia.com/publication/2018-06_falling-things-synthetic-dataset-3d-object-detection-and-pose-estimation",
        open=lambda root, opts: tvd.FallingThingsStereo(
            root,
            variant=_enum(opts.fallingthings.variant, FallingThingsVariant, "fallingthings.variant"),
            transforms=keep_both_views,
        ),
        required=lambda opts: [f"FallingThings/{v}" for v in _fallingthings_variants(opts)],
        right_disparity=True,
        key_folders=2,
        key_name=r"(.+?)\.(?:left|right)(?:\.depth)?\.\w+",
        aux=_fallingthings_camera,
        options="datasets.fallingthings.variant (single | mixed | both)",
    ),
    "carla-highres": Entry(
        source="torchvision.datasets.CarlaStereo",
        layout=_CARLA_LAYOUT,
        download="https://github.com/gengshan-y/high-res-stereo (HR-VS data set)",
        open=lambda root, opts: tvd.CarlaStereo(root, transforms=keep_both_views),
        required=lambda opts: ["carla-highres/trainingF"],
        right_disparity=True,
    ),
    "sintel": Entry(
        source="torchvision.datasets.SintelStereo",
        layout=_SINTEL_LAYOUT,
        download="http://sintel.is.tue.mpg.de/stereo",
        open=lambda root, opts: tvd.SintelStereo(
            root, pass_name=_enum(opts.sintel.pass_name, RenderPass, "sintel.pass_name"), transforms=keep_both_views
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
        f"sceneflow-{short}": Entry(
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
    "kitti2012-train": Entry(
        source='torchvision.datasets.Kitti2012Stereo(split="train")',
        layout=_KITTI2012_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_stereo_flow.php?benchmark=stereo",
        open=lambda root, opts: tvd.Kitti2012Stereo(root, split="train", transforms=keep_both_views),
        required=lambda opts: [f"Kitti2012/training/{d}" for d in ("colored_0", "colored_1", "disp_noc")],
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2012-test": Entry(
        source='torchvision.datasets.Kitti2012Stereo(split="test")',
        layout=_KITTI2012_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_stereo_flow.php?benchmark=stereo",
        open=lambda root, opts: tvd.Kitti2012Stereo(root, split="test", transforms=keep_both_views),
        required=lambda opts: [f"Kitti2012/testing/{d}" for d in ("colored_0", "colored_1")],
        has_disparity=False,
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2015-train": Entry(
        source='torchvision.datasets.Kitti2015Stereo(split="train"), *_10 frames',
        layout=_KITTI2015_LAYOUT,
        download="https://www.cvlibs.net/datasets/kitti/eval_scene_flow.php?benchmark=stereo",
        open=_kitti2015("train"),
        required=lambda opts: [f"Kitti2015/training/{d}" for d in ("image_2", "image_3", "disp_occ_0")],
        key_folders=0,
        key_name=r"(.+)\.png",
    ),
    "kitti2015-test": Entry(
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

# Embedded sets: no files under paths.data (open_embedded).
EMBEDDED = ("synthetic", "synthetic-val", "motorcycle")


def list_datasets() -> list[str]:
    """Every catalog name, sorted: the sets on disk under ``paths.data`` and the embedded ones."""
    return sorted([*ENTRIES, *EMBEDDED])


def check_name(name: str) -> None:
    """ValueError listing the catalog unless ``name`` is in it."""
    if name not in ENTRIES and name not in EMBEDDED:
        raise ValueError(f"Unknown dataset {name!r}; the catalog has: {', '.join(list_datasets())}.")


def describe_dataset(name: str, data_root: str | Path = "<paths.data>") -> str:
    """Where a catalog name comes from and how its root must look: torchvision class, layout, download page."""
    check_name(name)
    if name in EMBEDDED:
        source = "skimage.data.stereo_motorcycle()" if name == "motorcycle" else "stereo_exp.data.synthetic"
        return f"{name}: embedded ({source}); no files under paths.data."
    entry = ENTRIES[name]
    layout = entry.layout.replace("<paths.data>", str(data_root))
    options = f"Options: {entry.options}\n" if entry.options else ""
    return f"{name}: {entry.source}. Expected layout:\n{layout}\n{options}Download: {entry.download}\nSee {DOCS}."


def open_embedded(name: str, options: DatasetOptions) -> Dataset:
    """The dataset of an embedded name (``EMBEDDED``): raw samples made in memory, no files read."""
    if name == "motorcycle":
        return MotorcycleStereo()
    # SyntheticStereo's samples carry "synthetic" / "synthetic-val" as their dataset name.
    return SyntheticStereo(options.synthetic, split="val" if name == "synthetic-val" else "train")
