"""The state a training run carries from one step to the next, saving and loading itself (torchtitan's Stateful
pieces, nanoGPT's checkpoint dict).

``TrainState.state_dict()`` is the checkpoint; every key is spelled here and nowhere else:

    model, optimizer, scheduler, scaler   state_dicts
    model_averaged                        the averaged weights (schedule.average_decay; absent without it)
    step                                  optimizer steps done (the next step to run)
    rng                                   torch / cuda / numpy / python generator states
    log_window                            sums of the steps since the last log step (LogWindow), per rank
    nonfinite_streak                      consecutive skipped (non-finite) steps
    validation                            "first" and "last" validation metrics, each with its step
    mlflow_run_id                         so a resumed run continues the same MLflow run
    world_size, device, num_threads       how the run computes: a resume that changes them is not exact
    config                                the resolved config as plain Python types

Everything a replayed step needs to log the numbers the uninterrupted run logged is in there: a run killed between
two log steps resumes with the sums of the steps it already took since the last log step.

Per-step bookkeeping stays on the device (``LogWindow.add``, ``TrainState.count_nonfinite``): a step never waits
for the GPU. Values reach the host at log, validation and checkpoint steps only.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from stereo_exp.distributed import DistEnv
from stereo_exp.engine import checkpoint as ckpt


@dataclass
class StepStats:
    """What one ``train_step`` reports, as 0-d tensors on the training device (reading one waits for the step)."""

    loss: Tensor  # this rank's loss, float32 (non-finite when the step was skipped)
    grad_norm: Tensor  # global gradient norm before clipping (every rank holds the same value)
    skipped: Tensor  # bool: the update was skipped because the gradients were not finite (same on every rank)


class LogWindow:
    """Training statistics of the steps since the last log step.

    The sums live on the training device, so ``add`` never waits for a step to finish; ``summary`` reads them at a
    log step. ``state_dict``/``load_state_dict`` carry the sums through a checkpoint (the loss per rank: each rank
    sums its own losses), so the first log step after a resume averages the same steps as the uninterrupted run.
    Timing (samples/s, data wait) is measured on the host and starts afresh after a resume.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        def zero(dtype: torch.dtype) -> Tensor:
            return torch.zeros((), dtype=dtype, device=self.device)

        self.loss_sum = zero(torch.float64)  # this rank's losses of the finite steps
        self.grad_norm_sum = zero(torch.float64)  # gradient norms of the finite steps (the same on every rank)
        self.finite_steps = zero(torch.int64)
        self.skipped_steps = zero(torch.int64)
        self.timed_steps = 0  # steps since the clock started (a resumed window's earlier steps are not timed)
        self.data_wait = 0.0  # seconds the training process waited for batches
        self.paused = 0.0  # seconds of validation and checkpoint writing, left out of the training time
        self.started = time.perf_counter()

    def add(self, stats: StepStats, data_wait: float) -> None:
        finite = ~stats.skipped
        self.loss_sum += torch.where(finite, stats.loss.double(), 0.0)  # NaN * 0 would be NaN: select instead
        self.grad_norm_sum += torch.where(finite, stats.grad_norm.double(), 0.0)
        self.finite_steps += finite
        self.skipped_steps += stats.skipped
        self.timed_steps += 1
        self.data_wait += data_wait

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (validation, checkpoint writing) out of the training time of this window."""
        self.paused += seconds

    def summary(self, dist: DistEnv, samples_per_step: int, lr: float) -> dict[str, float]:
        """Averages over the window and over ranks, then a new window (a collective: every rank, same steps).

        ``train/samples_per_s`` and ``train/data_wait_share`` count training time only: validation and
        checkpoint writing are left out (``val/seconds`` reports validation time).
        """
        across_ranks = torch.stack([self.loss_sum, self.finite_steps.double()])
        if dist.is_distributed:
            across_ranks = dist.all_reduce_sum(across_ranks)
        loss_sum, finite_all, grad_norm_sum, finite, skipped = torch.cat(
            [across_ranks, torch.stack([self.grad_norm_sum, self.finite_steps.double(), self.skipped_steps.double()])]
        ).tolist()  # the one host read of the window: it waits for the last step
        elapsed = max(time.perf_counter() - self.started - self.paused, 1e-9)
        metrics = {
            "train/loss": loss_sum / max(finite_all, 1.0),
            "train/lr": lr,
            "train/grad_norm": grad_norm_sum / max(finite, 1.0),
            "train/samples_per_s": self.timed_steps * samples_per_step / elapsed,
            "train/data_wait_share": self.data_wait / elapsed,
            "train/skipped_steps": skipped,
        }
        self.reset()
        return metrics

    def state_dict(self, dist: DistEnv) -> dict[str, Any]:
        """The sums (a collective: the losses of every rank are gathered, each rank's in its own slot)."""
        loss_sums = torch.zeros(dist.world_size, dtype=torch.float64, device=self.device)
        loss_sums[dist.rank] = self.loss_sum
        if dist.is_distributed:
            loss_sums = dist.all_reduce_sum(loss_sums)
        return {
            "loss_sum": loss_sums.cpu(),  # (world_size,) float64: rank r's sum in slot r
            "grad_norm_sum": float(self.grad_norm_sum),
            "finite_steps": int(self.finite_steps),
            "skipped_steps": int(self.skipped_steps),
        }

    def load_state_dict(self, state: dict[str, Any], dist: DistEnv) -> None:
        self.reset()
        loss_sums = state["loss_sum"]
        if len(loss_sums) == dist.world_size:
            mine = loss_sums[dist.rank]
        else:  # another process count (train.allow_inexact_resume): rank 0 carries the whole sum
            mine = loss_sums.sum() if dist.is_main else torch.zeros((), dtype=torch.float64)
        self.loss_sum.copy_(mine)
        self.grad_norm_sum.fill_(state["grad_norm_sum"])
        self.finite_steps.fill_(state["finite_steps"])
        self.skipped_steps.fill_(state["skipped_steps"])


class AveragedWeights:
    """An exponential moving average of a network's weights over the optimizer steps (``schedule.average_decay``).

    After each step, every floating-point parameter and buffer moves towards the network's by ``1 - decay``:
    ``avg <- decay * avg + (1 - decay) * weight``, so a weight of k steps ago counts ``(1 - decay) * decay**k``
    (0.995: about the last 200 steps). Validation and evaluation use these weights; training goes on from the
    network's own. Averaging smooths the noise of the last steps that a short run ends in (the embedded default:
    motorcycle mae 4.30 -> 3.96 px at the same step; docs/REFERENCE.md, "The embedded default").
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.network = copy.deepcopy(model).requires_grad_(False)  # starts at the network's weights
        # The pairs are listed once: training and loading a checkpoint change the tensors in place, never replace them.
        pairs = zip(self._tensors(self.network), self._tensors(model), strict=True)
        floating = [(averaged, current) for averaged, current in pairs if averaged.is_floating_point()]
        self._averaged = [averaged for averaged, _ in floating]
        self._current = [current for _, current in floating]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights (after each optimizer step)."""
        torch._foreach_lerp_(self._averaged, self._current, 1.0 - self.decay)  # one fused pass over every tensor

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]


