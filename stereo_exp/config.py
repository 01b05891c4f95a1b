"""Top-level config schema and the registration of every group's schema in Hydra's ConfigStore.

Each config group owns one dataclass, defined beside the code that reads it (``engine/schedule.py`` holds
``ScheduleConfig``, ``data/config.py`` holds ``MixConfig`` ...). Its fields carry the defaults; the YAML files
under ``conf/<group>/`` name that schema in their defaults list and set only what differs. Hydra then checks
every key and type at composition, so a misspelt key or a wrong type stops the run before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    data: str = "data"  # dataset root: one sub-folder per dataset, in torchvision's layout (see docs/DATASETS.md)
    output: str = "${hydra:runtime.output_dir}"  # this run's folder: checkpoints, resolved config, pictures


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class TrainConfig:
    batch_size: int = 2  # samples per process and step; the global batch is batch_size * world size
    precision: Precision = Precision.fp32  # fp32 | bf16 | fp16: autocast dtype of the forward (GradScaler: fp16 only)
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda
    max_steps: int | None = None  # stop after this many steps (debugging); null = the mix's sum of dataset_steps
    log_every: int = 10  # steps between metric records and progress-bar refreshes
    val_every: int = 1000  # steps between validations; the run always validates at step 0 and at the end
    max_nonfinite_steps: int = 10  # consecutive non-finite losses (skipped steps) after which the run stops
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow; for hunting NaNs)
    num_threads: int | None = None  # torch intra-op CPU threads per process; null = torch's default
    find_unused_parameters: bool = False  # DDP: allow parameters without gradient in a step (slower; rarely needed)


@dataclass
class LoaderConfig:
    num_workers: int = 2  # DataLoader worker processes per rank (0 = load in the training process)
    pin_memory: bool = True  # page-locked host memory for faster host-to-GPU copies (ignored on CPU)
    persistent_workers: bool = True  # keep workers alive between validation passes
    prefetch_factor: int = 2  # batches each worker prepares ahead


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (one is always written at the end and on SIGTERM/SIGUSR1)
    keep_last: int = 2  # periodic checkpoints kept in <output>/checkpoints (the final one is always kept)


@dataclass
class Config:
    """The whole run. Groups are typed ``Any`` here; each group's option files validate against their own schema."""

    model: Any = MISSING  # conf/model/*: network and its hyper-parameters
    mix: Any = MISSING  # conf/mix/*: training datasets and their dataset steps
    augmentation: Any = MISSING  # conf/augmentation/*: crop size and photometric/spatial augmentation
    schedule: Any = MISSING  # conf/schedule/*: learning rate over steps
    optim: Any = MISSING  # conf/optim/*: optimizer and gradient clipping
    loss: Any = MISSING  # conf/loss/*: sequence loss over the recurrent predictions
    eval: Any = MISSING  # conf/eval/*: validation during training
    tracking: Any = MISSING  # conf/tracking/*: MLflow (or none)
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0  # seeds model init, data order, augmentation and every worker
    resume: str | None = "auto"  # auto: continue the latest checkpoint in paths.output if any | PATH | null: never
    init_from: str | None = None  # weights-only start (fine-tuning): our checkpoint or a state_dict file


def register_configs() -> None:
    """Store the top-level schema and every group schema in Hydra's ConfigStore (idempotent)."""
    # Imported here so that importing stereo_exp.config stays cheap and free of import cycles.
    from stereo_exp import data, engine, evaluation, models, tracking

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for package in (models, data, engine, evaluation, tracking):
        package.register_configs(cs)
