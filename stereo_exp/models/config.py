"""Fields shared by every ``model`` group schema; each architecture file extends ``ModelConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

# Keys of the model group that are not constructor arguments of the architecture.
NON_ARCHITECTURE_KEYS = ("name", "weights", "train_iters", "eval_iters")


@dataclass
class ModelConfig:
    name: str = MISSING  # registered builder, e.g. crestereo_base | raft_stereo_base | raft_stereo_realtime
    weights: str | None = None  # published weights name (e.g. MEGVII_V1) or a local .pth / checkpoint; null = random
    train_iters: int = 10  # recurrent refinement updates per forward pass during training
    eval_iters: int = 10  # recurrent refinement updates during validation
