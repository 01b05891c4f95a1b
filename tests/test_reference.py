"""docs/REFERENCE.md: the published evaluation protocol's ground-truth resize (eval.gt_resize) on the real motorcycle
pair, and the table's evidence (every test and config key it names exists).

torchvision's reference resizes the evaluation ground truth with ``torchvision.transforms.functional.resize``: the
disparity map (0 at unknown pixels) bilinearly, times the width ratio, the valid mask nearest, then keeps pixels whose
resized disparity is > 0. In 2022, when the published tables were made, ``F.resize`` did not antialias tensors; since
torchvision 0.17 it does by default. The expectations call ``F.resize`` itself; on the official layout, they start
from what torchvision's ``Middlebury2014Stereo`` reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from stereo_exp.data import build_eval_dataset
from stereo_exp.data.embedded import MotorcycleStereo
from stereo_exp.data.transforms import EvalTransform
from stereo_exp.testing.dataset_replicas import write_motorcycle_middlebury2014
from tests.test_config import default_keys

REFERENCE_MD = Path(__file__).parents[1] / "docs" / "REFERENCE.md"

SIZE = (384, 512)  # the published tables' evaluation size


@pytest.fixture(scope="module")
def motorcycle() -> dict:
    return MotorcycleStereo()[0]  # 500 x 741, +inf where unknown


def _reference_ground_truth(zero_filled: np.ndarray, known: np.ndarray, antialias: bool) -> tuple[Tensor, Tensor]:
    """(H, W) disparity with 0 at unknown pixels and its known mask, resized as the reference does."""
    disparity = torch.from_numpy(zero_filled.astype(np.float32)).reshape(1, *known.shape)
    resized = TF.resize(disparity, list(SIZE), InterpolationMode.BILINEAR, antialias=antialias) * (SIZE[1] / 741)
    mask = TF.resize(torch.from_numpy(known)[None], list(SIZE), InterpolationMode.NEAREST)
    return resized, mask & (resized > 0)


def _reference_image(image: Any) -> Tensor:
    """Every mode resizes the images alike: bilinear, no antialias (the reference hard-codes it), then to [-1, 1]."""
    resized = TF.resize(TF.to_tensor(image), list(SIZE), InterpolationMode.BILINEAR, antialias=False)
    return (resized - 0.5) / 0.5


def _assert_ground_truth_equal(sample: dict, disparity: Tensor, valid: Tensor) -> None:
    assert torch.equal(sample["valid"], valid)
    assert torch.allclose(sample["disparity"], torch.where(valid, disparity, 0.0), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("gt_resize", "antialias"), [("reference_2022", False), ("reference_today", True)])
def test_reference_gt_resize_is_torchvision_resize_of_the_zero_filled_map(motorcycle, gt_resize, antialias):
    sample = EvalTransform(SIZE, gt_resize)(motorcycle)
    known = np.isfinite(motorcycle["disparity"])
    _assert_ground_truth_equal(
        sample, *_reference_ground_truth(np.where(known, motorcycle["disparity"], 0), known, antialias)
    )
    assert torch.allclose(sample["left"], _reference_image(motorcycle["left"]), atol=1e-6)


def test_reference_today_on_the_official_layout_is_torchvisions_reader_then_resize(tmp_path):
    """The path the side-by-side table of docs/REFERENCE.md takes (files, catalog, transform) against torchvision's
    own reader of the same files, resized as the reference's evaluation does with today's torchvision."""
    write_motorcycle_middlebury2014(tmp_path)
    dataset = build_eval_dataset("middlebury2014-train", data_root=tmp_path, size=SIZE, gt_resize="reference_today")
    assert len(dataset) == 1
    sample = dataset[0]
    left, right, disparity, known = tvd.Middlebury2014Stereo(tmp_path, split="train", calibration="perfect")[0]
    _assert_ground_truth_equal(sample, *_reference_ground_truth(disparity, known, antialias=True))
    assert torch.allclose(sample["left"], _reference_image(left), atol=1e-6)
    assert torch.allclose(sample["right"], _reference_image(right), atol=1e-6)


def test_only_the_reference_modes_bleed_unknown_zeros_into_valid_pixels(motorcycle):
    """The scene's nearest surface is at 7.2 px (x 512/741 after the resize): a smaller valid value is zeros blended
    in from a neighbouring hole. Our default keeps holes out of the blend; the reference's resize does not."""
    floor = float(np.nanmin(np.where(np.isfinite(motorcycle["disparity"]), motorcycle["disparity"], np.nan)))
    floor *= SIZE[1] / 741
    below = {}
    for mode in ("valid", "reference_2022", "reference_today"):
        sample = EvalTransform(SIZE, mode)(motorcycle)
        below[mode] = int((sample["valid"] & (sample["disparity"] < floor - 1e-3)).sum())
    assert below["valid"] == 0
    assert below["reference_2022"] > 1000 and below["reference_today"] > 1000
    assert below["reference_today"] != below["reference_2022"]  # antialiasing blends a wider neighbourhood


def test_the_modes_agree_at_native_resolution(motorcycle):
    samples = [EvalTransform(None, mode)(motorcycle) for mode in ("valid", "reference_2022", "reference_today")]
    for sample in samples[1:]:
        assert torch.equal(sample["disparity"], samples[0]["disparity"])
        assert torch.equal(sample["valid"], samples[0]["valid"])


def test_every_test_and_key_the_reference_table_names_exists():
    text = REFERENCE_MD.read_text()
    cited = re.findall(r"`(?:(test_\w+)\.py::)?(test_\w+)`", text)
    assert len(cited) >= 13  # at least one per row
    module = None
    for file, name in cited:
        module = file or module  # "a.py::test_x, test_y": test_y lives in a.py too
        source = (Path(__file__).parent / f"{module}.py").read_text()
        assert f"def {name}(" in source, f"docs/REFERENCE.md cites {module}.py::{name}, which does not exist"
    keys = set(default_keys())
    for key in re.findall(r"`((?:loss|eval|augmentation|datasets|schedule|optim)\.\w+(?:\.\w+)*)", text):
        assert key in keys, f"docs/REFERENCE.md names {key}, which is no config key"
