"""Fields shared by every ``model`` group schema; each architecture file extends ``ModelConfig``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

# Keys of the model group that are not constructor arguments of the architecture.
NON_ARCHITECTURE_KEYS = ("name", "weights", "train_iters", "eval_iters")


@dataclass
class ModelConfig:
    name: str = MISSING  # registered builder, e.g. crestereo_base | raft_stereo_base | raft_stereo_realtime
    weights: str | None = None  # published weights name (e.g. MEGVII_V1) or a local .pth / checkpoint; null = random
    train_iters: int = 10  # recurrent refinement updates per forward pass during training
    eval_iters: int = 10  # recurrent refinement updates during validation


def architecture_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The builder keyword arguments among a model config's entries: every key but ``NON_ARCHITECTURE_KEYS``."""
    return {key: value for key, value in options.items() if key not in NON_ARCHITECTURE_KEYS}


def architecture_defaults(schema: type[ModelConfig]) -> dict[str, Any]:
    """The builder keyword arguments of ``schema``'s defaults: one table of hyper-parameters (the published model
    of the family), read by configs and Python callers alike."""
    return architecture_arguments(dataclasses.asdict(schema()))
