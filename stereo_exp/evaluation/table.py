"""The cascade-evaluation table in the published log layout, and the same results as JSON.

The text layout is the one of torchvision's ``references/depth/stereo`` evaluation logs, so our tables can be diffed
against the published ones: a ``Dataset: <name> @size: [H, W]:`` line, then one braces block per cascade count with
one line per number of recurrent iterations holding the metric dict rounded to 3 decimals::

    Dataset: middlebury2014-train @size: [384, 512]:
    {
    <TAB>1: {
    <TAB><TAB>2: {'mae': 2.363, 'rmse': 4.352, '1px': 0.611, '3px': 0.828, '5px': 0.891, 'relepe': 0.176, ...}
    <TAB>},
    }

Native-resolution evaluation (no resize) writes ``@size: native``. JSON keeps full precision. ``evaluate`` writes one
line before the tables naming how the ground truth was resized (``format_protocol``): the tables are only comparable
with the published ones under ``eval.gt_resize=reference_2022`` (docs/REFERENCE.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stereo_exp.data.transforms import GT_RESIZE_DESCRIPTIONS, GtResize

# Nested results: {n_cascades: {n_iterations: {metric: value}}}
Grid = Mapping[int, Mapping[int, Mapping[str, float]]]

_DECIMALS = 3  # rounding of the published tables


def format_size(size: Sequence[int] | None) -> str:
    """``[384, 512]`` for a resize to (H, W), ``native`` for evaluation at each image's own resolution."""
    return "native" if size is None else str([int(s) for s in size])


def format_protocol(size: Sequence[int] | None, gt_resize: str) -> str:
    """The line above the tables: how the ground truth reached the evaluated size (ends with a newline)."""
    if size is None:
        return "Ground truth: native resolution, not resized\n"
    value = GtResize(gt_resize)
    return f"Ground truth: resized with eval.gt_resize={value.value}: {GT_RESIZE_DESCRIPTIONS[value]}\n"


def format_table(dataset: str, size: Sequence[int] | None, grid: Grid) -> str:
    """One dataset's results in the published log layout (ends with a newline)."""
    lines = [f"Dataset: {dataset} @size: {format_size(size)}:"]
    for n_cascades, by_iters in grid.items():
        lines.append("{")
        lines.append(f"\t{n_cascades}: {{")
        for n_iters, metrics in by_iters.items():
            rounded = {name: round(float(value), _DECIMALS) for name, value in metrics.items()}
            lines.append(f"\t\t{n_iters}: {rounded}")
        lines.append("\t},")
        lines.append("}")
    return "\n".join(lines) + "\n"


def format_tables(results: Mapping[str, Grid], size: Sequence[int] | None) -> str:
    """Several datasets, one block each, separated by a blank line."""
    return "\n".join(format_table(name, size, grid) for name, grid in results.items())


def results_to_json(
    results: Mapping[str, Grid], size: Sequence[int] | None, *, extra: Mapping[str, Any] | None = None
) -> str:
    """``{"size": [H, W] | null, "datasets": {name: {"<cascades>": {"<iters>": {metric: value}}}}, **extra}``.

    JSON object keys are strings, so cascade and iteration counts become ``"1"``, ``"10"``; non-finite values become
    ``null`` (JSON has no NaN).
    """
    doc: dict[str, Any] = {"size": None if size is None else [int(s) for s in size]}
    doc["datasets"] = {
        name: {
            str(c): {str(i): {m: _finite_or_none(v) for m, v in metrics.items()} for i, metrics in by_iters.items()}
            for c, by_iters in grid.items()
        }
        for name, grid in results.items()
    }
    doc.update(extra or {})
    return json.dumps(doc, indent=2)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
