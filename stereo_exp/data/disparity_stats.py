"""Disparity distribution of training crops: accumulation, summary, table and histogram figure (for the EDA).

Counts are kept in a fine histogram (``resolution`` px bins up to ``hist_max``; larger values counted as overflow),
so any number of crops costs constant memory; quantiles are read from it by linear interpolation inside a bin
(accurate to ``resolution``), the minimum, maximum and mean are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # imported where the histogram is drawn (matplotlib takes ~0.8 s to import)
    from matplotlib.figure import Figure


class DisparityStats:
    """Running statistics of the disparities of one dataset's crops (all in px)."""

    def __init__(self, *, resolution: float, hist_max: float) -> None:
        if resolution <= 0 or hist_max <= resolution:
            raise ValueError(f"eda.resolution ({resolution}) must be > 0 and below eda.hist_max ({hist_max})")
        self.resolution = float(resolution)
        self.num_bins = math.ceil(hist_max / resolution)
        self.hist_max = self.num_bins * self.resolution
        self.counts = np.zeros(self.num_bins, dtype=np.float64)  # float: weighted sums for the mix
        self.overflow = 0.0  # valid values >= hist_max
        self.crops = 0.0
        self.pixels = 0.0
        self.valid = 0.0
        self.total = 0.0  # sum of valid disparities (mean)
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, disparity: Tensor, valid: Tensor) -> None:
        """One crop: ``disparity`` (1, H, W) px and ``valid`` (1, H, W) bool, before any max-disparity cap."""
        values = disparity[valid].double()
        self.crops += 1
        self.pixels += valid.numel()
        self.valid += values.numel()
        if values.numel() == 0:
            return
        self.total += values.sum().item()
        self.minimum = min(self.minimum, values.min().item())
        self.maximum = max(self.maximum, values.max().item())
        inside = values < self.hist_max
        self.overflow += (~inside).sum().item()
        index = (values[inside] / self.resolution).long().clamp_(max=self.num_bins - 1)
        self.counts += torch.bincount(index, minlength=self.num_bins).numpy()

    @classmethod
    def weighted(cls, parts: Sequence[tuple[DisparityStats, float]]) -> DisparityStats:
        """The mix: each part's counts scaled by ``weight / its crops`` (weights = shares of the mix): the expected
        distribution of one training crop."""
        first = parts[0][0]
        mix = cls(resolution=first.resolution, hist_max=first.hist_max)
        for stats, weight in parts:
            if stats.crops == 0:
                continue
            scale = weight / stats.crops
            mix.counts += stats.counts * scale
            mix.overflow += stats.overflow * scale
            mix.pixels += stats.pixels * scale
            mix.valid += stats.valid * scale
            mix.total += stats.total * scale
            mix.crops += stats.crops  # crops drawn in all (the counts themselves are per training crop)
            mix.minimum = min(mix.minimum, stats.minimum)
            mix.maximum = max(mix.maximum, stats.maximum)
        return mix

    def quantile(self, q: float) -> float:
        """The q-quantile of valid disparities (overflowing values count as >= hist_max); nan without any."""
        if self.valid == 0:
            return math.nan
        target = q * self.valid
        cumulative = np.cumsum(self.counts)
        b = int(np.searchsorted(cumulative, target, side="left"))
        if b >= self.num_bins:
            return self.maximum  # inside the overflow: only the maximum is known
        before = cumulative[b - 1] if b > 0 else 0.0
        inside = (target - before) / self.counts[b] if self.counts[b] > 0 else 0.0
        value = (b + inside) * self.resolution
        return float(min(max(value, self.minimum), self.maximum))

    def share_at_or_above(self, threshold: float) -> float:
        """Share of valid pixels with disparity >= ``threshold`` (exact when threshold is a bin edge)."""
        if self.valid == 0:
            return math.nan
        if threshold >= self.hist_max:
            return math.nan if threshold > self.hist_max else self.overflow / self.valid
        first = math.ceil(threshold / self.resolution - 1e-9)
        return float((self.counts[first:].sum() + self.overflow) / self.valid)

    def histogram(self, bins: int) -> tuple[list[float], list[float]]:
        """(edges, counts) of ``bins`` equal bins over [0, max disparity] (re-binned from the fine histogram)."""
        top = min(self.maximum if self.valid else 1.0, self.hist_max)
        width = max(math.ceil(top / self.resolution / bins), 1)  # whole fine bins per coarse bin
        padded = np.zeros(width * bins)
        used = min(self.num_bins, width * bins)
        padded[:used] = self.counts[:used]
        counts = padded.reshape(bins, width).sum(axis=1)
        edges = [i * width * self.resolution for i in range(bins + 1)]
        return edges, counts.tolist()

    def summary(
        self, *, quantiles: Sequence[float], thresholds: Sequence[float], max_disparity: float | None, bins: int
    ) -> dict[str, Any]:
        """The JSON-ready report of this dataset (see ``stereo_exp.eda``)."""
        edges, counts = self.histogram(bins)
        return {
            "crops": self.crops,
            "pixels": self.pixels,
            "valid_pixels": self.valid,
            "valid_share": self.valid / self.pixels if self.pixels else math.nan,
            "mean": self.total / self.valid if self.valid else math.nan,
            "min": self.minimum if self.valid else math.nan,
            "max": self.maximum if self.valid else math.nan,
            "quantiles": {f"p{100 * q:g}": self.quantile(q) for q in quantiles},
            "share_at_or_above": {f"{t:g}": self.share_at_or_above(t) for t in thresholds},
            # the pixels that augmentation.max_disparity removes from the loss (null: no cap)
            "share_above_max_disparity": None if max_disparity is None else self.share_at_or_above(max_disparity),
            "overflow": self.overflow,
            "histogram": {"edges": edges, "counts": counts},
        }


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table of the per-dataset summaries (quantiles and shares in columns)."""
    names = list(report)
    first = report[names[0]]
    quantile_keys = list(first["quantiles"])
    share_keys = list(first["share_at_or_above"])
    header = ["dataset", "crops", "valid%", "mean", *quantile_keys, "max", *[f">={k}%" for k in share_keys]]
    if first["share_above_max_disparity"] is not None:
        header.append(">=max_disp%")
    rows = [header]
    for name in names:
        entry = report[name]
        row = [name, f"{entry['crops']:g}", f"{100 * entry['valid_share']:.1f}", f"{entry['mean']:.1f}"]
        row += [f"{entry['quantiles'][k]:.1f}" for k in quantile_keys]
        row.append(f"{entry['max']:.1f}")
        row += [f"{100 * entry['share_at_or_above'][k]:.2f}" for k in share_keys]
        if entry["share_above_max_disparity"] is not None:
            row.append(f"{100 * entry['share_above_max_disparity']:.2f}")
        rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def histogram_figure(
    report: dict[str, dict[str, Any]], *, title: str, log_scale: bool, max_disparity: float | None
) -> Figure:
    """One histogram per dataset (share of valid pixels per bin), stacked vertically."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 2.2 * len(report) + 0.6), layout="constrained")
    axes = figure.subplots(len(report), 1, squeeze=False)[:, 0]
    for ax, (name, entry) in zip(axes, report.items(), strict=True):
        edges = np.asarray(entry["histogram"]["edges"])
        counts = np.asarray(entry["histogram"]["counts"])
        total = counts.sum()
        shares = counts / total if total > 0 else counts
        ax.bar(edges[:-1], shares, width=np.diff(edges), align="edge", color="tab:blue")
        if max_disparity is not None and max_disparity <= edges[-1]:
            ax.axvline(max_disparity, color="tab:red", linestyle="--", label=f"max_disparity {max_disparity:g}")
            ax.legend(loc="upper right")
        if log_scale and total > 0:
            ax.set_yscale("log")
        p50 = entry["quantiles"].get("p50")
        median = f", median {p50:.1f} px" if p50 is not None else ""
        ax.set_title(f"{name}: {entry['crops']:g} crops, {100 * entry['valid_share']:.1f}% valid{median}", fontsize=9)
        ax.set_ylabel("share of valid px")
    axes[-1].set_xlabel("disparity (px, at the training crop scale)")
    figure.suptitle(title, fontsize=10)
    return figure
