"""Learning rate as a pure function of the step.

    step:  0 ........ warmup_steps ........ decay_start ................... total_steps - 1
    lr:    warmup_factor*lr -> lr (linear)   lr (constant)   lr -> min_lr (cosine | linear | exponential)

``decay_start = max(decay_after_steps, warmup_steps)``: decay never interrupts the warm-up, so a sweep over
``decay_after_steps=0,30000`` with a 6000-step warm-up starts decaying right after the warm-up.
``min_lr`` is reached exactly at the last step (``total_steps - 1``), the one the last optimizer step uses.

The torchvision reference hands absolute learning rates to ``LinearLR``/``ConstantLR``, which expect factors;
here ``lr_at`` returns the learning rate and ``build_scheduler`` wraps ``lr_at / lr`` in ``LambdaLR``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from stereo_exp.engine.config import Decay, ScheduleConfig


def lr_at(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """Learning rate used by the optimizer step number ``step`` (0-based) of a ``total_steps`` run."""
    if step < cfg.warmup_steps:
        return cfg.lr * (cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_steps)
    decay_start = max(cfg.decay_after_steps, cfg.warmup_steps)
    if step < decay_start:
        return cfg.lr
    last_step = total_steps - 1
    progress = 1.0 if last_step <= decay_start else min(1.0, (step - decay_start) / (last_step - decay_start))
    if cfg.decay == Decay.cosine:
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.decay == Decay.linear:
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    return cfg.lr * (cfg.min_lr / cfg.lr) ** progress


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> LambdaLR:
    """``LambdaLR`` whose factor at step s is ``lr_at(s) / lr``; the optimizer's base lr must be ``cfg.lr``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = cfg.lr
    return LambdaLR(optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)
