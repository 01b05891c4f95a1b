"""Inputs and output summaries shared by ``test_raft_stereo.py`` and the script that recorded torchvision's outputs.

``fixtures/raft_stereo_prototype_outputs.pt`` holds, for every case below, the summary of what torchvision's prototype
RaftStereo (``torchvision/prototype/models/depth/stereo/raft_stereo.py``, pytorch/vision commit d2f7486c) computed
with ``oracle_state_dict(case.model)`` on ``oracle_inputs(case.model)``, its x-flow negated into positive disparity.
``fixtures/make_raft_stereo_prototype_fixture.py`` regenerates it from a copy of that file.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from stereo_exp.testing.weights_layout import read_layout


class Case(NamedTuple):
    name: str
    model: str  # raft_stereo_base | raft_stereo_realtime
    training: bool  # model.train() or model.eval()
    with_init: bool  # pass flow_init (a positive disparity at the input resolution)
    num_iters: int


CASES = (
    Case("base_train", "raft_stereo_base", training=True, with_init=False, num_iters=4),
    Case("base_eval", "raft_stereo_base", training=False, with_init=False, num_iters=4),
    Case("base_eval_flow_init", "raft_stereo_base", training=False, with_init=True, num_iters=3),
    Case("realtime_train", "raft_stereo_realtime", training=True, with_init=False, num_iters=4),
    Case("realtime_eval", "raft_stereo_realtime", training=False, with_init=False, num_iters=4),
    Case("realtime_train_flow_init", "raft_stereo_realtime", training=True, with_init=True, num_iters=3),
)

# (H, W) of the inputs. The prototype's lookup divides by (width - 1) of each pyramid level, so its coarsest level
# (1/8 of the feature width) needs 2 columns: 16 feature columns, i.e. 64 px at 1/4 (base) and 128 px at 1/8.
SIZES = {"raft_stereo_base": (32, 64), "raft_stereo_realtime": (32, 128)}


def oracle_state_dict(model_name: str) -> dict[str, Tensor]:
    """A deterministic state dict with every key, shape and dtype of the published layout, drawn in file order from
    one generator seeded with 0: kernels N(0, 1/fan_in), BatchNorm scales 1 + N(0, 0.01), running variances
    1 + |N(0, 0.01)|, other vectors N(0, 0.01), integer buffers 0. Keys of kind ``other`` (realtime: the context
    encoder's view of the backbone it shares with the feature encoder) repeat the feature encoder's tensor.

    (``stereo_exp.testing.weights_layout.layout_state_dict`` cannot serve here: it recognises norm scales by "norm" in
    the key, so the shortcut BatchNorm scales ``*.downsample.1.weight`` would get other values than the fixture was
    recorded with, and it looks aliases up by suffix, which the realtime layout does not fit.)
    """
    generator = torch.Generator().manual_seed(0)
    state_dict: dict[str, Tensor] = {}
    for key, shape, dtype, kind in read_layout(model_name):
        if kind == "other":
            state_dict[key] = state_dict["feature_encoder." + key.split(".", 1)[1]]
        elif not dtype.is_floating_point:
            state_dict[key] = torch.zeros(shape, dtype=dtype)  # BatchNorm's num_batches_tracked
        elif len(shape) >= 2:
            state_dict[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("running_var"):
            state_dict[key] = 1 + 0.1 * torch.randn(shape, generator=generator).abs()
        elif key.endswith("weight"):  # the only 1-D weights of RAFT-Stereo are BatchNorm scales
            state_dict[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state_dict[key] = 0.1 * torch.randn(shape, generator=generator)
    return state_dict


def oracle_inputs(model_name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Two (2, 3, H, W) views in [-1, 1], the right one the left shifted 3 px left plus noise, and a (2, 1, H, W)
    positive disparity ``flow_init`` in [2, 5) px; (H, W) = ``SIZES[model_name]``."""
    height, width = SIZES[model_name]
    generator = torch.Generator().manual_seed(1)
    left = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
    right = torch.roll(left, shifts=-3, dims=-1) + 0.05 * torch.randn(2, 3, height, width, generator=generator)
    flow_init = 2 + 3 * torch.rand(2, 1, height, width, generator=generator)
    return left, right, flow_init


def summarise(predictions: list[Tensor]) -> dict[str, Tensor]:
    """What the fixture keeps of a list of (2, 1, H, W) disparities: the mean of every prediction, and every 8th
    pixel of the last one."""
    return {
        "means": torch.stack([p.mean() for p in predictions]).detach(),
        "last": predictions[-1][..., ::8, ::8].detach().clone(),
    }
