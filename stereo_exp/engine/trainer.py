"""The training loop: check everything, build the pieces, then step, log, validate and checkpoint.

Read it top to bottom: ``train(cfg)`` types the composed config once (``config.typed`` runs every schema's
checks), checks the whole run before any side effect and always closes MLflow and the process group; ``_run``
decides where the run starts (engine/resume.py), builds the model and the ``TrainState`` (engine/state.py), claims
the run directory, starts MLflow and runs the loop; ``train_step`` is one optimizer step (forward under autocast ->
sequence loss -> backward -> clip -> step -> schedule), with the few settings it reads in ``StepOptions``.

Reproducibility: the data order and every augmentation are pure functions of (seed, step) (see data/mix.py), the
model starts from ``seed``, and a checkpoint holds every other piece of state, the log window included, so a run
resumed at step k computes and logs exactly what the uninterrupted run did (tests/test_kill_resume.py).

Speed: a step never waits for the GPU. ``train_step`` returns device tensors, the log window sums them on the device,
a non-finite step is skipped on the device (fused optimizers) and the stop-signal agreement is a host-side
collective; values are read at log, validation and checkpoint steps only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stereo_exp import evaluation, models
from stereo_exp.cli import (
    HeldStops,
    detach_from_terminal,
    output_is_hydra_run_dir,
    refuse_another_commands_folder,
    save_hydra_records,
)
from stereo_exp.config import Config, to_plain, typed
from stereo_exp.data.loader import Shard, build_train_loader
from stereo_exp.distributed import DistEnv
from stereo_exp.engine import resume
from stereo_exp.engine.checkpoint import Checkpointer, load_checkpoint
from stereo_exp.engine.loss import LossConfig, forward_options, sequence_loss
from stereo_exp.engine.optim import build_optimizer
from stereo_exp.engine.preflight import check_run
from stereo_exp.engine.schedule import build_scheduler
from stereo_exp.engine.state import AveragedWeights, LogWindow, StepStats, TrainState
from stereo_exp.models.weights import load_weights
from stereo_exp.schemas import Precision, amp_dtype, emulated_precision_warning
from stereo_exp.tracking import MlflowTracker, SweepInfo, default_run_name

__all__ = ["NonFiniteLossError", "Preempted", "StepOptions", "StepStats", "TrainResult", "train", "train_step"]

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised after the checkpoint written on a stop signal (``STOP_SIGNALS``): the run can be resumed from it.

    ``handover`` is how the signal handlers that were installed before the trainer's (submitit's, see
    ``_StopSignal.hand_over``) ended: ``SystemExit`` after submitit requeued the job, an exception when it refused
    (e.g. ``UncompletedJobError``: out of requeues), None when there was no such handler or it returned.
    ``is_main``: raised on rank 0, the process that tells the user (every rank raises it).
    """

    def __init__(self, signum: int, step: int, handover: BaseException | None = None, is_main: bool = True) -> None:
        if signum == signal.SIGINT:
            message = f"Interrupted (Ctrl-C): checkpoint written at step {step}."
        else:
            message = f"Received {signal.Signals(signum).name}: checkpoint written at step {step}; exiting."
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.handover = handover
        self.is_main = is_main

    @property
    def requeued(self) -> bool:
        """True when submitit requeued the job: it runs again by itself and continues this run."""
        return isinstance(self.handover, SystemExit)


