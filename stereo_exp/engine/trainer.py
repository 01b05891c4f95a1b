"""The training loop: build everything from the config, then step, log, validate and checkpoint.

Read it top to bottom: ``train(cfg)`` sets up the run and always closes MLflow and the process group;
``_run`` builds the pieces, restores a checkpoint if there is one, and runs the loop; ``train_step`` is one
optimizer step (forward under autocast -> sequence loss -> backward -> clip -> step -> schedule).

Reproducibility: the data order and every augmentation are pure functions of (seed, step) (see data/mix.py), the
model starts from ``seed``, and a checkpoint holds every other piece of state, so a run resumed at step k
computes exactly what the uninterrupted run computed (tested in tests/test_train.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stereo_exp import data, evaluation, models
from stereo_exp.engine import checkpoint as ckpt
from stereo_exp.engine.distributed import DistEnv
from stereo_exp.engine.loss import sequence_loss
from stereo_exp.engine.optim import build_optimizer
from stereo_exp.engine.schedule import build_scheduler
from stereo_exp.models.weights import load_weights
from stereo_exp.schemas import Precision, amp_dtype
from stereo_exp.tracking import MlflowTracker, SweepInfo

log = logging.getLogger(__name__)

# Keys that may differ between a checkpoint's config and the config that resumes it: they change how the run is
# observed or executed, not what it computes.
RESUMABLE_CHANGES = ("paths.", "tracking.", "loader.", "resume", "train.log_every", "train.max_steps",
                     "train.num_threads", "train.device", "checkpoint.", "speed.", "hydra")  # fmt: skip


class Preempted(Exception):
    """Raised after the checkpoint written on a stop signal (``STOP_SIGNALS``): the run can be resumed from it.

    ``handover`` is how the signal handlers that were installed before the trainer's (submitit's, see
    ``_StopSignal.hand_over``) ended: ``SystemExit`` after submitit requeued the job, an exception when it refused
    (e.g. ``UncompletedJobError``: out of requeues), None when there was no such handler or it returned.
    """

    def __init__(self, signum: int, step: int, handover: BaseException | None = None) -> None:
        super().__init__(f"Received {signal.Signals(signum).name}: checkpoint written at step {step}; exiting.")
        self.signum = signum
        self.step = step
        self.handover = handover

    @property
    def requeue_refused(self) -> bool:
        """True when submitit refused to requeue the job (it will not run again by itself)."""
        return isinstance(self.handover, Exception)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # final validation metrics, {"val/<dataset>/<metric>": value}
    model: nn.Module  # the trained network (unwrapped from DDP), identical on every rank
    checkpoint: Path | None  # the final checkpoint (None on ranks other than 0)
    run_id: str | None  # the MLflow run (None without tracking and on ranks other than 0)


@dataclass
class StepStats:
    loss: float  # this rank's loss (nan when non-finite)
    grad_norm: float  # global gradient norm before clipping (all ranks agree)
    skipped: bool  # True when the optimizer step was skipped because of non-finite values


def train(cfg: DictConfig) -> TrainResult:
    """Train as ``cfg`` says; returns the final validation metrics, the model and where the results are."""
    check_config(cfg)
    dist = DistEnv.from_environment(str(cfg.train.device))
    dist.init_process_group()
    # Records that cannot reach MLflow wait in the run directory (python -m stereo_exp.tracking.sync sends them).
    tracker = MlflowTracker(cfg.tracking, dist, spool_dir=Path(cfg.paths.output))
    status = "FAILED"
    try:
        result = _run(cfg, dist, tracker)
        status = "FINISHED"
        return result
    except Preempted as stop:
        # The resumed run (requeued job, or resume=auto by hand) continues this MLflow run; a job that submitit
        # refused to requeue will not come back by itself.
        status = "KILLED" if stop.requeue_refused else "RUNNING"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "RUNNING":
            tracker.end(status)
        dist.destroy()


def check_config(cfg: DictConfig) -> None:
    """Run every schema's checks (``__post_init__``, the ``train`` and ``checkpoint`` ones included), before any
    work: instantiating each schema dataclass makes it validate its own keys."""
    OmegaConf.to_object(cfg)


def setup_runtime(cfg: DictConfig, dist: DistEnv) -> None:
    """Process-wide settings, in one place: threads, seeds, backend flags, quiet logs on ranks other than 0."""
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # every rank builds identical initial weights
    torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)


def _run(cfg: DictConfig, dist: DistEnv, tracker: MlflowTracker) -> TrainResult:
    setup_runtime(cfg, dist)
    # Every rank works in rank 0's run directory: with torchrun each process composes its own config, and a
    # timestamped default directory can differ by a second between ranks.
    output = Path(dist.broadcast_object(str(cfg.paths.output)))
    device = dist.device
    autocast_dtype = amp_dtype(cfg.train.precision)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    schedule_steps = sum(cfg.mix.dataset_steps)  # the schedule always spans the whole mix
    stop_step = min(schedule_steps, cfg.train.max_steps or schedule_steps)

    # ---- state: fresh, resumed, or initialised from other weights --------------------------------------------
    state = _find_resume_state(cfg, output, resolved, dist.world_size)
    model = models.build_model(cfg.model).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    elif cfg.init_from:
        load_weights(model, cfg.init_from)
    optimizer = build_optimizer(model, cfg.optim, cfg.schedule.lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, schedule_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == Precision.fp16)
    start_step, nonfinite_streak = 0, 0
    history: dict[str, dict[str, float]] = {}  # "first" / "last" validation metrics, kept across resumes
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        start_step, nonfinite_streak = state["step"], state["nonfinite_streak"]
        history = state["validation"]
        log.info("Resumed from step %d", start_step)

    train_model: nn.Module = model
    if dist.is_distributed:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters,
        )  # fmt: skip
    train_model = models.prepare_for_training(train_model, cfg.speed, device)  # compile, allocator (speed section)

    # ---- tracking -----------------------------------------------------------------------------------------------
    sweep = SweepInfo.from_hydra()  # None unless this is a job of a multirun: then tagged and grouped
    run_name = cfg.tracking.run_name or _default_run_name(sweep)
    tracker.start(params=resolved, run_id=state.get("mlflow_run_id") if state else None, run_name=run_name,
                  sweep=sweep)  # fmt: skip
    if dist.is_main and state is None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        tracker.log_artifact(output / "config.yaml")

    saved_steps: list[int] = []  # steps checkpointed by this process (rank 0)

    def save(step: int) -> Path | None:
        if not dist.is_main:
            return None
        path = ckpt.checkpoint_path(output, step)
        if saved_steps and saved_steps[-1] == step:
            return path  # already written at this step (a periodic checkpoint, then a stop signal)
        saved_steps.append(step)
        path = ckpt.save_checkpoint(
            path,
            {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "rng": ckpt.rng_state(), "nonfinite_streak": nonfinite_streak, "validation": history,
                "mlflow_run_id": tracker.run_id, "world_size": dist.world_size, "config": resolved,
            },
        )  # fmt: skip
        ckpt.prune_checkpoints(output, cfg.checkpoint.keep_last, protect=path)
        return path

    def validate(step: int) -> dict[str, float]:
        result = evaluation.run_validation(
            model, cfg.eval, data_root=cfg.paths.data, dataset_options=cfg.datasets, num_iters=cfg.model.eval_iters,
            dist=dist, device=device, amp_dtype=autocast_dtype,
        )  # fmt: skip
        tracker.log_metrics({**result.metrics, **result.counts}, step)
        for name, figure in result.figures.items():
            tracker.log_figure(figure, f"validation/step_{step:07d}/{name}.png")
        history.setdefault("first", {"step": step, **result.metrics})
        history["last"] = {"step": step, **result.metrics}
        return result.metrics

    final_checkpoint = ckpt.checkpoint_path(output, stop_step) if dist.is_main else None

    def make_result() -> TrainResult:
        metrics = {k: v for k, v in history.get("last", {}).items() if k != "step"}
        return TrainResult(metrics=metrics, model=model, checkpoint=final_checkpoint, run_id=tracker.run_id)

    if start_step >= stop_step:
        log.info("Nothing to do: the checkpoint is at step %d of %d.", start_step, stop_step)
        return make_result()

    # ---- data ---------------------------------------------------------------------------------------------------
    loader = data.build_train_loader(
        cfg.mix, cfg.augmentation, cfg.loader, data_root=cfg.paths.data, dataset_options=cfg.datasets,
        batch_size=cfg.train.batch_size, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
        start_step=start_step, total_steps=stop_step,
    )  # fmt: skip

    # ---- loop ---------------------------------------------------------------------------------------------------
    stop_signal = _install_stop_signals()
    if start_step == 0:
        validate(0)
    samples_per_step = cfg.train.batch_size * dist.world_size
    window = _LogWindow()
    progress = tqdm(total=stop_step, initial=start_step, disable=not dist.is_main, desc="train", unit="step",
                    dynamic_ncols=True)  # fmt: skip
    batches = iter(loader)
    try:
        for step in range(start_step, stop_step):
            tic = time.perf_counter()
            batch = next(batches)
            data_time = time.perf_counter() - tic
            lr = optimizer.param_groups[0]["lr"]
            stats = train_step(train_model, batch, optimizer, scheduler, scaler, cfg, device, autocast_dtype)
            nonfinite_streak = nonfinite_streak + 1 if stats.skipped else 0
            if nonfinite_streak >= cfg.train.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{nonfinite_streak} consecutive steps (last: step {step}) had a non-finite loss or gradient "
                    f"norm (train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}). Lower schedule.lr, set "
                    "optim.clip_grad_norm, use train.precision=fp32, or look for bad ground truth "
                    "(python -m stereo_exp.eda)."
                )
            window.add(stats, data_time, time.perf_counter() - tic, lr)
            done = step + 1
            progress.update(1)

            if done % cfg.train.log_every == 0 or done == stop_step:
                metrics = window.summary(dist, samples_per_step)
                tracker.log_metrics(metrics, done)
                progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{lr:.2e}",
                                     sps=f"{metrics['train/samples_per_s']:.1f}")  # fmt: skip
            if done % cfg.train.val_every == 0 or done == stop_step:
                validate(done)
            if done % cfg.checkpoint.every == 0 or done == stop_step:
                save(done)
            if done < stop_step and (signals := stop_signal.agreed(dist)):
                save(done)
                dist.barrier()  # rank 0's checkpoint is complete before any rank hands over or leaves
                handover = stop_signal.hand_over(signals)  # submitit: rank 0 requeues the job here
                # srun may end a step when one task exits (KillOnBadExit): no rank leaves before the requeue.
                dist.barrier()
                raise Preempted(signals[-1], done, handover)
    finally:
        progress.close()
        stop_signal.restore()

    if dist.is_main:
        if cfg.tracking.log_checkpoint:
            tracker.log_artifact(final_checkpoint, "checkpoints")
        _print_summary(history, final_checkpoint, tracker)
    return make_result()


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: DictConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> StepStats:
    """One optimizer step on ``batch``; skips the update (and says so) when the gradients are not finite."""
    model.train()
    non_blocking = device.type == "cuda"
    left, right = (
        batch["left"].to(device, non_blocking=non_blocking),
        batch["right"].to(device, non_blocking=non_blocking),
    )
    gt, valid = (
        batch["disparity"].to(device, non_blocking=non_blocking),
        batch["valid"].to(device, non_blocking=non_blocking),
    )

    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        predictions = model(left, right, num_iters=cfg.model.train_iters)
    # The loss is computed in fp32 from the (possibly bf16/fp16) predictions.
    loss = sequence_loss([p.float() for p in predictions], gt, valid, gamma=cfg.loss.gamma,
                         max_disparity=cfg.loss.max_disparity)  # fmt: skip

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # After DDP's all-reduce every rank holds the same gradients, hence the same norm: the skip decision below is
    # identical on all ranks without another collective. A NaN loss on any rank makes every rank's norm NaN.
    max_norm = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm))
    skipped = not math.isfinite(grad_norm)
    if not skipped or scaler.is_enabled():
        scaler.step(optimizer)  # an enabled (fp16) GradScaler skips non-finite steps itself ...
    scaler.update()  # ... and lowers its scale (no-op when disabled)
    with warnings.catch_warnings():
        # The schedule follows the step count, taken or skipped: torch warns when a skipped first step left
        # optimizer.step() uncalled, which is intended here.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()
    return StepStats(loss=float(loss.detach()), grad_norm=grad_norm, skipped=skipped)


class _LogWindow:
    """Training statistics between two log steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.grad_norm_sum, self.steps, self.finite_steps, self.skipped = 0.0, 0.0, 0, 0, 0
        self.data_time, self.step_time, self.lr = 0.0, 0.0, 0.0
        self.started = time.perf_counter()

    def add(self, stats: StepStats, data_time: float, step_time: float, lr: float) -> None:
        self.steps += 1
        self.lr = lr
        self.data_time += data_time
        self.step_time += step_time
        if stats.skipped:
            self.skipped += 1
        else:
            self.loss_sum += stats.loss
            self.grad_norm_sum += stats.grad_norm
            self.finite_steps += 1

    def summary(self, dist: DistEnv, samples_per_step: int) -> dict[str, float]:
        """Averages over the window and over ranks (a collective: every rank calls it at the same steps)."""
        totals = torch.tensor([self.loss_sum, float(self.finite_steps)], dtype=torch.float64)
        if dist.is_distributed:
            totals = dist.all_reduce_sum(totals.to(dist.device)).cpu()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        metrics = {
            "train/loss": float(totals[0] / max(totals[1].item(), 1.0)),
            "train/lr": self.lr,
            "train/grad_norm": self.grad_norm_sum / max(self.finite_steps, 1),
            "train/samples_per_s": self.steps * samples_per_step / elapsed,
            "train/data_wait_share": self.data_time / max(self.step_time, 1e-9),
            "train/skipped_steps": float(self.skipped),
        }
        self.reset()
        return metrics


