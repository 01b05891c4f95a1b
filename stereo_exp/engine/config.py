"""Schemas of the ``schedule``, ``optim`` and ``loss`` config groups (conf/schedule/*.yaml, conf/optim/*.yaml,
conf/loss/*.yaml). They live apart from schedule.py, optim.py and loss.py, which use them, so that composing a config
(every ``--help`` and ``--cfg job``) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
    average_decay: float | None = None  # validate and keep weights averaged over steps (EMA); null = trained ones

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
        if self.average_decay is not None and not 0 < self.average_decay < 1:
            raise ValueError(
                f"schedule.average_decay must lie in (0, 1) (e.g. 0.995: about the last 200 steps) or be null; "
                f"got {self.average_decay}."
            )


class OptimizerName(str, Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


class Implementation(str, Enum):
    """How torch runs the update of every parameter (same formula; float rounding may differ in the last bit)."""

    auto = "auto"  # fused where torch has a fused kernel for the parameters' device (cuda, cpu, ...), else for_loop
    fused = "fused"  # one kernel for all parameters: on a GPU one launch instead of several per parameter
    foreach = "foreach"  # one multi-tensor op per formula step (GPU); on a CPU the same as for_loop
    for_loop = "for_loop"  # a few ops per parameter (torch's default on CPU)


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adam  # adam (the published recipes) | adamw | sgd; lr: schedule group
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam/sgd; never applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw moment decay rates
    eps: float = 1e-8  # adam/adamw denominator guard
    momentum: float = 0.9  # sgd momentum
    nesterov: bool = False  # sgd Nesterov momentum
    clip_grad_norm: float | None = None  # clip the global gradient norm to this value; null = no clipping
    implementation: Implementation = Implementation.auto  # auto (fused where available) | fused | foreach | for_loop

    def __post_init__(self) -> None:
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"optim.clip_grad_norm must be > 0 or null; got {self.clip_grad_norm}.")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must hold two values; got {list(self.betas)}.")


class LossNormalization(str, Enum):
    valid = "valid"  # mean over valid pixels
    all = "all"  # mean over all pixels (and channels) with the valid mask multiplied in: torchvision's reference


@dataclass
class LossConfig:
    gamma: float = 0.8  # weight of prediction i of N is gamma**(N-1-i): later refinements count more
    max_disparity: float | None = None  # ground truth at or above this many pixels is left out; null = keep all
    normalization: LossNormalization = LossNormalization.valid  # valid: mean over valid px | all: all px (reference)
    vertical: bool = False  # also supervise a 2-D flow model's vertical channel towards 0 (CREStereo; reference: on)

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"loss.gamma must lie in (0, 1]; got {self.gamma}.")
        if self.max_disparity is not None and self.max_disparity <= 0:
            raise ValueError(f"loss.max_disparity must be > 0 or null; got {self.max_disparity}.")
