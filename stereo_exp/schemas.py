"""Top-level schema pieces that several packages reuse: paths, training, loader, speed and checkpoint settings.

A leaf module (it imports nothing from stereo_exp), so data/, evaluation/ and engine/ can use these schemas
without import cycles; ``stereo_exp.config`` assembles them with the config groups into the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class PathsConfig:
    data: str = "data"  # dataset root: one sub-folder per dataset, in torchvision's layout (see docs/DATASETS.md)
    output: str = "${hydra:runtime.output_dir}"  # this run's folder: checkpoints, resolved config, pictures


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(StrEnum):
    """Where a run computes; Hydra rejects any other value at composition."""

    auto = "auto"  # cuda when available, else cpu
    cpu = "cpu"
    cuda = "cuda"


def amp_dtype(precision: Precision | str) -> torch.dtype | None:
    """Autocast dtype of a ``precision`` setting (None for fp32: no autocast)."""
    import torch  # here, not at the top: the schemas are read without torch (every --help)

    return {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[Precision(precision)]


def has_arithmetic(precision: Precision | str, device: torch.device) -> bool:
    """Whether ``device`` computes ``precision`` in hardware: always on a GPU and in fp32; bf16 and fp16 on a CPU only
    with their instructions (oneDNN needs AVX-512 BF16 / FP16 or AMX for them). Without, autocast emulates the type,
    several times slower than fp32 (a crestereo_tiny train step: 6x in bf16, 7x in fp16 on an AVX2 AMD EPYC)."""
    import torch

    precision = Precision(precision)
    if device.type != "cpu" or precision == Precision.fp32:
        return True
    if precision == Precision.bf16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


def emulated_precision_warning(key: str, precision: Precision | str, device: torch.device) -> str | None:
    """What to tell a user whose ``precision`` (set by ``key``) has no arithmetic on ``device`` (``has_arithmetic``),
    else None."""
    import torch

    if has_arithmetic(precision, device):
        return None
    value = Precision(precision).value
    return (
        f"{key}={value}: this CPU (torch capability {torch.backends.cpu.get_cpu_capability()}) has no "
        f"{value} instructions; autocast emulates them, several times slower than {key}=fp32."
    )


@dataclass
class TrainConfig:
    batch_size: int = 2  # samples per process and step; the global batch is batch_size * world size
    precision: Precision = Precision.fp32  # fp32 | bf16 | fp16: autocast dtype of the forward (GradScaler: fp16 only)
    device: Device = Device.auto  # auto (cuda when available, else cpu) | cpu | cuda
    max_steps: int | None = None  # stop after this many steps (debugging); null = the mix's sum of dataset_steps
    log_every: int = 10  # steps between metric records and progress-bar refreshes
    val_every: int = 1000  # steps between validations; the run always validates at step 0 and at the end
    max_nonfinite_steps: int = 10  # consecutive non-finite losses (skipped steps) after which the run stops
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow; for hunting NaNs)
    num_threads: int | None = None  # torch intra-op CPU threads per process; null = torch's default
    find_unused_parameters: bool = False  # DDP: allow parameters without gradient in a step (slower; rarely needed)
    allow_inexact_resume: bool = False  # resume despite changed threads/precision/device/processes (MLflow-tagged)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1; got {self.batch_size}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1 or null; got {self.max_steps}.")
        for key in ("log_every", "val_every", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1; got {getattr(self, key)}.")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"train.num_threads must be >= 1 or null (torch's default); got {self.num_threads}.")


@dataclass
class LoaderConfig:
    num_workers: int = 2  # DataLoader worker processes per rank (0 = load in the training process)
    pin_memory: bool = True  # page-locked host memory for faster host-to-GPU copies (ignored on CPU)
    persistent_workers: bool = True  # keep workers alive between validation passes
    prefetch_factor: int = 2  # batches each worker prepares ahead

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(
                f"loader.num_workers must be >= 0 (0: load in the training process); got {self.num_workers}."
            )
        if self.prefetch_factor < 1:
            raise ValueError(f"loader.prefetch_factor must be >= 1; got {self.prefetch_factor}.")


@dataclass
class SpeedConfig:
    """How the training step is executed, not what it computes (stereo_exp.models.speed; docs/PERFORMANCE.md).
    null picks per device: what the benchmarks measured as faster there."""

    compile: bool | None = None  # torch.compile each recurrent update (inductor); null = on for cuda, off for cpu
    compile_mode: str | None = None  # torch.compile mode; null = reduce-overhead (CUDA graphs) on cuda, default on cpu
    keep_freed_memory: bool | None = None  # glibc malloc keeps freed memory for reuse (no page faults); null = cpu only

    def __post_init__(self) -> None:
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            names = ", ".join(map(str, modes))
            raise ValueError(f"speed.compile_mode must be one of {names}; got {self.compile_mode!r}.")


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (one is always written at the end and on SIGTERM/SIGUSR1/SIGUSR2)
    keep_last: int = 2  # periodic checkpoints kept in <output>/checkpoints (the final one is always kept)

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError("checkpoint.every and checkpoint.keep_last must be >= 1.")
