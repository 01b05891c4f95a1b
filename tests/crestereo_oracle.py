"""Inputs and output summaries shared by ``test_crestereo.py`` and the script that recorded torchvision's outputs.

``fixtures/crestereo_prototype_outputs.pt`` holds, for every case below, the summary of what torchvision's prototype
CREStereo (``torchvision/prototype/models/depth/stereo/crestereo.py``, pytorch/vision commit 9c4c8a74) computed with
``layout_state_dict("crestereo_base", seed=0)`` (its ``pe`` buffer replaced by the prototype's own table) on these
inputs. ``fixtures/make_crestereo_prototype_fixture.py`` regenerates it from a copy of that file.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Case(NamedTuple):
    name: str
    training: bool  # model.train() or model.eval()
    with_init: bool  # pass flow_init (a positive disparity at half the input resolution)
    num_iters: int
    n_cascades: int  # > 1: the cascade protocol of torchvision's cascade_evaluation.py


CASES = (
    Case("train", training=True, with_init=False, num_iters=4, n_cascades=1),
    Case("eval", training=False, with_init=False, num_iters=4, n_cascades=1),
    Case("train_flow_init", training=True, with_init=True, num_iters=3, n_cascades=1),
    Case("eval_flow_init", training=False, with_init=True, num_iters=3, n_cascades=1),
    Case("eval_two_cascades", training=False, with_init=False, num_iters=3, n_cascades=2),
)


def oracle_inputs() -> tuple[Tensor, Tensor, Tensor]:
    """A (1, 3, 64, 96) pair in [-1, 1] whose right view is the left one shifted 3 px left plus noise, and a
    (1, 1, 32, 48) positive disparity ``flow_init`` (values in [0, 4) px of the 32x48 grid)."""
    generator = torch.Generator().manual_seed(1)
    left = torch.rand(1, 3, 64, 96, generator=generator) * 2 - 1
    right = torch.roll(left, shifts=-3, dims=-1) + 0.05 * torch.randn(1, 3, 64, 96, generator=generator)
    flow_init = torch.rand(1, 1, 32, 48, generator=generator) * 4
    return left, right, flow_init


def summarise(predictions: list[Tensor]) -> dict[str, Tensor]:
    """What the fixture keeps of a list of (1, C, H, W) predictions: the mean disparity (channel 0) of every
    prediction, and every 8th pixel of the last one's channel 0."""
    return {
        "means": torch.stack([p[:, 0].mean() for p in predictions]).detach(),
        "last": predictions[-1][:, 0, ::8, ::8].detach().clone(),
    }
