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
from dataclasses import dataclass
from enum import Enum

import torch
from torch.optim.lr_scheduler import LambdaLR


class Decay(str, Enum):
    cosine = "cosine"
    linear = "linear"
    exponential = "exponential"


@dataclass
class ScheduleConfig:
    lr: float = 4e-4  # peak learning rate (after warm-up, before decay)
    min_lr: float = 2e-5  # learning rate at the last step
    warmup_steps: int = 0  # linear ramp from warmup_factor*lr to lr over these steps (0 = no warm-up)
    warmup_factor: float = 0.02  # learning rate at step 0, as a fraction of lr
    decay_after_steps: int = 0  # lr is held constant until this step (decay starts after the warm-up at the earliest)
    decay: Decay = Decay.cosine  # cosine | linear | exponential: shape of the decay from lr to min_lr

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"schedule.lr must be > 0 (the peak learning rate); got {self.lr}.")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"schedule.min_lr ({self.min_lr}) must lie in [0, schedule.lr ({self.lr})].")
        if self.decay == Decay.exponential and self.min_lr <= 0:
            raise ValueError("schedule.decay=exponential needs schedule.min_lr > 0 (it decays by a constant ratio).")
        if self.warmup_steps < 0 or self.decay_after_steps < 0:
            raise ValueError("schedule.warmup_steps and schedule.decay_after_steps must be >= 0.")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"schedule.warmup_factor must lie in (0, 1]; got {self.warmup_factor}.")


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
