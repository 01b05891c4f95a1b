"""Dataset catalog: the dataset names of the published recipes -> torchvision.datasets' stereo classes.

The file readers stay torchvision's. Around them the catalog adds what a training run needs, one module per job:

- ``entries.py``: the table of names -> torchvision class, options, expected layout, download page; corrections of
  torchvision's file lists, each one an option or a documented rule: KITTI 2015 keeps the ``*_10`` frames only
  and does not take ``disp_occ_1`` (frame t+1) for the right view; FlyingThings3D TRAIN / TEST;
- ``checks.py``: checks before training (``check_dataset_root``): a missing or incomplete root, files paired across
  folders by sort order only (pytorch/vision#7128), missing masks or camera files; every message shows the
  expected layout under ``paths.data`` and the official download page;
- ``catalog_dataset.py``: one raw-sample format for every set (below), including the right view's disparity where
  the data has it; InStereo2k's scale (pytorch/vision#7129); errors that name the file: a corrupt or truncated
  image / PFM / PNG, left and right views of different sizes;
- ``torchvision_adapter.py``: every access to torchvision's private attributes (file lists, readers, the
  ``transforms=`` hook that sees both views' disparities, a reproducible Middlebury ambient-view draw).

This module is the public face: ``build_dataset``, ``check_dataset_root``, ``describe_dataset``, ``list_datasets``
and the two errors.

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

from pathlib import Path

from torch.utils.data import Dataset

from stereo_exp.data.catalog_dataset import CatalogDataset, DatasetFileError, RawSample
from stereo_exp.data.checks import DatasetRootError, check_dataset_root, open_checked
from stereo_exp.data.entries import EMBEDDED, ENTRIES, check_name, describe_dataset, list_datasets, open_embedded
from stereo_exp.data.options import DatasetOptions

__all__ = [
    "CatalogDataset",
    "DatasetFileError",
    "DatasetRootError",
    "RawSample",
    "build_dataset",
    "check_dataset_root",
    "describe_dataset",
    "list_datasets",
]


def build_dataset(
    name: str,
    *,
    data_root: str | Path,
    options: DatasetOptions | None = None,
    require_disparity: bool = True,
) -> Dataset:
    """The raw-sample dataset of catalog name ``name`` (see the module docstring for the sample format).

    ``data_root`` is ``paths.data``; embedded sets ignore it. ``options`` is ``cfg.datasets`` (None: the defaults).
    Sets without ground truth (the test splits) are refused unless ``require_disparity=False`` (prediction /
    benchmark submission), where disparity and valid are None. Raises DatasetRootError (missing or incomplete
    root) before any sample is read.
    """
    check_name(name)
    options = DatasetOptions() if options is None else options
    if name in EMBEDDED:
        return open_embedded(name, options)
    if require_disparity and not ENTRIES[name].has_disparity:
        raise ValueError(
            f"Dataset {name!r} has no ground-truth disparity (a benchmark test split): it cannot be used for "
            "training or evaluation. For prediction only, build it with require_disparity=False."
        )
    return CatalogDataset(
        name,
        open_checked(name, Path(data_root), options),
        disparity_scale=options.instereo2k.disparity_scale if name.startswith("instereo2k") else None,
        non_occluded_only=name == "eth3d-train" and options.eth3d.non_occluded_only,
    )