class _UploadStopped(KeyboardInterrupt):
    """A second Ctrl-C during the final checkpoint's upload to MLflow. A KeyboardInterrupt, which libraries let
    through (MLflow wraps any Exception raised inside its calls); ``train`` makes it a ``Preempted`` at ``step``: the
    checkpoint is written, and the same command resumes the run's end."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclasses.dataclass
class TrainResult:
    metrics: dict[str, float]  # final validation metrics, {"val/<dataset>/<metric>": value}
    model: nn.Module  # the network the metrics measure (averaged weights with schedule.average_decay), unwrapped
    checkpoint: Path | None  # the final checkpoint (None on ranks other than 0)
    run_id: str | None  # the MLflow run (None without tracking and on ranks other than 0)


def train(cfg: DictConfig) -> TrainResult:
    """Train as the composed config ``cfg`` says; returns the final validation metrics, the model and where the
    results are. The one place where the config is typed: everything below reads the ``Config`` object."""
    config: Config = typed(cfg)  # every schema's own checks run here
    hydra_output = output_is_hydra_run_dir(cfg)  # else paths.output was set by hand
    check_run(config)  # the datasets, the weights, cross-group checks: before anything is created or downloaded
    refuse_another_commands_folder()  # hydra.run.dir= of an evaluation, say
    dist = DistEnv.from_environment(config.train.device)
    dist.init_process_group()
    tracker: MlflowTracker | None = None
    output: Path | None = None
    status = "FAILED"
    # Installed from the training loop on (_train) until the MLflow run has ended: a stop signal during the end waits
    # for it, rather than killing the process with the run left RUNNING.
    stop_signal = _StopSignal()
    try:
        # Every rank works in rank 0's run directory: with torchrun each process composes its own config, and a
        # timestamped default directory can differ by a second between ranks.
        output = Path(dist.broadcast_object(config.paths.output))
        # Records that cannot reach MLflow wait in the run directory (python -m stereo_exp.tracking.sync sends them).
        tracker = MlflowTracker(config.tracking, dist, spool_dir=output)
        result = _run(config, dist, output, tracker, hydra_output, stop_signal)
        status = "FINISHED"
        return result
    except Preempted as stop:
        # A job that submitit requeued comes back by itself and continues this MLflow run: it stays RUNNING. Any
        # other stop (Ctrl-C, `kill`, scancel, a refused requeue) waits for someone to resume it: KILLED until then
        # (a resumed run is RUNNING again).
        status = "RUNNING" if stop.requeued else "KILLED"
        raise
    except KeyboardInterrupt as stop:
        status = "KILLED"
        if isinstance(stop, _UploadStopped):
            raise Preempted(signal.SIGINT, stop.step, is_main=dist.is_main) from None
        raise
    finally:
        stop_signal.hold()  # the MLflow run's end is recorded whole (cut, it could leave a SQLite store locked)
        if tracker is not None and status != "RUNNING":
            tracker.end(status)
        stop_signal.restore()
        if output is not None:
            resume.unlock(output)
        dist.destroy()


def setup_runtime(cfg: Config, dist: DistEnv) -> None:
    """Process-wide settings, in one place: threads, seeds, backend flags, quiet logs on ranks other than 0."""
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # every rank builds identical initial weights
    torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)


def _run(
    cfg: Config, dist: DistEnv, output: Path, tracker: MlflowTracker, hydra_output: bool, stop_signal: _StopSignal
) -> TrainResult:
    setup_runtime(cfg, dist)
    device = dist.device
    resolved = to_plain(cfg)  # config.yaml, the checkpoint's record of the config, the MLflow params
    schedule_steps = sum(cfg.mix.dataset_steps)  # the schedule always spans the whole mix
    stop_step = min(schedule_steps, cfg.train.max_steps or schedule_steps)
    if dist.is_main and (slow := emulated_precision_warning("train.precision", cfg.train.precision, device)):
        log.warning(slow)

    # ---- where the run starts: fresh, resumed, or restarted; decided by rank 0, nothing written yet -------------
    new_dir_override = _new_dir_override(output, hydra_output) if dist.is_main else ""
    start = _find_start(cfg, dist, output, resolved, new_dir_override)

    # ---- model and training state (published weights download here, after every check) ---------------------
    model_cfg = dataclasses.replace(cfg.model, weights=None) if start.state is not None else cfg.model
    model = models.build_model(model_cfg).to(device)  # a checkpoint's weights replace any initial ones
    if start.state is None and cfg.init_from:
        load_weights(model, cfg.init_from)
    optimizer = build_optimizer(model, cfg.optim, cfg.schedule.lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, schedule_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == Precision.fp16)
    threads = torch.get_num_threads()
    state = TrainState(model, optimizer, scheduler, scaler, LogWindow(device), resolved, dist.world_size, threads)
    if cfg.schedule.average_decay is not None:
        state.averaged = AveragedWeights(model, cfg.schedule.average_decay)
    if start.state is not None:
        state.load_state_dict(start.state, dist)
        log.info("Resumed from step %d", state.step)
    train_model: nn.Module = model
    if dist.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        unused = cfg.train.find_unused_parameters
        train_model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
    train_model = models.prepare_for_training(train_model, cfg.speed, device)  # compile, allocator (speed section)

    # ---- the run directory and the MLflow run: the first side effects -------------------------------------------
    checkpointer = Checkpointer(output, keep_last=cfg.checkpoint.keep_last, is_main=dist.is_main)
    if dist.is_main:
        if start.claim:
            resume.claim(output, resolved, start.run_key)
        save_hydra_records(cfg, replace=False)  # the command that started the run, kept by every resume
        checkpointer.remove_partial_writes()
    sweep = SweepInfo.from_hydra()  # None unless this is a job of a multirun: then tagged and grouped
    run_id = tracker.start(
        params=resolved,
        run_id=start.mlflow_run_id,
        default_name=default_run_name(sweep),
        sweep=sweep,
        run_key=start.run_key,
    )
    state.mlflow_run_id = run_id or start.mlflow_run_id  # kept through an attempt with tracking.backend=none
    if dist.is_main:
        resume.record_mlflow_run(output, start.run_key, run_id)
        if (output / resume.CONFIG_FILE).is_file():
            tracker.log_artifact(output / resume.CONFIG_FILE)
        if start.inexact:
            tracker.set_tags({f"stereo_exp.inexact_resume.step_{state.step}": "; ".join(start.inexact)})

    if state.step < stop_step:
        _train(cfg, dist, state, train_model, tracker, checkpointer, stop_step, stop_signal)
        final_checkpoint = checkpointer.path(stop_step)
    else:
        stop_signal.install()
        log.info("Nothing to do: the checkpoint is at step %d of %d.", state.step, stop_step)
        final_checkpoint = start.checkpoint

    # ---- the end: also reached again by a run resumed after its final checkpoint -------------------------------
    stop_signal.run_ends(state.step)  # a stop now waits for the end
    if dist.is_main:
        if cfg.tracking.log_checkpoint:
            with stop_signal.upload():  # minutes to a remote server: a second Ctrl-C leaves it to a resume
                tracker.log_artifact(final_checkpoint, "checkpoints")
        _print_summary(state.validation, final_checkpoint, tracker)
    metrics = {k: v for k, v in state.validation.get("last", {}).items() if k != "step"}
    checkpoint = final_checkpoint if dist.is_main else None
    return TrainResult(metrics=metrics, model=state.evaluated_model, checkpoint=checkpoint, run_id=tracker.run_id)


def _train(
    cfg: Config,
    dist: DistEnv,
    state: TrainState,
    train_model: nn.Module,
    tracker: MlflowTracker,
    checkpointer: Checkpointer,
    stop_step: int,
    stop_signal: _StopSignal,
) -> None:
    """Steps ``state.step`` .. ``stop_step - 1``, with logging, validation and checkpoints; stops after a step at
    ``stop_signal`` (installed here, restored by the caller once the run has ended)."""
    shard = Shard(rank=dist.rank, world_size=dist.world_size, start_step=state.step, stop_step=stop_step)
    loader = build_train_loader(
        cfg.mix,
        cfg.augmentation,
        cfg.loader,
        data_root=cfg.paths.data,
        dataset_options=cfg.datasets,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        shard=shard,
    )
    step_options = StepOptions.from_config(cfg, dist.device)
    stop_signal.install()  # before the loader's workers start: they inherit it and ignore signals
    samples_per_step = cfg.train.batch_size * dist.world_size
    progress = tqdm(
        total=stop_step, initial=state.step, disable=not dist.is_main, desc="train", unit="step", dynamic_ncols=True
    )
    batches = None
    try:
        if state.step == 0:
            _validate(cfg, dist, state, tracker)
        batches = iter(loader)
        for step in range(state.step, stop_step):
            tic = time.perf_counter()
            batch = next(batches)
            data_wait = time.perf_counter() - tic
            lr = state.optimizer.param_groups[0]["lr"]  # this step's learning rate, a Python float
            stats = train_step(train_model, batch, state.optimizer, state.scheduler, state.scaler, step_options)
            if state.averaged is not None:
                state.averaged.update()
            state.window.add(stats, data_wait)
            state.count_nonfinite(stats.skipped, step, cfg.train.max_nonfinite_steps)
            state.step = done = step + 1
            progress.update(1)

            # ---- events: the only places where values are read from the device -------------------------------
            log_now = done % cfg.train.log_every == 0 or done == stop_step
            validate_now = done % cfg.train.val_every == 0 or done == stop_step
            save_now = done % cfg.checkpoint.every == 0 or done == stop_step
            signals = stop_signal.agreed(dist) if done < stop_step else []  # host flags: no device sync
            if log_now or validate_now or save_now or signals:
                _stop_if_diverged(state, cfg.train.max_nonfinite_steps)
            if log_now:
                metrics = state.window.summary(dist, samples_per_step, lr)
                tracker.log_metrics(metrics, done)
                loss, samples_per_s = metrics["train/loss"], metrics["train/samples_per_s"]
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.1f}")
            if validate_now:
                _validate(cfg, dist, state, tracker)
            if save_now or signals:
                _save(dist, state, checkpointer)
            if signals:
                dist.barrier()  # rank 0's checkpoint is complete before any rank hands over or leaves
                handover = stop_signal.hand_over(signals)  # submitit: rank 0 requeues the job here
                # srun may end a step when one task exits (KillOnBadExit): no rank leaves before the requeue.
                dist.barrier()
                raise Preempted(signals[-1], done, handover, dist.is_main)
    finally:
        progress.close()
        # Shut the loader's workers down now, also after an error: a traceback keeps this frame alive, and at exit
        # multiprocessing would SIGTERM them, which they ignore (data/loader.py), and wait forever.
        del batches, loader


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The settings one optimizer step reads (``train_step``), taken from the config once per run."""

    train_iters: int  # model.train_iters: recurrent updates per forward pass
    loss: LossConfig  # the loss group: gamma, max_disparity, normalization, vertical
    clip_grad_norm: float | None  # optim.clip_grad_norm; None: gradients are not clipped
    amp_dtype: torch.dtype | None  # autocast dtype of the forward pass (train.precision); None: fp32, no autocast
    device: torch.device  # where the step runs (the batch is moved there)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> StepOptions:
        precision = amp_dtype(cfg.train.precision)
        return cls(cfg.model.train_iters, cfg.loss, cfg.optim.clip_grad_norm, precision, device)


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    options: StepOptions,
) -> StepStats:
    """One optimizer step on ``batch``; skips the update when the gradients are not finite.

    Returns device tensors and reads nothing on the host, so on a GPU the call returns before the step has run:
    ``float(stats.loss)`` waits for it.
    """
    device = options.device
    model.train()
    keys = ("left", "right", "disparity", "valid")
    left, right, gt, valid = (batch[key].to(device, non_blocking=device.type == "cuda") for key in keys)

    dtype, loss_cfg = options.amp_dtype, options.loss
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        predictions = model(left, right, num_iters=options.train_iters, **forward_options(model, loss_cfg))
    # The loss is computed in fp32 from the (possibly bf16/fp16) predictions.
    loss = sequence_loss(
        [p.float() for p in predictions],
        gt,
        valid,
        gamma=loss_cfg.gamma,
        max_disparity=loss_cfg.max_disparity,
        normalization=loss_cfg.normalization,
    )

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # After DDP's all-reduce every rank holds the same gradients, hence the same norm: the skip decision below is
    # identical on all ranks without another collective. A NaN loss on any rank makes every rank's norm NaN.
    max_norm = options.clip_grad_norm if options.clip_grad_norm is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    skipped = ~torch.isfinite(grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)  # an enabled (fp16) GradScaler skips non-finite steps itself ...
    else:
        _step_unless(optimizer, skipped)
    scaler.update()  # ... and lowers its scale (no-op when disabled)
    with warnings.catch_warnings():
        # The schedule follows the step count, taken or skipped: torch warns when a skipped first step left
        # optimizer.step() uncalled, which is intended here.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()
    return StepStats(loss=loss.detach(), grad_norm=grad_norm.detach(), skipped=skipped)


