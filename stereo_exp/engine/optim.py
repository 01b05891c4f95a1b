"""Optimizer from config (``OptimConfig`` in engine/config.py, also the global-norm gradient clipping setting)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from stereo_exp.engine.config import Implementation, OptimConfig, OptimizerName


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters; 1-d tensors (biases, norms) get no weight decay.

    Fused kernels (``optim.implementation=auto`` picks them where torch has them, CPU included: 7x faster than the
    per-parameter loop for Adam over 6 M parameters on 2 CPU cores) also take the non-finite flag as a tensor
    (``found_inf``, as torch's GradScaler hands it to them), so ``train_step`` skips such a step without a host sync.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = implementation_options(cfg.implementation, [*decay, *no_decay])
    if cfg.name == OptimizerName.adamw:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **kernel)
    if cfg.name == OptimizerName.adam:
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **kernel)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **kernel)


def implementation_options(implementation: Implementation | str, params: list[torch.Tensor]) -> dict[str, bool]:
    """The ``fused`` / ``foreach`` keyword arguments of torch's optimizers for ``implementation``."""
    implementation = Implementation(implementation)
    if implementation == Implementation.auto:
        devices = {param.device.type for param in params}
        fused_devices = set(_get_fused_kernels_supported_devices())
        fusable = all(param.is_floating_point() for param in params) and devices <= fused_devices
        implementation = Implementation.fused if fusable else Implementation.for_loop
    return {
        Implementation.fused: {"fused": True},
        Implementation.foreach: {"foreach": True},
        Implementation.for_loop: {"foreach": False},
    }[implementation]
