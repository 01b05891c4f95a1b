"""Everything a training run checks before its first side effect (an MLflow run, a download, a file in the run
directory): the checks across config groups, the datasets, the weights to start from. Each group's own checks ran
when the config was typed (``OmegaConf.to_object`` in ``train``: the schemas' ``__post_init__``).

Each error names the key or file at fault and what was expected. ``check_run`` needs no process group and builds
the model on the meta device only (no memory, no weights), so it costs about a second even for large models and
datasets; it reads the weights files it checks, but downloads nothing.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from stereo_exp.data.checks import check_datasets
from stereo_exp.models.registry import build_network
from stereo_exp.models.weights import load_weights, parameter_count, resolve_published

if TYPE_CHECKING:
    from stereo_exp.config import Config
    from stereo_exp.data.config import MixConfig
    from stereo_exp.data.options import DatasetOptions
    from stereo_exp.engine.schedule import ScheduleConfig
    from stereo_exp.models.config import ModelConfig


class RunRefused(ValueError):
    """A run that cannot start as configured; the message names the key or file at fault and what to change. The
    entry points end such a run with that message alone (``stereo_exp.cli.user_errors``)."""


@contextlib.contextmanager
def refusing() -> Iterator[None]:
    """Raise the ``ValueError`` of a check in the block as ``RunRefused``."""
    try:
        yield
    except RunRefused:
        raise
    except ValueError as error:
        raise RunRefused(str(error)) from error


def check_run(cfg: Config) -> None:
    """Raise ``RunRefused`` (or ``FileNotFoundError`` for a file or dataset folder that is not there) naming the key
    or file at fault unless ``cfg`` describes a run that can start."""
    with refusing():
        _check_run(cfg)


def _check_run(cfg: Config) -> None:
    run_steps = sum(cfg.mix.dataset_steps)
    check_schedule_length(cfg.schedule, run_steps)
    skeleton = model_skeleton(cfg.model)
    check_crop(cfg.augmentation.crop_size, skeleton, cfg.model.name)
    if cfg.init_from is not None and cfg.model.weights is not None:
        raise ValueError(
            f"init_from={cfg.init_from} and model.weights={cfg.model.weights} both name the initial weights; keep "
            "one (e.g. model.weights=null)."
        )
    if cfg.model.weights is not None:
        check_weights(cfg.model.weights, "model.weights", skeleton)
    if cfg.init_from is not None:
        check_weights(cfg.init_from, "init_from", skeleton)
    check_mix_datasets(cfg.mix, data_root=cfg.paths.data, options=cfg.datasets)
    check_datasets(cfg.eval.datasets, key="eval.datasets", data_root=cfg.paths.data, options=cfg.datasets)


def check_mix_datasets(mix: MixConfig, *, data_root: str, options: DatasetOptions) -> None:
    """The mix's datasets that get steps are catalog names, complete under ``data_root`` and not empty (errors name
    ``mix.datasets``). Shared by training and the EDA, which reads the same mix."""
    names = [name for name, steps in zip(mix.datasets, mix.dataset_steps, strict=True) if steps > 0]
    check_datasets(names, key="mix.datasets", data_root=data_root, options=options)


def check_schedule_length(schedule: ScheduleConfig, run_steps: int) -> None:
    """The warm-up must end before the run does, or the learning rate never reaches ``schedule.lr``."""
    if schedule.warmup_steps >= run_steps:
        raise ValueError(
            f"schedule.warmup_steps={schedule.warmup_steps} is not shorter than the run ({run_steps} steps, the sum "
            f"of mix.dataset_steps): the learning rate would never reach schedule.lr={schedule.lr}. Lower "
            "schedule.warmup_steps (0 = no warm-up) or lengthen the mix."
        )


def model_skeleton(model_cfg: ModelConfig) -> nn.Module:
    """The configured architecture on the meta device: its structure and sizes without memory or weights."""
    with torch.device("meta"):
        return build_network(model_cfg)


def check_crop(crop_size: list[int], model: nn.Module, model_name: str) -> None:
    """Training crops go into the network unpadded: both sides must be multiples of its size multiple."""
    multiple = int(getattr(model, "size_multiple", 1))
    if any(side % multiple for side in crop_size):
        fitting = [max(multiple, side // multiple * multiple) for side in crop_size]  # a smaller crop still fits
        raise ValueError(
            f"augmentation.crop_size={list(crop_size)}: both sides must be multiples of {multiple} for {model_name} "
            f"(its model.size_multiple), e.g. augmentation.crop_size=[{fitting[0]},{fitting[1]}]."
        )


def check_weights(spec: str, key: str, model: nn.Module) -> None:
    """``spec`` is a published name for this architecture, or a readable weights file that fits ``model``
    (a state_dict or one of our checkpoints). Names are resolved without downloading; files are read."""
    if not os.path.exists(spec):
        looks_like_path = os.sep in spec or spec.endswith((".pth", ".pt", ".ckpt", ".bin", ".safetensors"))
        if looks_like_path:
            raise FileNotFoundError(
                f"{key}={spec}: no such file. Expected a state_dict or training checkpoint file"
                + (" (our checkpoints are <run dir>/checkpoints/step_*.pth)." if key == "init_from" else ".")
            )
        try:
            resolve_published(spec, parameter_count(model))
        except (KeyError, ValueError) as error:
            message = error.args[0] if isinstance(error, KeyError) else str(error)
            raise ValueError(f"{key}={spec}: {message}") from error
        return
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"{key}={spec} is a folder; expected a state_dict or training checkpoint file.")
    try:
        with warnings.catch_warnings():
            # Copying into the meta skeleton is a no-op by design: only the names and shapes are checked.
            warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter")
            load_weights(model, spec)  # reads the file (weights_only), checks every tensor finite and the fit
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        raise ValueError(f"{key}={spec}: {error}") from error
