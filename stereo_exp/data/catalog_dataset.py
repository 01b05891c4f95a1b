"""``CatalogDataset``: raw samples (see ``stereo_exp.data.catalog``) from one torchvision stereo dataset.

Around torchvision's readers it adds: the right view's disparity where the set has one, the valid mask (the set's
own mask & finite & > 0), InStereo2k's scale and ETH3D's non-occluded pixels (``datasets.*`` options), equal-size
checks, and errors that name the file that cannot be read (``DatasetFileError``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import Dataset

from stereo_exp.data.entries import ENTRIES, eth3d_mask
from stereo_exp.data.torchvision_adapter import (
    INSTEREO2K_DIVISOR,
    disparity_files,
    image_files,
    read_disparity,
    read_views,
    right_view_files,
)

RawSample = dict[str, Any]


class DatasetFileError(OSError):
    """A file of a sample cannot be read (corrupt, truncated, missing); the message names the file."""


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
    """Raw samples (``stereo_exp.data.catalog``) of one catalog name, read by its torchvision class ``source``.

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
        return len(self.source)

    def __getitem__(self, index: int) -> RawSample:
        return self.load(index)

    def __repr__(self) -> str:
        return f"CatalogDataset({self.name!r}, {len(self)} samples, root={str(self.source.root)!r})"

    def files(self, index: int) -> list[str]:
        """Every file sample ``index`` reads (images, ambient views, disparities, masks, camera files)."""
        entry = ENTRIES[self.name]
        left, right = image_files(self.source)[index]
        images = [left, *right_view_files(self.source, right)]
        disparities = [f for f in disparity_files(self.source)[index] if f is not None]
        aux = [str(a) for f in disparities for a in (entry.aux(f) if entry.aux else [])]
        return images + aux + disparities

    def load(self, index: int, *, rng: np.random.Generator | None = None) -> RawSample:
        """Raw sample ``index``; DatasetFileError names an unreadable file, ValueError mismatched sizes."""
        left_file, right_file = image_files(self.source)[index]  # IndexError for a bad index, as a Sequence should
        disparity_file, disparity_right_file = disparity_files(self.source)[index]
        try:
            with np.errstate(divide="ignore"):  # FallingThings: depth 0 (no surface) -> inf disparity, invalid below
                left_image, right_image, (disparity, disparity_right), (mask, mask_right) = read_views(
                    self.source, index, rng
                )
            left, right = _rgb_array(left_image), _rgb_array(right_image)
        except Exception as exc:  # re-raised with the file named; nothing is swallowed
            raise DatasetFileError(self._unreadable(index, exc)) from exc

        if left.shape != right.shape:
            raise ValueError(
                f"{self.name} sample {index}: left image {left_file} is {_hw(left)} but right image {right_file} "
                f"is {_hw(right)}; a stereo pair needs equal sizes."
            )
        if not ENTRIES[self.name].right_disparity:
            disparity_right, mask_right = None, None  # e.g. KITTI 2015's disp_occ_1 is frame t+1, not the right view
        if self._disparity_scale is not None:  # InStereo2k
            disparity, disparity_right = self._rescale(disparity), self._rescale(disparity_right)
        if self._non_occluded_only and mask is not None and disparity_file is not None:
            mask = mask & self._non_occluded(disparity_file)

        disparity, valid = _disparity_and_valid(disparity, mask, left, (left_file, str(disparity_file)))
        disparity_right, valid_right = _disparity_and_valid(
            disparity_right, mask_right, right, (right_file, str(disparity_right_file))
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
        return disparity * np.float32(INSTEREO2K_DIVISOR) / np.float32(self._disparity_scale)

    @staticmethod
    def _non_occluded(disparity_file: str) -> np.ndarray:
        """ETH3D benchmark "noc" pixels: mask0nocc.png is 255 there (128 occluded, 0 no ground truth)."""
        mask_file = eth3d_mask(disparity_file)[0]
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
                elif path in disparity_files(self.source)[index]:
                    read_disparity(self.source, path)
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