# Signals that stop the run after the current step with a checkpoint. SIGTERM: scancel, preemption, `scontrol
# requeue`, the end of a time limit. SIGUSR1/SIGUSR2: a warning before the time limit (`sbatch --signal=...`);
# SIGUSR2 is submitit's (SUBMITIT_PREEMPT_SIGNAL). Ordered: the last one received by any rank names the stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class _StopSignal:
    """Records stop signals so that the loop can checkpoint between two steps, then hands over to the handlers
    that were installed before (submitit's: SIGUSR2 requeues the job, SIGTERM is logged)."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:
            # A DataLoader worker forked after the install: SLURM signals every process of the job step, the
            # worker inherited this handler, and the training process alone acts on the signal.
            return
        if not self.received:
            log.warning("Received %s: checkpointing after this step.", signal.Signals(signum).name)
        self.received.add(signum)

    def agreed(self, dist: DistEnv) -> list[int]:
        """The stop signals received by any rank, in ``STOP_SIGNALS`` order (a collective: every rank, every step)."""
        flags = dist.any_rank_each([signum in self.received for signum in STOP_SIGNALS])
        return [signum for signum, flag in zip(STOP_SIGNALS, flags, strict=True) if flag]

    def hand_over(self, signums: list[int]) -> BaseException | None:
        """Call the previous Python handler of each agreed signal, as the signal itself would have, after our
        checkpoint. submitit's SIGUSR2 handler requeues the job on rank 0 (calling the launcher's ``checkpoint()``)
        and ends with ``SystemExit``; on other ranks it only logs. Returns how a handler ended (SystemExit or the
        exception it raised) for the caller to re-raise once every rank is done, None when all returned."""
        for signum in signums:
            handler = self._previous.get(signum)
            if not callable(handler):  # SIG_DFL / SIG_IGN / not installed from Python
                continue
            try:
                handler(signum, None)
            except BaseException as outcome:  # SystemExit(-1) after a requeue is submitit's normal way out
                return outcome
        return None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _install_stop_signals() -> _StopSignal:
    stop = _StopSignal()
    for signum in STOP_SIGNALS:
        # signal.signal raises ValueError off the main thread (e.g. a test runner thread): no handling there.
        with contextlib.suppress(ValueError):
            stop._previous[signum] = signal.signal(signum, stop.handle)
    return stop


def _find_resume_state(
    cfg: DictConfig, output: Path, resolved: dict[str, Any], world_size: int
) -> dict[str, Any] | None:
    """The checkpoint to continue from (``resume=auto|PATH|null``), checked against the current config."""
    if cfg.resume is None:
        return None
    path = ckpt.latest_checkpoint(output) if cfg.resume == "auto" else Path(cfg.resume)
    if path is None:
        return None
    state = ckpt.load_checkpoint(path)
    changed = [k for k in _diff_keys(state["config"], resolved) if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ValueError(
            f"Cannot resume from {path}: the config differs in {', '.join(sorted(changed))}. A resumed run must "
            "compute what the interrupted run would have; start a new run directory (hydra.run.dir=...) or pass "
            "resume=null, or use init_from=PATH to start from these weights."
        )
    if state.get("world_size", world_size) != world_size:
        raise ValueError(
            f"Cannot resume from {path}: it was written by a run of {state['world_size']} processes and this one has "
            f"{world_size}. The global batch (train.batch_size x processes) decides which samples each step draws; "
            "resume with the same number of processes, or use init_from=PATH to start a new run from these weights."
        )
    log.info("Resuming from %s", path)
    return state


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _default_run_name(sweep: SweepInfo | None) -> str | None:
    """<model>-<mix>-<schedule> of this run's choices, and " #<job num>" for a job of a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        name = "-".join(str(choices.get(group)) for group in ("model", "mix", "schedule"))
    except ValueError:  # no Hydra context (tests calling train(cfg) directly)
        return None
    return f"{name} #{sweep.job_num}" if sweep is not None else name


def _print_summary(history: dict[str, dict[str, float]], checkpoint: Path, tracker: MlflowTracker) -> None:
    first, last = history.get("first", {}), history.get("last", {})
    keys = [k for k in last if k != "step"]
    width = max((len(k) for k in keys), default=10)
    lines = [
        f"{'metric':<{width}}  {'step ' + str(int(first.get('step', 0))):>12}  {'step ' + str(int(last['step'])):>12}"
    ]
    lines += [f"{k:<{width}}  {first.get(k, float('nan')):>12.4f}  {last[k]:>12.4f}" for k in keys]
    print("\nValidation summary\n" + "\n".join(lines))
    print(f"Checkpoint: {checkpoint}")
    if tracker.active:
        print(f"MLflow run: {tracker.run_url()}  (mlflow ui --backend-store-uri {tracker.cfg.uri})")