@dataclass
class TrainState:
    """Everything that changes while a run trains; ``state_dict()`` is its checkpoint (module docstring)."""

    model: nn.Module  # the network (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    window: LogWindow
    config: dict[str, Any]  # the resolved config, plain types
    world_size: int = 1  # processes of the run
    num_threads: int = 1  # torch intra-op threads of each process (decides CPU results)
    step: int = 0  # optimizer steps done: the next step to run
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # "first" / "last" metrics with "step"
    mlflow_run_id: str | None = None
    averaged: AveragedWeights | None = None  # schedule.average_decay: the weights validated and evaluated
    nonfinite_streak: Tensor = field(init=False)  # consecutive skipped steps (device, int64)
    nonfinite_limit_step: Tensor = field(init=False)  # the step where the streak reached the limit; -1: not yet

    def __post_init__(self) -> None:
        self.nonfinite_streak = torch.zeros((), dtype=torch.int64, device=self.window.device)
        self.nonfinite_limit_step = torch.full((), -1, dtype=torch.int64, device=self.window.device)

    @property
    def device(self) -> torch.device:
        return self.window.device

    @property
    def evaluated_model(self) -> nn.Module:
        """The network that validation measures: the averaged weights when the run keeps them."""
        return self.averaged.network if self.averaged is not None else self.model

    def count_nonfinite(self, skipped: Tensor, step: int, limit: int) -> None:
        """Update the streak of skipped steps on the device; remember the step at which it first reaches
        ``limit`` (``check_finite`` reads it at the next log, validation or checkpoint step)."""
        self.nonfinite_streak = torch.where(skipped, self.nonfinite_streak + 1, 0)
        reached = (self.nonfinite_streak >= limit) & (self.nonfinite_limit_step < 0)
        self.nonfinite_limit_step = torch.where(reached, step, self.nonfinite_limit_step)

    def nonfinite_limit_reached(self) -> int | None:
        """The step at which ``limit`` consecutive steps were skipped, or None (reads the device: a sync)."""
        step = int(self.nonfinite_limit_step)
        return step if step >= 0 else None

    def state_dict(self, dist: DistEnv) -> dict[str, Any]:
        """The checkpoint (a collective: every rank calls it at the same step; only rank 0 writes it)."""
        averaged = {"model_averaged": self.averaged.network.state_dict()} if self.averaged is not None else {}
        return {
            "model": self.model.state_dict(),
            **averaged,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": ckpt.rng_state(),
            "log_window": self.window.state_dict(dist),
            "nonfinite_streak": int(self.nonfinite_streak),
            "validation": self.validation,
            "mlflow_run_id": self.mlflow_run_id,
            "world_size": self.world_size,
            "device": self.device.type,
            "num_threads": self.num_threads,
            "config": self.config,
        }

    def load_state_dict(self, state: dict[str, Any], dist: DistEnv) -> None:
        """Restore a checkpoint written by ``state_dict`` (``config``, ``world_size``, ``device`` and
        ``num_threads`` describe the run that wrote it and stay as this run sets them)."""
        self.model.load_state_dict(state["model"])
        if self.averaged is not None:  # a checkpoint without them (a resume the user allowed to be inexact): restart
            self.averaged.network.load_state_dict(state.get("model_averaged", state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        ckpt.set_rng_state(state["rng"])
        if "log_window" in state:  # absent from checkpoints written before it was kept
            self.window.load_state_dict(state["log_window"], dist)
        self.nonfinite_streak.fill_(state["nonfinite_streak"])
        self.validation = state["validation"]
        self.mlflow_run_id = state["mlflow_run_id"]
