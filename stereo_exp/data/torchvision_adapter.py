"""Every use the catalog makes of torchvision's private stereo-dataset internals, one named function each.

torchvision's stereo classes (``torchvision/datasets/_stereo_matching.py``) keep each sample's files in the lists
``_images`` (left, right) and ``_disparities`` (left, right or None) and read files in ``_read_img`` and
``_read_disparity``; none of it is public. The catalog needs it to correct the file lists (KITTI 2015 frames,
FlyingThings3D subsets), to check the pairing before training, to name a file that cannot be read, to keep the
right view's disparity and to draw Middlebury's ambient views reproducibly. Nothing else in the package touches a
private attribute of torchvision: tests/test_torchvision_adapter.py has one test per behaviour relied on here, so a
torchvision release that changes one fails the test named after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torchvision.datasets as tvd
from PIL import Image

# torchvision's InStereo2k reader returns PNG value / 1024 (pytorch/vision#7129); the catalog rescales from it.
INSTEREO2K_DIVISOR = 1024.0

ImagePair = tuple[str, str]
DisparityPair = tuple[str | None, str | None]
Views = tuple[Image.Image, Image.Image, tuple, tuple]  # left, right, (disparity, right's), (mask, right's)


def image_files(dataset: tvd.VisionDataset) -> list[ImagePair]:
    """(left, right) image files of every sample, in sample order."""
    return dataset._images


def disparity_files(dataset: tvd.VisionDataset) -> list[DisparityPair]:
    """(left, right) disparity files of every sample, in sample order; None where the set has none (test splits)."""
    return dataset._disparities


def set_files(dataset: tvd.VisionDataset, images: list[ImagePair], disparities: list[DisparityPair]) -> None:
    """Replace the dataset's file lists: ``len`` and reading follow them (the catalog's corrections)."""
    dataset._images = images
    dataset._disparities = disparities


def keep_both_views(images: tuple, disparities: tuple, masks: tuple) -> tuple:
    """The ``transforms=`` hook to open every catalog dataset with: hands the right view's disparity through.

    ``__getitem__`` passes both views' disparities and masks to this callable but returns only element 0 of each;
    packing the pairs into element 0 keeps both. Module-level so that DataLoader workers can pickle it.
    """
    return images, (disparities, None), (masks, None)


def read_views(dataset: tvd.VisionDataset, index: int, rng: np.random.Generator | None = None) -> Views:
    """Sample ``index`` of a dataset opened with ``transforms=keep_both_views``: left and right PIL images, the
    (left, right) disparities as (1, H, W) arrays or None, the (left, right) masks or None. ``rng`` draws
    Middlebury's ambient view (``Middlebury2014Stereo``); other sets have no random choice."""
    middlebury = isinstance(dataset, Middlebury2014Stereo)
    if middlebury:
        dataset.rng = rng
    try:
        # Always 4 items: with keep_both_views the masks are a tuple, never None (torchvision drops a None mask).
        left, right, disparities, masks = dataset[index]
    finally:
        if middlebury:
            dataset.rng = None
    return left, right, disparities, masks


def read_disparity(dataset: tvd.VisionDataset, path: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One disparity file decoded by the dataset's own reader: ((1, H, W) disparity, mask or None)."""
    return dataset._read_disparity(path)


def right_view_files(dataset: tvd.VisionDataset, right: str) -> list[str]:
    """Every file the right view of a sample may be read from: Middlebury's ambient views when they are used."""
    if isinstance(dataset, Middlebury2014Stereo) and dataset.use_ambient_views:
        return [right, *map(str, dataset.ambient_views(Path(right)))]
    return [right]


class Middlebury2014Stereo(tvd.Middlebury2014Stereo):
    """torchvision's Middlebury 2014 reader whose ambient-view draw can come from the caller's generator.

    torchvision draws the right view (im1E / im1L / im1, uniformly among those present) from Python's global
    ``random`` in ``_read_img``: the draw then depends on whatever else used that stream and on DataLoader worker
    seeding, so a resumed run draws differently. ``read_views(..., rng=)`` sets ``rng`` for one read (same
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
