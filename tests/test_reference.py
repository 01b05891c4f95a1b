"""docs/REFERENCE.md: the published evaluation protocol's ground-truth resize (eval.gt_resize) on the real motorcycle
pair, and the table's evidence (every test and config key it names exists).

torchvision's reference resizes the evaluation ground truth with ``torchvision.transforms.functional.resize``: the
disparity map (0 at unknown pixels) bilinearly, times the width ratio, the valid mask nearest, then keeps pixels whose
resized disparity is > 0. In 2022, when the published tables were made, ``F.resize`` did not antialias tensors; since
torchvision 0.17 it does by default. The expectations call ``F.resize`` itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from stereo_exp.data.embedded import MotorcycleStereo
from stereo_exp.data.transforms import EvalTransform
from tests.test_config import default_keys

REFERENCE_MD = Path(__file__).parents[1] / "docs" / "REFERENCE.md"

SIZE = (384, 512)  # the published tables' evaluation size


@pytest.fixture(scope="module")
def motorcycle() -> dict:
    return MotorcycleStereo()[0]  # 500 x 741, +inf where unknown


def _reference_ground_truth(raw: dict, antialias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    known = np.isfinite(raw["disparity"])
    disparity = torch.from_numpy(np.where(known, raw["disparity"], 0.0).astype(np.float32))[None]
    resized = TF.resize(disparity, list(SIZE), InterpolationMode.BILINEAR, antialias=antialias) * (SIZE[1] / 741)
    mask = TF.resize(torch.from_numpy(known)[None], list(SIZE), InterpolationMode.NEAREST)
    return resized, mask & (resized > 0)


@pytest.mark.parametrize(("gt_resize", "antialias"), [("reference_2022", False), ("reference_today", True)])
def test_reference_gt_resize_is_torchvision_resize_of_the_zero_filled_map(motorcycle, gt_resize, antialias):
    sample = EvalTransform(SIZE, gt_resize)(motorcycle)
    disparity, valid = _reference_ground_truth(motorcycle, antialias)
    assert torch.equal(sample["valid"], valid)
    assert torch.allclose(sample["disparity"], torch.where(valid, disparity, 0.0), rtol=1e-6, atol=1e-5)
    # the images are resized the same way in every mode: bilinear, no antialias (the reference hard-codes it)
    left = TF.resize(TF.to_tensor(motorcycle["left"]), list(SIZE), InterpolationMode.BILINEAR, antialias=False)
    assert torch.allclose(sample["left"], (left - 0.5) / 0.5, atol=1e-6)


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
