"""Optimizer from config, and the global-norm gradient clipping setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn


class OptimizerName(str, Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adam  # adam (the published recipes) | adamw | sgd; lr: schedule group
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam/sgd; never applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw moment decay rates
    eps: float = 1e-8  # adam/adamw denominator guard
    momentum: float = 0.9  # sgd momentum
    nesterov: bool = False  # sgd Nesterov momentum
    clip_grad_norm: float | None = None  # clip the global gradient norm to this value; null = no clipping
    fused: bool | None = None  # one fused kernel per step; skips non-finite steps without a host sync; null: on CUDA

    def __post_init__(self) -> None:
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"optim.clip_grad_norm must be > 0 or null; got {self.clip_grad_norm}.")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must hold two values; got {list(self.betas)}.")


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters; 1-d tensors (biases, norms) get no weight decay.

    ``optim.fused=null`` picks the fused kernels where the parameters are on a GPU: one launch per step, and
    ``train_step`` passes them the non-finite flag as a tensor (``found_inf``, as torch's GradScaler does), so a
    skipped step needs no host sync. On a CPU torch's fused kernels are much slower than the default ones.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = cfg.fused if cfg.fused is not None else all(p.is_cuda for group in groups for p in group["params"])
    if cfg.name == OptimizerName.adamw:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    if cfg.name == OptimizerName.adam:
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused or None)
