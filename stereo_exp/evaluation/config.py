"""Schemas of the ``eval`` group (validation during training, and the grid of ``evaluate``) and of ``evaluate.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from stereo_exp.data.config import GtResize
from stereo_exp.data.options import DatasetOptions
from stereo_exp.schemas import Device, PathsConfig, Precision


@dataclass
class EvalConfig:
    datasets: list[str] = field(default_factory=lambda: ["motorcycle"])  # catalog names, evaluated one after another
    size: list[int] | None = None  # [H, W]: resize (bilinear, no antialias; disparity scaled); null = native, padded
    gt_resize: GtResize = GtResize.valid  # valid | reference_2022 (published tables) | reference_today
    n_cascades: list[int] = field(default_factory=lambda: [1])  # 1 = full resolution; k = k levels, coarse to fine
    n_iterations: list[int] | None = None  # recurrent updates per forward pass; null = the model's eval_iters
    max_samples: int | None = None  # only the first N samples of each dataset (quick checks); null = all of them
    batch_size: int = 1  # images per forward pass and process (results are per-image averages: batching never shows)
    num_workers: int = 0  # DataLoader worker processes for evaluation data (0 = load in the main process)
    extras: list[str] = field(default_factory=list)  # metrics besides the published ones: bad-2.0 | d1
    save_images: int = 0  # picture grids (left | right | gt | prediction | error) of the first N samples per dataset
    max_error_px: float = 3.0  # error in px at which the error map's colour saturates
    colormap: str = "turbo"  # matplotlib colour map of disparities in the pictures

    def __post_init__(self) -> None:
        """Cross-key checks; errors name the key to change."""
        if not self.datasets:
            raise ValueError("eval.datasets is empty; name at least one catalog dataset, e.g. [motorcycle].")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ValueError(f"eval.size must be [H, W] with positive values or null; got {list(self.size)}.")
        if not self.n_cascades or min(self.n_cascades) < 1:
            raise ValueError(f"eval.n_cascades must be a non-empty list of counts >= 1; got {list(self.n_cascades)}.")
        if self.n_iterations is not None and (not self.n_iterations or min(self.n_iterations) < 1):
            raise ValueError(f"eval.n_iterations must be null or counts >= 1; got {list(self.n_iterations)}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"eval.max_samples must be >= 1 or null; got {self.max_samples}.")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1; got {self.batch_size}.")
        from stereo_exp.evaluation.metrics import EXTRA_METRICS  # here: metrics.py imports torch, composing does not

        unknown = [name for name in self.extras if name not in EXTRA_METRICS]
        if unknown:
            raise ValueError(f"eval.extras has unknown metrics {unknown}; expected a subset of {list(EXTRA_METRICS)}.")
        if self.save_images < 0:
            raise ValueError(f"eval.save_images must be >= 0; got {self.save_images}.")
        if self.max_error_px <= 0:
            raise ValueError(f"eval.max_error_px must be > 0; got {self.max_error_px}.")


@dataclass
class EvaluateConfig:
    """``python -m stereo_exp.evaluate``: the primary config of conf/evaluate.yaml."""

    model: Any = MISSING  # conf/model/*: architecture for published names and state_dict files (checkpoints: theirs)
    tracking: Any = MISSING  # conf/tracking/*: MLflow run of this evaluation (or none)
    eval: Any = MISSING  # conf/eval/*: datasets, size and grid (evaluate.yaml sets the published grid)
    paths: PathsConfig = field(default_factory=PathsConfig)  # paths.data: dataset root; paths.output: tables, pictures
    datasets: DatasetOptions = field(default_factory=DatasetOptions)  # per-dataset options, as training's datasets.*
    weights: str | None = None  # published name | state_dict file | our checkpoint | runs:/<MLflow run id> | null
    checkpoints: str = "outputs"  # weights=null: the newest checkpoint under this folder, else the model config as is
    dataset: Any = None  # shortcut for eval.datasets: one catalog name or a list [a, b]; null = eval.datasets
    precision: Precision = Precision.fp32  # fp32 | bf16 | fp16: autocast dtype of the forward pass
    device: Device = Device.auto  # auto (cuda when available, else cpu) | cpu | cuda
    progress: bool = True  # progress bar over images x grid cells (rank 0)
    seed: int = 0  # initialisation of a model evaluated without weights (a smoke test, not a result)
    num_threads: int | None = None  # torch intra-op CPU threads per process; null = torch's default
