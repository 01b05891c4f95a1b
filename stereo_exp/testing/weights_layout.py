"""State dicts in the exact layout of torchvision's published checkpoints, built from ``weights-layout/`` (beside it).

Each ``<model>.tsv`` lists every key of a published file with its shape, dtype and kind (``param``, ``buffer``, or
``other``: a second key for a parameter registered twice, e.g. CREStereo's top-level ``flow_head`` alias of
``update_block.flow_head``). Tests and benchmarks write such state dicts to disk to exercise loading without
downloading anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch

LAYOUT_DIR = Path(__file__).parent / "weights-layout"


class LayoutEntry(NamedTuple):
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # param | buffer | other


def read_layout(model_name: str) -> list[LayoutEntry]:
    """The rows of ``weights-layout/<model_name>.tsv`` in file order."""
    lines = (LAYOUT_DIR / f"{model_name}.tsv").read_text().splitlines()
    entries = []
    for line in lines[1:]:  # header: key, shape, dtype, kind
        key, shape, dtype, kind = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        entries.append(LayoutEntry(key, dims, getattr(torch, dtype), kind))
    return entries


def layout_state_dict(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic state dict with every key, shape and dtype of the published layout.

    Values are drawn in file order from one seeded generator, scaled so that a network using them stays in a sensible
    range: matrices and kernels N(0, 1/fan_in), norm weights 1 + N(0, 0.01), running variances 1 + |N(0, 0.01)|,
    other vectors and buffers N(0, 0.01); integer buffers are 0. Keys of kind ``other`` repeat the parameter whose key
    ends with theirs, as in a real file.
    """
    generator = torch.Generator().manual_seed(seed)
    entries = read_layout(model_name)
    state_dict: dict[str, torch.Tensor] = {}
    for key, shape, dtype, kind in entries:
        if kind == "other":
            continue
        if not dtype.is_floating_point:
            state_dict[key] = torch.zeros(shape, dtype=dtype)
        elif len(shape) >= 2 and kind == "param":
            state_dict[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif "norm" in key and key.endswith("weight"):
            state_dict[key] = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("running_var"):  # a variance must be positive
            state_dict[key] = 1 + 0.1 * torch.randn(shape, generator=generator).abs()
        else:
            state_dict[key] = 0.1 * torch.randn(shape, generator=generator)
    for key, _, _, kind in entries:
        if kind == "other":
            (source,) = [k for k in state_dict if k.endswith("." + key)]
            state_dict[key] = state_dict[source]
    return {entry.key: state_dict[entry.key].to(entry.dtype) for entry in entries}
