"""Sequence loss over every recurrent prediction (RAFT / CREStereo training objective).

Two normalisations (``loss.normalization``), both a gamma-weighted sum over the predictions of a mean L1 error:

- ``valid`` (default): the error averaged over the valid pixels only, so every valid pixel weighs the same whatever
  share of the crop is valid;
- ``all``: torchvision's ``references/depth/stereo`` loss: the error, with the valid mask multiplied in,
  averaged over every pixel and every supervised channel. A crop that is 60 % valid weighs 0.6 times as much, and a
  pixel left out (invalid, or at or above ``loss.max_disparity``) still counts in the denominator.

``loss.vertical``: CREStereo predicts a 2-D flow; torchvision's reference supervises its vertical channel towards 0
(rectified pairs have none) and averages it with the horizontal one. Models that predict disparity only (RAFT-Stereo)
have one channel either way, as in the reference. docs/REFERENCE.md lists every semantic next to the reference's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from stereo_exp.engine.config import LossConfig, LossNormalization
from stereo_exp.models.registry import unwrap_ddp


def forward_options(model: nn.Module, cfg: LossConfig | Any) -> dict[str, bool]:
    """Keyword arguments of the training forward pass that ``cfg`` needs: ``with_vertical=True`` when ``loss.vertical``
    is set and the network predicts a vertical flow (CREStereo: ``forward_flow``); otherwise none."""
    network = unwrap_ddp(model)
    return {"with_vertical": True} if cfg.vertical and hasattr(network, "forward_flow") else {}


def sequence_loss(
    predictions: list[Tensor],
    gt: Tensor,
    valid: Tensor,
    *,
    gamma: float,
    max_disparity: float | None = None,
    normalization: LossNormalization | str = LossNormalization.valid,
) -> Tensor:
    """Gamma-weighted sum over predictions of the masked L1 error (see the module docstring for ``normalization``).

    predictions: N tensors (B, C, H, W): channel 0 disparity in px, an optional channel 1 the vertical flow (its
    target is 0); gt: (B, 1, H, W) px; valid: (B, 1, H, W) bool. A batch without a valid pixel gives a zero loss that
    still depends on the predictions (DDP needs every parameter to take part in the backward pass on every rank).
    """
    mask = valid & torch.isfinite(gt)
    if max_disparity is not None:
        mask = mask & (gt < max_disparity)
    gt = torch.where(mask, gt, torch.zeros_like(gt))  # no NaN/inf from invalid pixels into the graph
    mask = mask.to(predictions[0].dtype)
    channels = predictions[0].shape[1]
    if channels == 2:
        gt = torch.cat([gt, torch.zeros_like(gt)], dim=1)  # rectified pairs: no vertical flow
    elif channels != 1:
        raise ValueError(f"predictions must have 1 (disparity) or 2 (with vertical flow) channels; got {channels}.")
    if LossNormalization(normalization) is LossNormalization.valid:
        denominator = mask.sum().clamp_min(1.0) * channels
    else:
        denominator = float(mask.numel() * channels)
    n = len(predictions)
    total = predictions[0].new_zeros(())
    for i, prediction in enumerate(predictions):
        error = ((prediction - gt).abs() * mask).sum() / denominator
        total = total + gamma ** (n - 1 - i) * error
    return total
