"""Disparity pictures: colour-mapped disparity and error maps, and the evaluation picture grid.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas directly (no ``pyplot``): no global backend
switch, no window, nothing kept alive in pyplot's figure registry, safe in worker processes and on headless nodes.

Colour ranges: within one sample, ground truth and prediction share one range (taken from the valid ground truth,
or from the prediction when there is none), so equal colours mean equal disparities. The error map has a fixed range
``[0, max_error]`` pixels; larger errors saturate. Pixels without ground truth are drawn black.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # matplotlib (~0.8 s to import) is imported where a picture is drawn: runs without pictures skip it
    from matplotlib.figure import Figure

DEFAULT_COLORMAP = "turbo"  # disparity: perceptually ordered, far = dark blue, near = dark red
DEFAULT_ERROR_COLORMAP = "inferno"  # error: black (0 px) to bright yellow (>= max_error)
_PANEL_INCHES = 3.2  # height of one panel of the picture grid
_DPI = 100  # 1 inch = 100 pixels


def _as_hw(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """(H, W) or (1, H, W) -> (H, W) float32 numpy."""
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, H, W); got {tuple(arr.shape)}.")
    return arr


def _as_mask(valid: Tensor | np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    mask = _as_hw(valid, "valid") > 0
    if mask.shape != shape:
        raise ValueError(f"valid has shape {mask.shape}; expected {shape} like the disparity.")
    return mask


def disparity_range(
    gt: Tensor | np.ndarray | None, valid: Tensor | np.ndarray | None, pred: Tensor | np.ndarray | None = None
) -> tuple[float, float]:
    """Colour range (vmin, vmax) in pixels of one sample: the valid ground truth, else the finite prediction."""
    for source, mask in ((gt, valid), (pred, None)):
        if source is None:
            continue
        arr = _as_hw(source, "disparity")
        values = arr[_as_mask(mask, arr.shape) & np.isfinite(arr)]
        if values.size:
            low, high = float(values.min()), float(values.max())
            return (low, high) if high > low else (low, low + 1.0)  # a flat map still needs a non-empty range
    return (0.0, 1.0)


def colorize_disparity(
    disparity: Tensor | np.ndarray,
    *,
    vmin: float,
    vmax: float,
    valid: Tensor | np.ndarray | None = None,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """(H, W) or (1, H, W) disparity in px -> (H, W, 3) uint8 RGB; values clipped to [vmin, vmax], invalid black."""
    arr = _as_hw(disparity, "disparity")
    mask = _as_mask(valid, arr.shape) & np.isfinite(arr)
    scaled = np.clip((arr - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    import matplotlib

    rgb = matplotlib.colormaps[colormap](np.nan_to_num(scaled))[..., :3]
    rgb[~mask] = 0.0
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def error_map(
    pred: Tensor | np.ndarray,
    gt: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None,
    *,
    max_error: float = 3.0,
    colormap: str = DEFAULT_ERROR_COLORMAP,
) -> np.ndarray:
    """|pred - gt| in px -> (H, W, 3) uint8 RGB with range [0, max_error] (saturating); no ground truth -> black."""
    p, g = _as_hw(pred, "pred"), _as_hw(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred has shape {p.shape} but gt has {g.shape}.")
    return colorize_disparity(np.abs(p - g), vmin=0.0, vmax=max_error, valid=valid, colormap=colormap)


def image_to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) image normalised to [-1, 1] -> (H, W, 3) uint8."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W); got {tuple(image.shape)}.")
    arr = ((image.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5 + 0.5).to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()


def figure_to_png(fig: Figure) -> bytes:
    """Render a figure on the Agg canvas and return the PNG file's bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


def picture_grid_figure(
    left: Tensor,
    right: Tensor,
    gt: Tensor,
    pred: Tensor,
    valid: Tensor,
    *,
    max_error: float = 3.0,
    colormap: str = DEFAULT_COLORMAP,
    title: str | None = None,
) -> Figure:
    """One row: left | right | ground truth | prediction | error, for one sample.

    Args:
        left, right: (3, H, W) images in [-1, 1].
        gt, pred: (1, H, W) or (H, W) disparity in px; ``valid``: same shape, the pixels with ground truth.
        max_error: px at which the error colour saturates.
        title: figure title, e.g. the dataset, sample index and grid cell.
    """
    g, p = _as_hw(gt, "gt"), _as_hw(pred, "pred")
    mask = _as_mask(valid, g.shape)
    if p.shape != g.shape or tuple(left.shape[-2:]) != g.shape or tuple(right.shape[-2:]) != g.shape:
        raise ValueError(
            f"Picture inputs differ in size: left {tuple(left.shape)}, right {tuple(right.shape)}, "
            f"gt {g.shape}, pred {p.shape}."
        )
    vmin, vmax = disparity_range(g, mask, p)
    d = np.abs(p - g)[mask]
    mae = float(d.mean()) if d.size else float("nan")

    h, w = g.shape
    panel_w = _PANEL_INCHES * w / h
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * panel_w + 1.0, _PANEL_INCHES + (0.6 if title else 0.35)), dpi=_DPI)
    axes = fig.subplots(1, 5)
    panels = [
        ("left", image_to_uint8(left)),
        ("right", image_to_uint8(right)),
        (
            f"ground truth [{vmin:.1f}, {vmax:.1f}] px",
            colorize_disparity(g, vmin=vmin, vmax=vmax, valid=mask, colormap=colormap),
        ),
        ("prediction", colorize_disparity(p, vmin=vmin, vmax=vmax, colormap=colormap)),
        (f"error (mae {mae:.2f} px, 0-{max_error:g} px)", error_map(p, g, mask, max_error=max_error)),
    ]
    for ax, (name, picture) in zip(axes, panels, strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def disparity_figure(
    disparity: Tensor | np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    colormap: str = DEFAULT_COLORMAP,
) -> Figure:
    """A colour-mapped disparity at about its own pixel size, with a colour bar in px (used by predict).

    ``vmin``/``vmax`` default to the finite range of ``disparity``.
    """
    arr = _as_hw(disparity, "disparity")
    low, high = disparity_range(None, None, arr)
    vmin = low if vmin is None else vmin
    vmax = high if vmax is None else vmax
    h, w = arr.shape
    bar_inches = 1.0  # room for the colour bar and its labels
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w / _DPI + bar_inches, h / _DPI + 0.2), dpi=_DPI)
    ax = fig.add_axes((0.0, 0.0, (w / _DPI) / (w / _DPI + bar_inches), 1.0))
    image = ax.imshow(np.nan_to_num(arr, nan=vmin), cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes(((w / _DPI + 0.15) / (w / _DPI + bar_inches), 0.1, 0.15 / (w / _DPI + bar_inches), 0.8))
    fig.colorbar(image, cax=cax, label="disparity [px]")
    return fig