def _step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``skip`` (a 0-d bool tensor). Fused optimizers decide on the device: they take
    the flag as ``found_inf``, as torch's GradScaler hands it to them, and leave parameters and state untouched.
    Others need the flag on the host: a sync on a GPU, free on a CPU."""
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif not skip.item():
        optimizer.step()


def _stop_if_diverged(state: TrainState, limit: int) -> None:
    """Raise once ``limit`` consecutive steps were skipped (read at event steps only: a host sync)."""
    step = state.nonfinite_limit_reached()
    if step is not None:
        raise NonFiniteLossError(
            f"{limit} consecutive steps (last: step {step}) had a non-finite loss or gradient norm "
            f"(train.max_nonfinite_steps={limit}). Lower schedule.lr, set optim.clip_grad_norm, use "
            "train.precision=fp32, or look for bad ground truth (python -m stereo_exp.eda)."
        )


def _validate(cfg: Config, dist: DistEnv, state: TrainState, tracker: MlflowTracker) -> None:
    """Validate at ``state.step``: log the metrics and pictures, keep the first and last in ``state.validation``."""
    _wait_for_device(dist.device)  # the steps queued so far count as training time, not validation time
    tic = time.perf_counter()
    result = evaluation.run_validation(
        state.evaluated_model,
        cfg.eval,
        data_root=cfg.paths.data,
        dataset_options=cfg.datasets,
        num_iters=cfg.model.eval_iters,
        dist=dist,
        device=dist.device,
        amp_dtype=amp_dtype(cfg.train.precision),
    )
    seconds = time.perf_counter() - tic
    state.window.pause(seconds)
    tracker.log_metrics({**result.metrics, **result.counts, "val/seconds": seconds}, state.step)
    for name, figure in result.figures.items():
        tracker.log_figure(figure, f"validation/step_{state.step:07d}/{name}.png")
    state.validation.setdefault("first", {"step": state.step, **result.metrics})
    state.validation["last"] = {"step": state.step, **result.metrics}


def _save(dist: DistEnv, state: TrainState, checkpointer: Checkpointer) -> None:
    """Checkpoint ``state`` (every rank takes part; rank 0 writes), once per step."""
    if checkpointer.last_saved_step == state.step:
        return  # already written at this step (a periodic checkpoint, then a stop signal)
    tic = time.perf_counter()
    checkpointer.save(state.state_dict(dist), state.step)
    state.window.pause(time.perf_counter() - tic)


def _wait_for_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _find_start(
    cfg: Config, dist: DistEnv, output: Path, resolved: dict[str, Any], new_dir_override: str
) -> resume.StartPoint:
    """``resume.find_start`` on rank 0; the other ranks receive its decision, or its refusal and raise it too."""
    decision: resume.StartPoint | BaseException | None = None
    if dist.is_main:
        runtime = resume.Runtime(
            world_size=dist.world_size,
            device=dist.device.type,
            num_threads=torch.get_num_threads(),
            allow_inexact=cfg.train.allow_inexact_resume,
        )
        try:
            resume.lock(output)  # held until train() ends: no other process starts or resumes in it meanwhile
            decision = resume.find_start(cfg.resume, output, resolved, runtime, new_dir_override)
        except (ValueError, OSError, RuntimeError) as error:
            decision = error
    if dist.is_distributed:
        # Ranks other than 0 need the decision, not the checkpoint's tensors: they read the file themselves.
        shared = dist.broadcast_object(_without_state(decision))
        if not dist.is_main:
            decision = shared
            if isinstance(decision, resume.StartPoint) and decision.checkpoint is not None:
                decision.state = load_checkpoint(decision.checkpoint)
    if isinstance(decision, BaseException):
        raise decision
    assert decision is not None
    return decision


def _without_state(decision: Any) -> Any:
    if isinstance(decision, resume.StartPoint):
        return dataclasses.replace(decision, state=None)
    return decision


def _new_dir_override(output: Path, hydra_output: bool) -> str:
    """The override that runs the same command in a fresh directory next to ``output`` (for refusal messages);
    ``hydra_output``: ``paths.output`` is Hydra's run directory (its default), not a folder set by hand."""
    if not hydra_output:
        return f"paths.output={_free_sibling(output)}"
    if SweepInfo.from_hydra() is not None:
        return f"hydra.sweep.dir={_free_sibling(output.parent)}"  # a job of a multirun: <sweep dir>/<job num>
    return f"hydra.run.dir={_free_sibling(output)}"


