"""Checks of the datasets a run names, made before the run creates, writes or downloads anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stereo_exp.data.catalog import check_dataset_root, has_ground_truth


def check_datasets(
    names: Sequence[str], *, key: str, data_root: str | Path, options: Any = None, require_disparity: bool = True
) -> dict[str, int]:
    """Every dataset in ``names`` is a catalog name, complete under ``data_root`` (folders, file pairs, companion
    files; see ``check_dataset_root``), has samples and, with ``require_disparity``, ground truth. Returns the
    sample count of each. Errors start with ``key`` (e.g. ``mix.datasets``), the setting that names the dataset."""
    counts = {}
    for name in names:
        try:
            if require_disparity and not has_ground_truth(name):
                raise ValueError(
                    f"Dataset {name!r} has no ground-truth disparity (a benchmark test split); training and "
                    "validation need one."
                )
            count = check_dataset_root(name, data_root, options)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"{key}: {error}") from error
        if count == 0:
            raise ValueError(f"{key}: dataset {name!r} under paths.data={str(data_root)!r} has no samples.")
        counts[name] = count
    return counts
