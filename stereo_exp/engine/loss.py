"""Sequence loss over every recurrent prediction (RAFT / CREStereo training objective)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossConfig:
    gamma: float = 0.8  # weight of prediction i of N is gamma**(N-1-i): later refinements count more
    max_disparity: float | None = None  # ground truth at or above this many pixels is left out; null = keep all

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"loss.gamma must lie in (0, 1]; got {self.gamma}.")
        if self.max_disparity is not None and self.max_disparity <= 0:
            raise ValueError(f"loss.max_disparity must be > 0 or null; got {self.max_disparity}.")


def sequence_loss(
    predictions: list[Tensor], gt: Tensor, valid: Tensor, *, gamma: float, max_disparity: float | None = None
) -> Tensor:
    """Gamma-weighted sum over predictions of the L1 error averaged over valid pixels.

    predictions: N tensors (B, 1, H, W), disparity in px; gt: (B, 1, H, W); valid: (B, 1, H, W) bool.
    A batch without a valid pixel gives a zero loss that still depends on the predictions (DDP needs every
    parameter to take part in the backward pass on every rank).
    """
    mask = valid & torch.isfinite(gt)
    if max_disparity is not None:
        mask = mask & (gt < max_disparity)
    mask = mask.to(predictions[0].dtype)
    num_valid = mask.sum().clamp_min(1.0)
    gt = torch.where(mask.bool(), gt, torch.zeros_like(gt))  # no NaN/inf from invalid pixels into the graph
    n = len(predictions)
    total = predictions[0].new_zeros(())
    for i, prediction in enumerate(predictions):
        error = ((prediction - gt).abs() * mask).sum() / num_valid
        total = total + gamma ** (n - 1 - i) * error
    return total
