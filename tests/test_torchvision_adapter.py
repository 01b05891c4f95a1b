"""One test per behaviour of torchvision's private stereo-dataset internals that the catalog relies on.

Each test names the behaviour; ``stereo_exp/data/torchvision_adapter.py`` is the only module that uses it. When a
torchvision release changes one, the test of that behaviour fails, and the function of the same name is the one
place to mend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from stereo_exp.data.torchvision_adapter import (
    INSTEREO2K_DIVISOR,
    Middlebury2014Stereo,
    disparity_files,
    image_files,
    keep_both_views,
    read_disparity,
    read_views,
    right_view_files,
    set_files,
)
from stereo_exp.testing.dataset_replicas import ReplicaSample, write_instereo2k, write_middlebury2014


@pytest.fixture
def middlebury(tmp_path: Path) -> tuple[Path, list[ReplicaSample]]:
    """Two Middlebury 2014 training scenes (perfect calibration): right disparities and ambient views."""
    return tmp_path, write_middlebury2014(tmp_path, split="train", calibrations=("perfect",))


def finite_equal(decoded: np.ndarray, expected: np.ndarray) -> bool:
    """Equal where the written disparity is finite (Middlebury's inf = no ground truth)."""
    finite = np.isfinite(expected)
    return decoded.shape == (1, *expected.shape) and np.array_equal(decoded[0][finite], expected[finite])


def test_image_files_and_disparity_files_list_every_sample_in_reading_order(middlebury):
    root, written = middlebury
    dataset = tvd.Middlebury2014Stereo(root, split="train", calibration="perfect")
    folders = [sample.left_path.parent for sample in written]
    assert image_files(dataset) == [(str(f / "im0.png"), str(f / "im1.png")) for f in folders]
    assert disparity_files(dataset) == [(str(f / "disp0.pfm"), str(f / "disp1.pfm")) for f in folders]
    assert len(dataset) == len(written)
    left = np.array(dataset[1][0])
    np.testing.assert_array_equal(left, written[1].left)  # sample 1 is the second listed pair


def test_set_files_decides_what_len_and_reading_see(middlebury):
    root, written = middlebury
    dataset = tvd.Middlebury2014Stereo(root, split="train", calibration="perfect")
    set_files(dataset, image_files(dataset)[1:], disparity_files(dataset)[1:])
    assert len(dataset) == 1
    np.testing.assert_array_equal(np.array(dataset[0][0]), written[1].left)


def test_the_transforms_hook_sees_both_views_disparities_and_masks(middlebury):
    root, written = middlebury
    dataset = tvd.Middlebury2014Stereo(root, split="train", calibration="perfect", transforms=keep_both_views)
    left, right, (disparity, disparity_right), (mask, mask_right) = read_views(dataset, 0)
    np.testing.assert_array_equal(np.array(left), written[0].left)
    np.testing.assert_array_equal(np.array(right), written[0].right)
    assert finite_equal(disparity, written[0].disparity)
    assert finite_equal(disparity_right, written[0].disparity_right)  # torchvision alone returns the left one only
    assert mask.shape == mask_right.shape == written[0].disparity.shape


def test_read_disparity_decodes_one_file_with_the_datasets_reader(middlebury):
    root, written = middlebury
    dataset = tvd.Middlebury2014Stereo(root, split="train", calibration="perfect")
    disparity, _ = read_disparity(dataset, str(written[0].left_path.parent / "disp1.pfm"))
    assert finite_equal(disparity, written[0].disparity_right)


def test_middlebury_reads_its_right_view_through_read_img_so_the_generator_draws_it(middlebury):
    root, written = middlebury
    dataset = Middlebury2014Stereo(
        root, split="train", calibration="perfect", use_ambient_views=True, transforms=keep_both_views
    )
    views = written[0].extras["right_views"]  # im1, im1E, im1L

    def drawn(seed: int) -> int:
        right = np.array(read_views(dataset, 0, np.random.default_rng(seed))[1])
        return next(i for i, view in enumerate(views) if np.array_equal(right, view))

    draws = [drawn(seed) for seed in range(12)]
    assert draws == [drawn(seed) for seed in range(12)] and set(draws) == {0, 1, 2}
    assert dataset.rng is None  # reset after each read: torchvision's own draw otherwise
    right = image_files(dataset)[0][1]
    assert right_view_files(dataset, right) == [
        right,
        *(str(Path(right).with_name(n)) for n in ("im1E.png", "im1L.png")),
    ]
    dataset.use_ambient_views = False  # the attribute torchvision's constructor sets
    assert right_view_files(dataset, right) == [right]


def test_instereo2k_reader_divides_the_png_by_1024(tmp_path):
    written = write_instereo2k(tmp_path)[0]
    disparity_file = written.left_path.parent / "left_disp.png"
    values = np.array(Image.open(disparity_file)).astype(np.float32)
    disparity, _ = read_disparity(tvd.InStereo2k(tmp_path), str(disparity_file))
    np.testing.assert_array_equal(disparity[0], values / np.float32(INSTEREO2K_DIVISOR))  # pytorch/vision#7129
