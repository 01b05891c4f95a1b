"""Disparity metrics, averaged per image and reduced across processes by sums and counts.

Every metric is first computed over the valid pixels of one image, then averaged over images. The per-image values
are summed in float64 together with the number of images, and those sums are what DDP ranks add up, so the batch size
and the number of processes never change a result (up to float64 rounding of the final sum).

Definitions, with ``d = |pred - gt|`` in pixels over the valid pixels of one image (these match the published
torchvision tables, whose 1px/3px/5px are shares and whose fl-all is a percentage):

========  =====================================================================================
mae       mean d
rmse      sqrt(mean d²)
1px       share of pixels with d < 1            (0 .. 1, higher is better)
3px       share of pixels with d < 3            (0 .. 1, higher is better)
5px       share of pixels with d < 5            (0 .. 1, higher is better)
relepe    mean d / |gt|
fl-all    100 · share of pixels with d < 3 and d / |gt| < 0.05   (%, higher is better)
========  =====================================================================================

Optional extras (``EXTRA_METRICS``), in percent as their benchmarks report them:

========  =====================================================================================
bad-2.0   Middlebury's "bad 2.0": 100 · share of pixels with d > 2            (%, lower is better)
d1        KITTI 2015's D1: 100 · share of pixels with d > 3 and d > 0.05·gt   (%, lower is better)
========  =====================================================================================

fl-all counts *inliers* under both bounds, d1 counts *outliers* beyond both bounds, so d1 != 100 - fl-all in general.

An image without any valid pixel has no metric value: it is counted in ``MetricSums.skipped`` and left out of the
averages. An image whose metrics are not finite (a diverged prediction) is averaged in (the result becomes NaN, so it
cannot go unnoticed) and counted in ``MetricSums.nonfinite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stereo_exp.distributed import DistEnv

CORE_METRICS: tuple[str, ...] = ("mae", "rmse", "1px", "3px", "5px", "relepe", "fl-all")
EXTRA_METRICS: tuple[str, ...] = ("bad-2.0", "d1")

# Thresholds of the definitions above (part of the metric names, not settings).
_FL_ALL_MAX_PX = 3.0
_FL_ALL_MAX_RELATIVE = 0.05
_BAD_2_PX = 2.0
_D1_MIN_PX = 3.0
_D1_MIN_RELATIVE = 0.05


def metric_names(extras: Sequence[str] = ()) -> tuple[str, ...]:
    """The core metrics followed by ``extras``; an unknown extra names the known ones."""
    for name in extras:
        if name not in EXTRA_METRICS:
            raise ValueError(f"Unknown extra metric {name!r}; expected a subset of {list(EXTRA_METRICS)}.")
    return CORE_METRICS + tuple(dict.fromkeys(extras))


def per_image_metrics(
    pred: Tensor, gt: Tensor, valid: Tensor, *, extras: Sequence[str] = ()
) -> tuple[dict[str, Tensor], Tensor]:
    """Metrics of each image of a batch.

    Args:
        pred: (B, 1, H, W) predicted disparity in pixels.
        gt: (B, 1, H, W) ground-truth disparity in pixels, > 0 wherever ``valid``.
        valid: (B, 1, H, W) bool, the pixels with ground truth.
        extras: optional metrics from ``EXTRA_METRICS``.

    Returns:
        ``{name: (B,) float64}`` in the order of ``metric_names(extras)``, and the (B,) int64 number of valid pixels
        of each image. Images with no valid pixel get NaN values (``MetricSums`` leaves them out).
    """
    names = metric_names(extras)
    if pred.shape != gt.shape or valid.shape != gt.shape or gt.dim() != 4 or gt.shape[1] != 1:
        raise ValueError(
            "pred, gt and valid must share one (B, 1, H, W) shape; "
            f"got pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, valid {tuple(valid.shape)}."
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool mask; got dtype {valid.dtype}.")
    gt_valid = gt[valid]
    if not bool(torch.isfinite(gt_valid).all()) or bool((gt_valid <= 0).any()):
        raise ValueError(
            "Ground-truth disparity must be finite and > 0 at every valid pixel "
            f"(found min {gt_valid.min().item() if gt_valid.numel() else 'n/a'}); fix the dataset's valid mask."
        )

    # float64 from here: per-image sums of millions of pixels stay exact enough that batching never shows.
    d = (pred.double() - gt.double()).abs()
    rel = d / gt.double().abs().clamp_min(torch.finfo(torch.float64).tiny)  # only read where valid (gt > 0)
    mask = valid
    count = mask.sum(dim=(1, 2, 3))  # (B,) valid pixels per image
    denom = count.double()  # 0 -> NaN below, by design

    def mean_of(x: Tensor) -> Tensor:
        # Masked mean per image; invalid pixels may hold anything (even NaN) and are replaced, not multiplied.
        return torch.where(mask, x, torch.zeros_like(x)).sum(dim=(1, 2, 3)) / denom

    values: dict[str, Tensor] = {}
    for name in names:
        if name == "mae":
            values[name] = mean_of(d)
        elif name == "rmse":
            values[name] = mean_of(d * d).sqrt()
        elif name in ("1px", "3px", "5px"):
            values[name] = mean_of((d < float(name[0])).double())
        elif name == "relepe":
            values[name] = mean_of(rel)
        elif name == "fl-all":
            values[name] = 100.0 * mean_of(((d < _FL_ALL_MAX_PX) & (rel < _FL_ALL_MAX_RELATIVE)).double())
        elif name == "bad-2.0":
            values[name] = 100.0 * mean_of((d > _BAD_2_PX).double())
        elif name == "d1":
            values[name] = 100.0 * mean_of(((d > _D1_MIN_PX) & (rel > _D1_MIN_RELATIVE)).double())
    # NaN predictions make d NaN and every comparison False; make the share metrics NaN too so they show.
    nonfinite = torch.where(mask, ~torch.isfinite(pred), torch.zeros_like(mask)).any(dim=(1, 2, 3))
    for name in values:
        values[name] = torch.where(nonfinite, torch.full_like(values[name], float("nan")), values[name])
    return values, count


@dataclass
class MetricSums:
    """Running sums of per-image metrics on this process; ``reduce_metrics`` adds them up across processes.

    ``totals[i]`` is the float64 sum over averaged images of metric ``names[i]``; ``images`` counts them,
    ``skipped`` counts images without any valid pixel (not averaged), ``nonfinite`` counts averaged images whose
    metrics are not finite.
    """

    names: tuple[str, ...] = CORE_METRICS
    totals: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    images: int = 0
    skipped: int = 0
    nonfinite: int = 0

    def __post_init__(self) -> None:
        if self.totals.numel() == 0:
            self.totals = torch.zeros(len(self.names), dtype=torch.float64)
        if self.totals.shape != (len(self.names),):
            raise ValueError(f"totals has shape {tuple(self.totals.shape)}; expected ({len(self.names)},).")

    @classmethod
    def empty(cls, extras: Sequence[str] = ()) -> MetricSums:
        return cls(names=metric_names(extras))

    def add(self, pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
        """Add a (B, 1, H, W) batch; returns the (B,) bool mask of images that were averaged in."""
        extras = tuple(n for n in self.names if n not in CORE_METRICS)
        values, count = per_image_metrics(pred, gt, valid, extras=extras)
        used = count > 0
        stacked = torch.stack([values[n] for n in self.names], dim=1).cpu()  # (B, M)
        used_cpu = used.cpu()
        # One sum per image, in batch order: adding images one at a time keeps the result independent of batching.
        for row in stacked[used_cpu]:
            self.totals += row
            self.nonfinite += int(not bool(torch.isfinite(row).all()))
        self.images += int(used_cpu.sum())
        self.skipped += int((~used_cpu).sum())
        return used

    def means(self) -> dict[str, float]:
        """Per-image averages; NaN for every metric when no image had a valid pixel."""
        if self.images == 0:
            return {n: float("nan") for n in self.names}
        return {n: float(v) for n, v in zip(self.names, (self.totals / self.images).tolist(), strict=True)}


def reduce_metrics(sums: MetricSums, dist: DistEnv) -> MetricSums:
    """Sum ``sums`` over every process (a collective: all ranks must call it); returns a new object."""
    packed = torch.cat(
        [sums.totals, torch.tensor([sums.images, sums.skipped, sums.nonfinite], dtype=torch.float64)]
    ).to(dist.device)
    dist.all_reduce_sum(packed)
    packed = packed.cpu()
    n = len(sums.names)
    return MetricSums(
        names=sums.names,
        totals=packed[:n].clone(),
        images=round(float(packed[n])),
        skipped=round(float(packed[n + 1])),
        nonfinite=round(float(packed[n + 2])),
    )