def _free_sibling(path: Path) -> Path:
    """``<path>-2``, or the first of ``-3``, ``-4`` ... that does not exist."""
    number = 2
    while path.with_name(f"{path.name}-{number}").exists():
        number += 1
    return path.with_name(f"{path.name}-{number}")


# Signals that stop the run after the current step with a checkpoint. SIGHUP: the terminal went away (an SSH
# connection dropped; the console output then goes to /dev/null, the run's log file keeps it). SIGTERM: scancel,
# preemption, `scontrol requeue`, the end of a time limit. SIGUSR1/SIGUSR2: a warning before the time limit
# (`sbatch --signal=...`); SIGUSR2 is submitit's (SUBMITIT_PREEMPT_SIGNAL). SIGINT: Ctrl-C (a second Ctrl-C stops at
# once, without a checkpoint). Ordered: the last one received by any rank names the stop.
STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class _StopSignal:
    """Records stop signals so that the loop can checkpoint between two steps, then hands over to the handlers
    that were installed before (submitit's: SIGUSR2 requeues the job, SIGTERM is logged). After the last step
    (``run_ends``) a stop is too late to checkpoint: the run ends first (the final checkpoint's upload, the summary,
    the MLflow run FINISHED); a second Ctrl-C stops only the upload (``upload``), which can take minutes. An MLflow
    call cut elsewhere could leave a SQLite store locked, and the run's end unrecorded."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._ending_at: int | None = None  # the last step, once the run is ending
        self._held = False  # every stop waits, a second Ctrl-C too
        self._uploading = False  # the final checkpoint's upload: a second Ctrl-C stops it

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            # signal.signal raises ValueError off the main thread (e.g. a test runner thread): no handling there.
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self.handle)
        for handler in self._previous.values():
            if isinstance(handler, HeldStops):  # signals that came before this training (a sequential sweep's set-up)
                for signum in handler.received:
                    self.handle(signum, None)
                handler.received.clear()

    def run_ends(self, step: int) -> None:
        """The last step is done (``step``): from now on every stop waits for the run's end."""
        self._ending_at, self._held = step, True

    def hold(self) -> None:
        """From now on every stop waits, a second Ctrl-C too (the MLflow run's end is being recorded)."""
        self._held = True

    @contextlib.contextmanager
    def upload(self) -> Iterator[None]:
        """The final checkpoint's upload (after ``run_ends``): a second Ctrl-C raises ``_UploadStopped``."""
        self._uploading = True
        try:
            yield
        finally:
            self._uploading = False

    def handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:
            # A DataLoader worker forked after the install: SLURM and Ctrl-C signal every process of the job or
            # terminal, the worker inherited this handler, and the training process alone acts on the signal.
            return
        if signum == signal.SIGINT and signum in self.received:
            if self._uploading:
                raise _UploadStopped(self._ending_at)
            if not self._held:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if signum == signal.SIGHUP:
            detach_from_terminal()  # the progress bar's next write would end the run before its checkpoint
        if not self.received:
            name = signal.Signals(signum).name
            if self._ending_at is not None:
                uploading = self._uploading and signum == signal.SIGINT
                upload = " (Ctrl-C again to stop the checkpoint's upload)" if uploading else ""
                log.warning("Received %s after the last step: the run ends first%s.", name, upload)
            elif self._held:
                log.warning("Received %s: the MLflow run's end is recorded first.", name)
            else:
                again = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
                log.warning("Received %s: checkpointing after this step%s.", name, again)
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
            # SIG_DFL / SIG_IGN / not installed from Python; Python's own Ctrl-C handler would only raise
            # KeyboardInterrupt, which the checkpoint made unnecessary; HeldStops gets its signals back in restore().
            if not callable(handler) or handler is signal.default_int_handler or isinstance(handler, HeldStops):
                continue
            try:
                handler(signum, None)
            except BaseException as outcome:  # SystemExit(-1) after a requeue is submitit's normal way out
                return outcome
        return None

    def restore(self) -> None:
        """The handlers from before ``install``. A sequential sweep's ``HeldStops`` gets back the stops received (the
        sweep stops before its next job); elsewhere one that came too late to act on (in the last step, while the run
        ended) is dropped: the run is complete."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
            if isinstance(handler, HeldStops) and signum in self.received:
                handler.received.append(signum)
        self._previous.clear()


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
        print(f"MLflow run: {tracker.where()}")
