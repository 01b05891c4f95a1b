"""The Middlebury 2014 motorcycle pair that scikit-image ships, as a one-sample dataset (catalog name motorcycle).

``skimage.data.stereo_motorcycle()`` is a real, offline pair: the Motorcycle scene of Middlebury 2014, both
views at a quarter of the full resolution (500 x 741), with the left view's ground-truth disparity (7.2 to
59.9 px). Pixels without ground truth hold +inf (its docstring says NaN; the file holds +inf). It is the
embedded default's validation sample: a real capture, so a model trained on synthetic scenes meets real texture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from torch.utils.data import Dataset

NAME = "motorcycle"


def _source_path() -> str:
    """The bundled left image's file, for messages (scikit-image keeps it beside ``skimage.data``)."""
    path = Path(skimage.data.__file__).parent / "motorcycle_left.png"
    return str(path) if path.exists() else "skimage.data.stereo_motorcycle()"


class MotorcycleStereo(Dataset):
    """One raw sample (see ``stereo_exp.data.catalog``): left/right (500, 741, 3) uint8, left disparity only."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in (0, -1):
            raise IndexError(f"{NAME} has a single sample (index 0); got index {index}.")
        left, right, disparity = skimage.data.stereo_motorcycle()
        disparity = np.array(disparity, dtype=np.float32)  # (H, W) px, +inf where unknown
        return {
            "left": np.array(left, dtype=np.uint8),
            "right": np.array(right, dtype=np.uint8),
            "disparity": disparity,
            "valid": np.isfinite(disparity) & (disparity > 0),
            "disparity_right": None,
            "valid_right": None,
            "dataset": NAME,
            "index": 0,
            "path": _source_path(),
        }
