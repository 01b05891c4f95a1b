"""Inference on images of any size: padding to the model's size multiple, and the coarse-to-fine cascade.

Padding: the networks need H and W divisible by ``model.size_multiple`` (16 for CREStereo, the encoder's and the
pyramid's downsampling). ``Padding.to_multiple`` splits the missing rows and columns evenly between the two sides
(the extra one, if odd, goes to the bottom / right) and fills them by replicating the border pixels, as torchvision's
``InputPadder`` does in its "sintel" mode; ``Padding.remove`` crops the prediction back to the input size. Only whole
pixels are added, so disparities need no rescaling.

Cascade (the CREStereo paper's stacked cascades; torchvision ``references/depth/stereo/cascade_evaluation.py``): with
``n_cascades = c`` the padded pair is downscaled by 2, 4, ... 2**(c-1) (bilinear, ``align_corners=True``); the
smallest pair is solved from scratch and each level's final prediction is passed as ``flow_init`` to the next, larger
level, where the model rescales it to its own grid (disparities double from one level to the next). Inputs are
padded to ``size_multiple * 2**(c-1)`` so that every level is a valid size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from stereo_exp.models.registry import unwrap_ddp

__all__ = ["Padding", "predict_disparity"]


@dataclass(frozen=True)
class Padding:
    """Pixels added on each side of an image: (left, right, top, bottom)."""

    left: int
    right: int
    top: int
    bottom: int

    @classmethod
    def to_multiple(cls, height: int, width: int, multiple: int) -> Padding:
        """The padding that brings (height, width) to the next multiples of ``multiple``, split evenly."""
        if multiple < 1:
            raise ValueError(f"The size multiple must be >= 1; got {multiple}.")
        pad_h, pad_w = -height % multiple, -width % multiple
        return cls(left=pad_w // 2, right=pad_w - pad_w // 2, top=pad_h // 2, bottom=pad_h - pad_h // 2)

    def apply(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H + top + bottom, W + left + right), border pixels replicated."""
        if self.left == self.right == self.top == self.bottom == 0:
            return image
        return F.pad(image, (self.left, self.right, self.top, self.bottom), mode="replicate")

    def remove(self, image: Tensor) -> Tensor:
        """Inverse of ``apply``: crops (..., H', W') back to the unpadded area."""
        h, w = image.shape[-2:]
        return image[..., self.top : h - self.bottom, self.left : w - self.right]


def predict_disparity(model: nn.Module, left: Tensor, right: Tensor, *, num_iters: int, n_cascades: int = 1) -> Tensor:
    """Disparity (B, 1, H, W) in pixels for images (B, 3, H, W) of any size, normalised to [-1, 1].

    Pads to ``model.size_multiple * 2**(n_cascades - 1)``, runs ``n_cascades`` levels coarse to fine with
    ``num_iters`` recurrent updates each (see the module docstring), and crops back. The model runs in whatever mode it
    is in: call ``model.eval()`` and wrap in ``torch.inference_mode()`` for evaluation. ``model`` may be wrapped in
    DDP. A model with a ``forward_flow`` method (CREStereo) carries its full 2-D flow between levels, exactly as
    torchvision's cascade does, so the published multi-cascade numbers are reproduced; other models (RAFT-Stereo)
    carry the disparity.
    """
    if left.ndim != 4 or left.shape != right.shape:
        raise ValueError(
            f"left and right must have the same shape (B, 3, H, W); got {tuple(left.shape)} and {tuple(right.shape)}."
        )
    if n_cascades < 1 or num_iters < 1:
        raise ValueError(f"n_cascades and num_iters must be >= 1; got n_cascades={n_cascades}, num_iters={num_iters}.")
    network = unwrap_ddp(model)
    size_multiple = getattr(network, "size_multiple", None)
    if not isinstance(size_multiple, int):
        raise TypeError(f"{type(network).__name__} must expose an int attribute size_multiple; got {size_multiple!r}.")
    forward = getattr(network, "forward_flow", model)  # (B, 2, H, W) predictions when the model offers them

    height, width = left.shape[-2:]
    padding = Padding.to_multiple(height, width, size_multiple * 2 ** (n_cascades - 1))
    left, right = padding.apply(left), padding.apply(right)

    flow_init: Tensor | None = None
    for level in reversed(range(n_cascades)):  # coarsest (smallest) first
        left_l, right_l = _downscale(left, 2**level), _downscale(right, 2**level)
        flow_init = forward(left_l, right_l, flow_init=flow_init, num_iters=num_iters)[-1]
    assert flow_init is not None  # n_cascades >= 1
    return padding.remove(flow_init[:, :1])


def _downscale(image: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return image
    h, w = image.shape[-2:]
    return F.interpolate(image, size=(h // factor, w // factor), mode="bilinear", align_corners=True)
