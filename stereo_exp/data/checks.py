"""Checks of dataset roots, made before a run creates, writes or downloads anything.

``check_dataset_root`` fails fast on a missing or incomplete root: missing folders, files paired across folders by
sort order only (pytorch/vision#7128), missing masks or camera files; every message shows the expected layout
under ``paths.data`` and the official download page (``describe_dataset``). ``check_datasets`` checks all the sets
a run names, its errors prefixed with the config key that names them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torchvision.datasets as tvd

from stereo_exp.data.entries import EMBEDDED, ENTRIES, Entry, check_name, describe_dataset, open_embedded
from stereo_exp.data.options import DatasetOptions
from stereo_exp.data.torchvision_adapter import disparity_files, image_files


class DatasetRootError(FileNotFoundError):
    """A dataset root is missing or incomplete; the message shows the expected layout and the download page."""


def _root_error(name: str, data_root: Path, problem: str) -> DatasetRootError:
    problem = problem.rstrip(".") + "."
    return DatasetRootError(
        f"Dataset {name!r} is missing or incomplete under paths.data={str(data_root)!r}: {problem}\n"
        + describe_dataset(name, data_root)
    )


def _pair_key(path: str, entry: Entry) -> str:
    p = Path(path)
    folders = [q.name for q in p.parents if q.name not in ("left", "right")][: entry.key_folders]
    key = "/".join(reversed(folders))
    if entry.key_name is not None:
        match = re.fullmatch(entry.key_name, p.name)
        key += "/" + (match.group(1) if match else p.name)
    return key


def _check_pairs(name: str, dataset: tvd.VisionDataset, data_root: Path) -> None:
    """Every sample's files must belong to the same scene / frame; companions of disparity files must exist."""
    entry = ENTRIES[name]
    images, disparities = image_files(dataset), disparity_files(dataset)
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


def open_checked(name: str, data_root: Path, options: DatasetOptions) -> tvd.VisionDataset:
    """The checked torchvision dataset of an on-disk catalog name (``ENTRIES``), or DatasetRootError."""
    entry = ENTRIES[name]
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


def check_dataset_root(name: str, data_root: str | Path, options: DatasetOptions | None = None) -> int:
    """Fail fast before training: raise DatasetRootError unless ``name`` is complete under ``data_root``.

    Checks the folders, that every sample's files exist and belong together, and the files read beside the
    disparities (Sintel masks, ETH3D masks, FallingThings camera files). Returns the number of samples.
    Embedded sets need no files and return their length. ``options``: ``cfg.datasets`` (None: the defaults).
    """
    check_name(name)
    options = DatasetOptions() if options is None else options
    if name in EMBEDDED:
        return len(open_embedded(name, options))
    return len(open_checked(name, Path(data_root), options))


def check_datasets(
    names: Sequence[str],
    *,
    key: str,
    data_root: str | Path,
    options: DatasetOptions | None = None,
    require_disparity: bool = True,
) -> dict[str, int]:
    """Every dataset in ``names`` is a catalog name, complete under ``data_root`` (folders, file pairs, companion
    files; see ``check_dataset_root``), has samples and, with ``require_disparity``, ground truth. Returns the
    sample count of each. Errors start with ``key`` (e.g. ``mix.datasets``), the setting that names the dataset, and
    name every dataset at fault at once (a mix of six datasets with three missing is one error, not three runs)."""
    counts: dict[str, int] = {}
    errors: list[ValueError | FileNotFoundError] = []
    for name in names:
        try:
            check_name(name)
            if require_disparity and name in ENTRIES and not ENTRIES[name].has_disparity:
                raise ValueError(
                    f"Dataset {name!r} has no ground-truth disparity (a benchmark test split); training and "
                    "validation need one."
                )
            counts[name] = check_dataset_root(name, data_root, options)
            if counts[name] == 0:
                raise ValueError(f"dataset {name!r} under paths.data={str(data_root)!r} has no samples.")
        except (ValueError, FileNotFoundError) as error:
            errors.append(error)
    if len(errors) == 1:
        raise type(errors[0])(f"{key}: {errors[0]}") from errors[0]
    if errors:
        kinds = {type(error) for error in errors}
        kind = kinds.pop() if len(kinds) == 1 else ValueError  # DatasetRootError when every dataset's root is at fault
        details = "\n\n".join(str(error) for error in errors)
        root = "" if Path(data_root).is_dir() else f" (paths.data={str(data_root)!r} is not a folder)"
        raise kind(f"{key}: {len(errors)} of {len(names)} datasets cannot be used{root}:\n{details}")
    return counts
